"""The evaluation's CLI: `recd eval` and `recd tune`.

Exit status: 0 done (and every threshold met), 1 a threshold not met, 2 unusable input or arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from server.config import Config, ConfigError, load_config
from server.tools.evaluation.dataset import UnusableInput

if TYPE_CHECKING:
    from server.tools.evaluation.run import EvalOptions

ConfigArg = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]

EXIT_THRESHOLD = 1
EXIT_UNUSABLE = 2


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], with_config: ConfigArg) -> None:
    p = with_config(
        sub.add_parser("eval", help="offline evaluation through the serving path (temporal hold-out)")
    )
    _split_arguments(p)
    p.add_argument(
        "--address", help="evaluate the recd at host:port (loads the training part into it; no exact figure)"
    )
    p.add_argument("--out-md", help="write the markdown report here (default: stdout)")
    p.add_argument("--out-json", help="write the figures as JSON here")
    p.add_argument("--min-ndcg-ratio-exact", type=float, help="fail (exit 1) below this served/exact NDCG")
    p.add_argument(
        "--min-ndcg-ratio-popularity", type=float, help="fail (exit 1) below this served/popularity NDCG"
    )
    p.add_argument("--max-seen-share", type=float, help="fail (exit 1) above this share of seen items served")
    p.set_defaults(func=cmd_eval)

    p = with_config(sub.add_parser("tune", help="fit the ranking weights on a validation split"))
    _split_arguments(p)
    p.add_argument(
        "--out", required=True, help="the tuned model file to write (YAML, like default_model.yaml)"
    )
    p.add_argument(
        "--validation",
        type=int,
        help="interactions per user held out of the training part to tune on (default: --holdout)",
    )
    p.add_argument("--rounds", type=int, default=4, help="coordinate-ascent rounds at most")
    p.add_argument("--pool", type=int, default=200, help="candidates per user and criterion re-scored")
    p.add_argument(
        "--test",
        choices=["served", "exact"],
        default="served",
        help="test figures: served by a fresh server with each model, or the exact computation only",
    )
    p.add_argument("--out-md", help="write the markdown report here (default: stdout)")
    p.add_argument("--out-json", help="write the figures as JSON here")
    p.set_defaults(func=cmd_tune)


def _split_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="a dataset directory (items, interactions, optional users and edges)")
    p.add_argument("-k", type=int, default=10, help="list length (default 10)")
    p.add_argument("--holdout", type=int, default=5, help="last interactions per user held out (default 5)")
    p.add_argument(
        "--min-train",
        type=int,
        default=5,
        help="training interactions a user needs to be evaluated (default 5)",
    )
    p.add_argument("--max-users", type=int, help="evaluate a seeded sample of this many users")
    p.add_argument("--seed", type=int, default=0, help="seed of the --max-users sample")
    p.add_argument("--concurrency", type=int, default=4, help="Recommend calls in flight (default 4)")
    p.add_argument(
        "--budget-scale",
        type=float,
        default=1.0,
        help="multiply the in-process server's time budgets (it shares the machine with the evaluation); "
        "answers cut short by a budget are counted as degraded",
    )
    p.add_argument(
        "--edges",
        choices=["train", "dataset", "none"],
        default="train",
        help="item graph: derived from the training interactions (default), the dataset's edges file "
        "(leaks the hold-out when it was derived from all interactions), or none",
    )
    p.add_argument("--batch-size", type=int, default=2000, help="rows per load RPC")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _options(args: argparse.Namespace) -> EvalOptions:
    from server.tools.evaluation.run import EvalOptions

    for name in ("k", "holdout", "min_train", "concurrency", "batch_size"):
        if getattr(args, name) < 1:
            flag = "-k" if name == "k" else f"--{name.replace('_', '-')}"
            raise UnusableInput(f"{flag} must be at least 1")
    if args.max_users is not None and args.max_users < 1:
        raise UnusableInput("--max-users must be at least 1")
    if not args.budget_scale > 0:
        raise UnusableInput("--budget-scale must be > 0")
    return EvalOptions(
        dataset=Path(args.dataset),
        k=args.k,
        holdout=args.holdout,
        min_train=args.min_train,
        max_users=args.max_users,
        seed=args.seed,
        concurrency=args.concurrency,
        address=getattr(args, "address", None),
        budget_scale=args.budget_scale,
        edges=args.edges,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )


def _config(args: argparse.Namespace) -> Config:
    try:
        return load_config(args.config)
    except (ConfigError, OSError, ValueError) as exc:
        raise UnusableInput(f"config: {exc}") from None


def _write(text: str, path: str | None) -> None:
    if path is None:
        sys.stdout.write(text)
    else:
        Path(path).write_text(text)
        print(f"wrote {path}", file=sys.stderr)


def _quiet_logs(config: Config) -> None:
    from server.logs import setup_logging

    # The in-process server's INFO lines would bury the report; warnings and errors still show.
    level = config.server.log_level.upper()
    setup_logging("WARNING" if level in ("DEBUG", "INFO") else level, "text")


def cmd_eval(args: argparse.Namespace) -> int:
    from server.tools.evaluation.report import threshold_failures, to_json, to_markdown
    from server.tools.evaluation.run import evaluate

    try:
        options = _options(args)
        config = _config(args)
        _quiet_logs(config)
        target = f"recd at {options.address}" if options.address else _in_process_label(args.config)
        result = asyncio.run(evaluate(options, config, target))
    except UnusableInput as exc:
        print(f"recd eval: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    _write(to_markdown(result), args.out_md)
    if args.out_json:
        _write(to_json(result), args.out_json)
    failures = threshold_failures(
        result, args.min_ndcg_ratio_exact, args.min_ndcg_ratio_popularity, args.max_seen_share
    )
    for failure in failures:
        print(f"recd eval: threshold not met: {failure}", file=sys.stderr)
    return EXIT_THRESHOLD if failures else 0


def cmd_tune(args: argparse.Namespace) -> int:
    from server.tools.evaluation.tune import TuneOptions, tune, tune_json, tune_markdown

    try:
        options = _options(args)
        if args.validation is not None and args.validation < 1:
            raise UnusableInput("--validation must be at least 1")
        if args.rounds < 1 or args.pool < 1:
            raise UnusableInput("--rounds and --pool must be at least 1")
        config = _config(args)
        _quiet_logs(config)
        tune_options = TuneOptions(
            out=Path(args.out),
            validation=args.validation or options.holdout,
            rounds=args.rounds,
            pool=args.pool,
            test=args.test,
        )
        result = asyncio.run(tune(options, tune_options, config, _in_process_label(args.config)))
    except UnusableInput as exc:
        print(f"recd tune: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    _write(tune_markdown(result), args.out_md)
    if args.out_json:
        _write(tune_json(result), args.out_json)
    return 0


def _in_process_label(config_path: str | None) -> str:
    where = f"config {config_path}" if config_path else "embedded defaults"
    return f"a fresh in-process server ({where})"
