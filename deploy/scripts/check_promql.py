"""Checks the PromQL of the Prometheus rules and the Grafana dashboard against the code.

    check_promql.py --promtool PATH [--rules deploy/prometheus/rules.yaml]
                    [--dashboard deploy/grafana/recd.json] [--tests-dir deploy/prometheus/tests]

- Every expression of the dashboard (panel targets, query variables) is parsed by Prometheus' own
  parser: they are written, with Grafana's variables replaced by values of the right type, into a
  temporary rule file that `promtool check rules` reads.
- Every metric an expression of the rules or the dashboard selects is one recd exports: the names are
  collected from prometheus_client's registry after importing every module of server/ and shards/ that
  defines metrics (the frontend, its worker supervisor, the edge, the shard nodes), so a renamed or
  removed metric fails here instead of leaving an empty panel or an alert that can never fire.
  Recording-rule names (level:metric:operations) must be defined in the rules file.
- Every alert of the rules file has a `promtool test rules` unit test in --tests-dir that expects it
  to fire (a test that only says "does not fire" would pass for an alert that never can).

Exits 1 with one line per problem. Run by deploy/scripts/check_deploy.sh (`make check-deploy`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]

# Grafana's variables, replaced by a value of the type PromQL expects where they stand.
GRAFANA_RANGES = ("$__rate_interval", "$__interval", "$__range", "${__rate_interval}", "${__interval}")
GRAFANA_VARIABLE = re.compile(r"\$\{?(\w+)(?::\w+)?\}?")

TOKEN = re.compile(
    r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+)
  | (?P<number>0x[0-9a-fA-F]+|\d*\.?\d+(?:[eE][-+]?\d+)?)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){}\[\],@:])
    """,
    re.VERBOSE,
)
# Keywords and operators that look like identifiers.
KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
    "group_right", "inf", "nan", "atan2", "start", "end",
    # Aggregation operators: `sum by (x) (...)` puts `by` between the name and its parenthesis.
    "sum", "avg", "min", "max", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "limitk", "limit_ratio",
}  # fmt: skip
# Words followed by a parenthesised list of label names, not expressions.
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}


def tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot read {expr[pos : pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append((kind, m.group()))
    return out


def selected_names(expr: str) -> set[str]:
    """Metric (and recording-rule) names the expression selects: bare names of vector selectors, and
    __name__="..." matchers."""
    toks = tokens(expr)
    names: set[str] = set()
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind == "op" and text == "{":
            # Label matchers: label op "value" pairs up to the closing brace.
            j = i + 1
            while j < len(toks) and toks[j][1] != "}":
                if toks[j][1] == "__name__" and j + 2 < len(toks) and toks[j + 1][1] == "=":
                    names.add(toks[j + 2][1][1:-1])
                j += 1
            i = j + 1
            continue
        if kind == "op" and text == "[":
            # A range or subquery duration: [5m], [1h:1m].
            while i < len(toks) and toks[i][1] != "]":
                i += 1
            i += 1
            continue
        if kind == "ident" and text in LABEL_LISTS and nxt == "(":
            while i < len(toks) and toks[i][1] != ")":
                i += 1
            i += 1
            continue
        if kind == "ident" and text not in KEYWORDS and nxt != "(":
            names.add(text)
        i += 1
    return names


def grafana_to_promql(expr: str) -> str | None:
    """The PromQL a Grafana target or variable query stands for; None for a variable query that holds
    none (label_values(label), label_names())."""
    expr = expr.strip()
    m = re.fullmatch(r"label_values\((.*),\s*\w+\)", expr, re.S)
    if m:
        expr = m.group(1)
    elif re.fullmatch(r"label_values\(\s*\w+\s*\)|label_names\(.*\)|metrics\(.*\)", expr, re.S):
        return None
    m = re.fullmatch(r"query_result\((.*)\)", expr, re.S)
    if m:
        expr = m.group(1)
    for var in GRAFANA_RANGES:
        expr = expr.replace(var, "5m")
    # Any other variable stands in a label matcher's value ("$job") or as one: a regex that matches.
    return GRAFANA_VARIABLE.sub(".*", expr)


def dashboard_exprs(path: Path) -> list[tuple[str, str]]:
    """(where, PromQL) for every target of every panel (rows included) and every query variable."""
    dash = json.loads(path.read_text())

    def panels(items: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    out = []
    for panel in panels(dash.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                out.append((f"panel {panel.get('title')!r} target {target.get('refId')}", target["expr"]))
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var.get("query")
            text = query.get("query") if isinstance(query, dict) else query
            out.append((f"variable {var['name']!r}", text or var.get("definition", "")))
    return out


def exported_metric_names() -> set[str]:
    """Every series name recd can export: the default registry, and the metrics held by module
    attributes, after importing every non-test module of server/ and shards/ that uses
    prometheus_client."""
    from prometheus_client import REGISTRY
    from prometheus_client.metrics import MetricWrapperBase

    sys.path.insert(0, str(ROOT))
    # Metrics made with registry=None (the worker supervisor's, registered only in its own registry)
    # are not in the default registry: they are found as module attributes.
    families = list(REGISTRY.collect())
    for package in ("server", "shards"):
        for module in pkgutil.walk_packages([str(ROOT / package)], prefix=f"{package}."):
            name = module.name
            if ".tests" in name or name.startswith("server.gen") or ".tools." in name:
                continue
            source = ROOT / (name.replace(".", "/") + ".py")
            if source.is_file() and "prometheus_client" in source.read_text():
                module_globals = vars(importlib.import_module(name)).values()
                for obj in module_globals:
                    if isinstance(obj, MetricWrapperBase):
                        families.extend(obj.collect())
    families.extend(REGISTRY.collect())

    # Series as Prometheus stores them: a counter family `x` is the series x_total, a histogram x_bucket,
    # x_sum and x_count (the registry's own name list also holds the bare family names).
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("_sum", "_count", ""),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in families:
        names |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
    return names


def check(
    promtool: Path, rules_path: Path, dashboard_path: Path, tests_dir: Path, exported: set[str]
) -> list[str]:
    problems: list[str] = []
    rules = yaml.safe_load(rules_path.read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    alerts = [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]

    exprs: list[tuple[str, str]] = [
        (f"{rules_path.name}: {r.get('record') or r.get('alert')}", r["expr"])
        for g in rules["groups"]
        for r in g["rules"]
    ]
    parsed: list[tuple[str, str]] = []
    for where, text in dashboard_exprs(dashboard_path):
        promql = grafana_to_promql(text)
        if promql is not None:
            parsed.append((f"{dashboard_path.name}: {where}", promql))
    if not parsed:
        problems.append(f"{dashboard_path}: no PromQL found")

    # Prometheus' parser on the dashboard's expressions (the rules file is checked as it is).
    with tempfile.TemporaryDirectory() as tmp:
        rule_file = Path(tmp) / "dashboard.rules.yaml"
        rule_file.write_text(
            yaml.safe_dump(
                {
                    "groups": [
                        {
                            "name": "dashboard",
                            "rules": [
                                {"record": f"dashboard:expr:{i}", "expr": e}
                                for i, (_, e) in enumerate(parsed)
                            ],
                        }
                    ]
                }
            )
        )
        result = subprocess.run(
            [str(promtool), "check", "rules", str(rule_file)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            # promtool names the rule by its index: map it back to the panel.
            output = result.stdout + result.stderr
            for i, (where, e) in enumerate(parsed):
                output = output.replace(f"dashboard:expr:{i}", f"{where} ({e})")
            problems.append(f"{dashboard_path}: PromQL that does not parse:\n{output.strip()}")

    for where, text in exprs + parsed:
        try:
            names = selected_names(text)
        except ValueError as e:
            problems.append(f"{where}: {e}")
            continue
        if not names:
            problems.append(f"{where}: selects no metric: {text.strip()}")
        for name in sorted(names):
            if ":" in name:
                if name not in recorded:
                    problems.append(f"{where}: recording rule {name} is not defined in {rules_path.name}")
            elif name not in exported:
                problems.append(f"{where}: metric {name} is not exported by server/ or shards/")

    firing: set[str] = set()
    for test_file in sorted(tests_dir.glob("*.yaml")):
        for test in yaml.safe_load(test_file.read_text()).get("tests", []):
            for case in test.get("alert_rule_test", []):
                if case.get("exp_alerts"):
                    firing.add(case["alertname"])
    for alert in alerts:
        if alert not in firing:
            problems.append(
                f"{rules_path.name}: alert {alert} has no unit test in {tests_dir} that makes it fire"
            )
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--promtool", type=Path, required=True)
    parser.add_argument("--rules", type=Path, default=ROOT / "deploy/prometheus/rules.yaml")
    parser.add_argument("--dashboard", type=Path, default=ROOT / "deploy/grafana/recd.json")
    parser.add_argument("--tests-dir", type=Path, default=ROOT / "deploy/prometheus/tests")
    args = parser.parse_args()
    exported = exported_metric_names()
    problems = check(args.promtool, args.rules, args.dashboard, args.tests_dir, exported)
    for problem in problems:
        print(f"check_promql: {problem}", file=sys.stderr)
    if not problems:
        print(f"check_promql: rules, dashboard and alert tests agree with {len(exported)} exported series")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
