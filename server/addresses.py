"""host:port addresses and their DNS lookups, shared by everything that resolves names itself (the
cluster's node directory, the edge's origin pool) instead of leaving it to gRPC's resolver."""

from __future__ import annotations

import asyncio
import ipaddress
import socket


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"an address is host:port, got {address!r}")
    return host.strip("[]"), int(port)


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def resolve_host(host: str, port: int) -> list[str]:
    """Every address the name has (A and AAAA records), IPv4 first: loopback names often resolve to
    both, and recd binds IPv4 by default."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos}, key=lambda ip: (":" in ip, ip))
