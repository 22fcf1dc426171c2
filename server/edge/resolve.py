"""Origin targets ("host:port") to the addresses behind them, for the edge's client-side balancing.

Under Kubernetes the frontends' Service is headless: its name resolves to one address per ready pod. The
edge resolves it itself, at start and every `edge.resolve_interval_s` (sooner after an origin answered
UNAVAILABLE), and keeps one channel per address (server/edge/origin.py), rather than handing gRPC a
`dns:///` target with the round_robin policy, because:
- gRPC's resolver re-resolves on its own schedule (when a connection breaks, at most every 30 s), so a pod
  added by a scale-up gets no traffic until some connection to another pod fails;
- one channel per address is what least_outstanding balancing and "retry UNAVAILABLE on another origin"
  need: a single round_robin channel hides which pod a call went to, so a retry may go to the same one;
- the resolver is a plain function, so tests inject one and need no DNS.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from server.addresses import is_ip, join_address, resolve_host, split_address

# A target to the "ip:port" addresses it stands for now. Raises OSError when it cannot say.
Resolver = Callable[[str], Awaitable[list[str]]]


async def resolve_target(target: str) -> list[str]:
    """An IP target stands for itself; a name is looked up (every A/AAAA record: every ready pod)."""
    host, port = split_address(target)
    if is_ip(host):
        return [target]
    return [join_address(ip, port) for ip in await resolve_host(host, port)]
