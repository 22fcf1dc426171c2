"""A frontend worker of a group (`python -m server.workers.worker`), started by the supervisor.

A frontend like `recd serve --single-process`, except that: it shares the public port with the other
workers (SO_REUSEPORT) and also listens on a private loopback port of its own, where the supervisor
checks this one process; its shards are the group's shard nodes (cluster.nodes, set by the supervisor
when it started them) and its embedded profile store, graph and cache are the state node's
(workers.state_socket); its metrics are on a private port too (server.metrics_address, set by the
supervisor, which serves them merged with the others'); and its health stays NOT_SERVING until the
supervisor says "serve" (the group serves once every worker can). Health name WORKER_READY says SERVING
as soon as this worker could serve, which is what the supervisor waits for.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging

from grpc_health.v1 import health_pb2

from server.cli import run_server_loop
from server.config import Config, load_config
from server.lifecycle import stop_signal
from server.logs import setup_logging
from server.security.credentials import use_token_file
from server.tracing.setup import setup_tracing
from server.workers.control import SERVE, follow_supervisor

log = logging.getLogger("server.workers.worker")  # also when run as __main__

WORKER_READY = "recd.internal.WorkerReady"


async def run_worker(config: Config, private_address: str) -> None:
    from server.api.server import RecdServer
    from server.metrics import serve_metrics
    from server.wiring import build_recd

    stop = stop_signal()
    serve = asyncio.Event()
    follow_supervisor({SERVE: serve.set})
    recd = build_recd(config)

    async def prepare() -> None:
        await recd.sync_catalogue()
        await recd.popularity_sync.start()
        await recd.warm_up()

    # A stop while the catalogue syncs ends the start, rather than waiting for it.
    preparing = asyncio.ensure_future(prepare())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({preparing, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not preparing.done():
        preparing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await preparing
        await recd.close()
        return
    stopping.cancel()
    preparing.result()
    # As in `recd serve`: the catalogue replica's long-lived objects, frozen out of full collections.
    gc.collect()
    gc.freeze()
    server = RecdServer(recd, config, reuse_port=True, extra_addresses=[private_address])
    serve_metrics(config.server.metrics_address)
    await server.start(serving=False)
    await server.lifecycle.health.set(WORKER_READY, health_pb2.HealthCheckResponse.SERVING)

    async def serve_when_told() -> None:
        await serve.wait()
        await server.lifecycle.set_serving()

    told = asyncio.ensure_future(serve_when_told())
    await stop.wait()
    told.cancel()
    log.info("signal received; draining")
    await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.workers.worker")
    parser.add_argument("--config")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--private-address", required=True)
    args = parser.parse_args(argv)
    config = load_config(args.config)
    # Its calls to the shard nodes (and a node's to itself) carry the group's token (README, Security).
    use_token_file(config.auth.token_file)
    setup_logging(config.server.log_level, config.server.log_format, {"process": f"worker-{args.index}"})
    # Each worker exports its own spans, told apart by instance.
    setup_tracing(config.tracing, "frontend", f"worker-{args.index}")
    run_server_loop(run_worker(config, args.private_address), config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
