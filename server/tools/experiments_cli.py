"""`recd experiments report | assign | check`: an experiment's results, a user's variants, a file checked."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from server.config import Config
from server.experiments.registry import ExperimentRegistry
from server.security.credentials import load_process_config

ConfigArgument = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]


def _config(args: argparse.Namespace) -> Config:
    return load_process_config(getattr(args, "config", None))


def cmd_report(args: argparse.Namespace) -> int:
    import grpc

    from server.api.convert import experiment_outcomes
    from server.client import RecdClient
    from server.experiments.report import build_report, render, report_dict

    config = _config(args)
    since_ms = 0 if args.since_hours is None else int((time.time() - args.since_hours * 3600) * 1000)

    async def fetch() -> Any:
        client = RecdClient(args.address, timeout_s=args.timeout_s, tls=config.server.client_tls)
        try:
            return await client.experiment_outcomes(args.experiment, since_ms)
        finally:
            await client.close()

    try:
        message = asyncio.run(fetch())
    except grpc.aio.AioRpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}")
        return 1
    report = build_report(experiment_outcomes(message), args.confidence)
    print(json.dumps(report_dict(report), indent=2) if args.json else render(report))
    return 0


def cmd_assign(args: argparse.Namespace) -> int:
    """The variants serving each user under the config's experiments (computed here, as every frontend
    and the edge compute them: no server needed)."""
    assigner = ExperimentRegistry(_config(args)).current()
    for user in args.user:
        arm = assigner.assign(user)
        print(f"{user}: {arm.tag or 'in no experiment'}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Checks the experiments (definitions and file) against the config and the loaded model files, as
    a frontend would before serving them; exits 2 with what to fix (ConfigError) otherwise."""
    from server.ranking.model import load_model

    config = _config(args)
    r = config.ranking
    versions = [load_model(p).version for p in [r.model_file, *r.extra_model_files]]
    assigner = ExperimentRegistry(config, lambda: versions).current()
    for e in assigner.experiments:
        state = f"traffic {e.traffic:g}" if e.enabled else "killed"
        shares = ", ".join(f"{v.name} {v.share:.3g}" for v in e.variants)
        print(f"{e.name} (salt {e.salt!r}, {state}): {shares}")
    print(f"{len(assigner.experiments)} experiments ok")
    return 0


def add_parsers(sub: Any, with_config: ConfigArgument) -> None:
    experiments = sub.add_parser("experiments", help="A/B experiments").add_subparsers(
        dest="experiments_command", required=True
    )
    p = with_config(
        experiments.add_parser("report", help="per-variant outcomes with intervals and a sample-ratio check")
    )
    p.add_argument("experiment")
    p.add_argument("--since-hours", type=float, help="answers served in the last H hours (default: all held)")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--address", default="127.0.0.1:50051")
    p.add_argument("--timeout-s", type=float, default=120.0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_report)
    p = with_config(experiments.add_parser("assign", help="the variants serving users"))
    p.add_argument("--user", action="append", required=True, help="a user id (repeatable)")
    p.set_defaults(func=cmd_assign)
    p = with_config(experiments.add_parser("check", help="check the experiments against the config"))
    p.set_defaults(func=cmd_check)
