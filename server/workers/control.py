"""The pipe a child of a worker group follows its supervisor by: its standard input.

The supervisor writes one command per line ("serve": health may go SERVING, the whole group is up) and
keeps the pipe open for as long as it lives. End of file means the supervisor is gone (killed, crashed),
and a child without its supervisor stops itself gracefully: SIGTERM to itself, which its own signal
handling turns into a drain. Children run in sessions of their own (a Ctrl-C at the terminal reaches only
the supervisor, which stops them in order), so nothing else would ever stop them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

SERVE = "serve"


def follow_supervisor(commands: Mapping[str, Callable[[], object]] | None = None) -> None:
    """Runs each command's callback on the running event loop as its line arrives; on end of file, stops
    this process. A thread of its own, so it works under any event loop and during a blocking start."""
    loop = asyncio.get_running_loop()
    handlers = dict(commands or {})

    def read() -> None:
        # The raw descriptor, not sys.stdin: a thread blocked in a buffered read holds the buffer's lock,
        # which aborts the interpreter's shutdown ("could not acquire lock ... at interpreter shutdown").
        fd = sys.stdin.fileno()
        pending = b""
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace").strip()
                handler = handlers.get(line)
                if handler is None:
                    log.warning("unknown command from the supervisor: %r", line)
                    continue
                loop.call_soon_threadsafe(handler)
        log.warning("the supervisor is gone; stopping")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=read, name="supervisor-pipe", daemon=True).start()
