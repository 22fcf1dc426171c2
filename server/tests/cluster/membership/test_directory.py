"""Node addresses by DNS name: resolved at start and again later; a moved name gets a new client."""

from __future__ import annotations

from server.cluster.membership.directory import NodeDirectory


class Client:
    def __init__(self, target: str) -> None:
        self.target = target
        self.closed = False

    async def close(self) -> None:
        self.closed = True


async def test_names_are_resolved_and_followed() -> None:
    records = {"shard-0.recd-shard": ["10.0.0.5"], "shard-1.recd-shard": ["10.0.0.6", "10.0.0.7"]}

    async def resolve(host: str, port: int) -> list[str]:
        if host not in records:
            raise OSError("NXDOMAIN")
        return records[host]

    directory = NodeDirectory(Client, resolve)  # type: ignore[arg-type]
    addresses = {
        "node-0": "shard-0.recd-shard:50061",
        "node-1": "shard-1.recd-shard:50061",
        "node-2": "127.0.0.1:7000",
    }
    directory.set_unresolved(addresses)  # before a loop runs: gRPC would resolve the names itself
    assert directory.target("node-0") == "shard-0.recd-shard:50061"
    assert await directory.update(addresses)
    assert [directory.target(n) for n in addresses] == ["10.0.0.5:50061", "10.0.0.6:50061", "127.0.0.1:7000"]
    first = directory.clients()
    assert not await directory.update(addresses)  # nothing moved: same clients
    assert directory.clients() == first

    records["shard-0.recd-shard"] = ["10.0.0.9"]  # the pod was rescheduled
    records["shard-1.recd-shard"] = ["10.0.0.7", "10.0.0.6"]  # same set, other order: stay put
    assert await directory.update(addresses)
    assert directory.target("node-0") == "10.0.0.9:50061"
    assert directory.target("node-1") == "10.0.0.6:50061"
    assert directory.clients()["node-0"] is not first["node-0"]
    assert directory.clients()["node-1"] is first["node-1"]

    del records["shard-0.recd-shard"]  # DNS trouble: keep what worked
    assert not await directory.update(addresses)
    assert directory.target("node-0") == "10.0.0.9:50061"

    await directory.close()
    assert all(c.closed for c in first.values())  # the retired one too
