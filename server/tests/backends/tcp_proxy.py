"""A TCP proxy in the test's event loop, for injecting network faults between a client and a real server.

Modes: forwarding; `blackhole()` (connections stay open but nothing is delivered: a hung server);
`down()` (every connection reset and the port refused: a dead server); `up()` restores forwarding on
the same port, as a restarted server would.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._forwarding = asyncio.Event()
        self._forwarding.set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> TcpProxy:
        if self.port == 0:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                # A blackhole holds the bytes back: the client sees a server that never answers.
                await self._forwarding.wait()
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._drop(writer)

    def _drop(self, writer: asyncio.StreamWriter) -> None:
        self._writers.discard(writer)
        with contextlib.suppress(Exception):
            # abort(): an RST as from a crashed server, not a polite FIN.
            writer.transport.abort()

    def blackhole(self) -> None:
        self._forwarding.clear()

    async def down(self) -> None:
        self._forwarding.set()
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            self._drop(writer)
        for task in list(self._tasks):
            task.cancel()
        if server is not None:
            await server.wait_closed()
        await asyncio.sleep(0)

    async def up(self) -> None:
        self._forwarding.set()
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        await self.down()
