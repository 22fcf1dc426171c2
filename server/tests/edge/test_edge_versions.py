"""Per-user versions: bumps, sharing through the shared level, and what forgetting a user costs."""

from __future__ import annotations

from server.backends.memory_cache import InMemoryCache
from server.edge.versions import UserVersions
from server.tests.edge.fakes import FakeClock


async def test_unknown_users_have_the_default_version() -> None:
    versions = UserVersions(None, max_users=10, refresh_s=1.0, record_ttl_s=600.0)
    assert await versions.get("anyone") == "0"


async def test_a_bump_gives_a_new_version_to_that_user_only() -> None:
    versions = UserVersions(None, max_users=10, refresh_s=1.0, record_ttl_s=600.0)
    await versions.bump(["alice", "alice"])
    first = await versions.get("alice")
    assert first != "0" and await versions.get("bob") == "0"
    await versions.bump(["alice"])
    assert await versions.get("alice") not in (first, "0")


async def test_forgetting_a_recently_bumped_user_moves_everyone_elses_default() -> None:
    clock = FakeClock()
    versions = UserVersions(None, max_users=2, refresh_s=1.0, record_ttl_s=600.0, clock=clock)
    await versions.bump(["a", "b"])
    await versions.bump(["c"])  # evicts a's record while entries under its old "0" may still live
    assert await versions.get("a") != "0"
    assert await versions.get("never-bumped") == versions.default != "0"


async def test_forgetting_a_long_settled_user_costs_nothing() -> None:
    clock = FakeClock()
    versions = UserVersions(None, max_users=1, refresh_s=1.0, record_ttl_s=600.0, clock=clock)
    await versions.bump(["a"])
    clock.advance(601)  # every entry made before a's bump has expired by now
    await versions.bump(["b"])
    assert versions.default == "0"


async def test_replicas_see_each_others_bumps_within_the_refresh_interval() -> None:
    clock = FakeClock()
    shared = InMemoryCache(1 << 20)
    a = UserVersions(shared, max_users=10, refresh_s=1.0, record_ttl_s=600.0, clock=clock)
    b = UserVersions(shared, max_users=10, refresh_s=1.0, record_ttl_s=600.0, clock=clock)
    assert await b.get("alice") == "0"
    await a.bump(["alice"])
    assert await b.get("alice") == "0"  # b remembers "0" for up to refresh_s
    clock.advance(1.0)
    assert await b.get("alice") == await a.get("alice") != "0"


async def test_shared_level_silent_keeps_what_was_known() -> None:
    clock = FakeClock()
    shared = InMemoryCache(1 << 20)
    a = UserVersions(shared, max_users=10, refresh_s=0.0, record_ttl_s=600.0, clock=clock)
    await a.bump(["alice"])
    token = await a.get("alice")
    await shared.close()  # everything gone, as after a Redis restart
    assert await a.get("alice") == token
