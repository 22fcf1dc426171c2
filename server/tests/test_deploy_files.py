"""The deploy files (Kubernetes manifests, Prometheus rules, Grafana dashboard) agree with the code:
they parse, name only metrics that server/metrics.py exports, embed a config that loads, and run only
real `recd` subcommands."""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram

from server import metrics
from server.cli import build_parser
from server.config import load_config

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "recd.json"
METRIC_NAME = re.compile(r"(?<![\w:])recd_[a-z0-9_]+(?![\w:])")
# Recording rules' outputs: level:metric:operations.
RULE_NAME = re.compile(r"(?<![\w:])[a-z_][a-z0-9_]*:[a-z0-9_:]+")


def _yaml_files(*dirs: Path) -> list[Path]:
    return sorted(p for d in dirs for p in d.rglob("*") if p.suffix in (".yaml", ".yml"))


def _k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in _yaml_files(K8S):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d is not None)
    return docs


def _exported_names() -> set[str]:
    """Series names the prometheus_client objects in server.metrics expose."""
    names: set[str] = set()
    for obj in vars(metrics).values():
        if isinstance(obj, Histogram):
            base = obj._name
            names |= {f"{base}_bucket", f"{base}_sum", f"{base}_count"}
        elif isinstance(obj, Counter):
            names.add(f"{obj._name}_total")  # prometheus_client strips _total from the stored name
        elif isinstance(obj, Gauge):
            names.add(obj._name)
    return names


def test_deploy_dirs_exist() -> None:
    assert _yaml_files(K8S), "no manifests under deploy/k8s"
    assert (PROMETHEUS / "rules.yaml").is_file()
    assert DASHBOARD.is_file()


@pytest.mark.parametrize("path", _yaml_files(K8S, PROMETHEUS), ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} holds no document"
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: a document is not a mapping"


def test_manifests_have_kind_and_name() -> None:
    kinds = set()
    for doc in _k8s_docs():
        if doc.get("kind") == "Kustomization":
            continue
        assert doc.get("apiVersion") and doc.get("kind"), doc
        assert doc["metadata"]["name"], doc
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "recd", doc["metadata"]
        kinds.add(doc["kind"])
    expected = {
        "Namespace",
        "ConfigMap",
        "Service",
        "StatefulSet",
        "Deployment",
        "PodDisruptionBudget",
        "Job",
    }
    assert expected <= kinds


def test_rules_are_a_rule_file() -> None:
    doc = yaml.safe_load((PROMETHEUS / "rules.yaml").read_text())
    assert doc["groups"]
    alerts = []
    for group in doc["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert ("record" in rule) != ("alert" in rule), rule
            assert isinstance(rule["expr"], str) and rule["expr"].strip()
            assert rule["expr"].count("(") == rule["expr"].count(")"), rule["expr"]
            if "alert" in rule:
                alerts.append(rule["alert"])
                assert rule["labels"]["severity"]
                assert rule["annotations"]["summary"]
            else:
                assert ":" in rule["record"], "recording rules are named level:metric:operations"
    assert len(alerts) >= 7


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["definition"])
    return exprs


def test_dashboard_is_sane() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["schemaVersion"] >= 36
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in dash["templating"]["list"])
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    # The latency panel draws the 100 ms budget.
    budget = [
        p
        for p in dash["panels"]
        if any(
            s.get("value") == 0.1
            for s in p.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {}).get("steps", [])
        )
    ]
    assert budget and "recd_rpc_latency_seconds_bucket" in budget[0]["targets"][0]["expr"]


def test_referenced_metrics_exist() -> None:
    exported = _exported_names()
    assert "recd_rpc_latency_seconds_bucket" in exported and "recd_degraded_responses_total" in exported
    rules = yaml.safe_load((PROMETHEUS / "rules.yaml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    sources = {
        "rules.yaml": [r["expr"] for g in rules["groups"] for r in g["rules"]],
        "recd.json": _dashboard_exprs(),
    }
    for where, exprs in sources.items():
        rule_refs = {r for e in exprs for r in RULE_NAME.findall(e)}
        assert rule_refs <= recorded, (
            f"{where} uses undefined recording rules: {sorted(rule_refs - recorded)}"
        )
        referenced = {m for e in exprs for m in METRIC_NAME.findall(RULE_NAME.sub(" ", e))}
        unknown = referenced - exported
        assert not unknown, f"{where} names metrics server/metrics.py does not export: {sorted(unknown)}"
        assert referenced, where


def test_configmap_config_loads(tmp_path: Path) -> None:
    maps = [d for d in _k8s_docs() if d.get("kind") == "ConfigMap" and "recd.yaml" in d.get("data", {})]
    assert len(maps) == 1
    path = tmp_path / "recd.yaml"
    path.write_text(maps[0]["data"]["recd.yaml"])
    config = load_config(path, environ={})
    statefulset = next(d for d in _k8s_docs() if d.get("kind") == "StatefulSet")
    replicas = statefulset["spec"]["replicas"]
    assert config.cluster.nodes == [
        f"recd-shard-{i}.recd-shard.recd.svc.cluster.local:50061" for i in range(replicas)
    ]
    assert config.cluster.replication == 2
    assert config.profiles.backend == "scylla" and config.graph.backend == "neo4j"
    assert config.cache.backend == "redis"
    # Kubernetes must not SIGKILL a frontend before its drain (preStop sleep + grace_s) is over.
    for doc in _k8s_docs():
        if doc.get("kind") == "Deployment":
            spec = doc["spec"]["template"]["spec"]
            grace = config.edge.grace_s if doc["metadata"]["name"] == "recd-edge" else config.server.grace_s
            sleep = float(spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][-1])
            assert spec["terminationGracePeriodSeconds"] > sleep + grace, doc["metadata"]["name"]


def _containers() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for doc in _k8s_docs():
        spec = doc.get("spec", {})
        pod = spec.get("template", {}).get("spec") if isinstance(spec, dict) else None
        if pod:
            for c in pod.get("initContainers", []) + pod["containers"]:
                out.append((f"{doc['kind']}/{doc['metadata']['name']}/{c['name']}", c))
    return out


def _cpu_cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _env_value(container: dict[str, Any], name: str) -> str:
    """What Kubernetes gives the container as $(name): a literal, or a resource of the container itself
    through the downward API (rounded up to the divisor, as the kubelet does)."""
    var = next(e for e in container.get("env", []) if e["name"] == name)
    if "value" in var:
        return str(var["value"])
    ref = var["valueFrom"]["resourceFieldRef"]
    assert ref.get("containerName", container["name"]) == container["name"]
    section, resource = ref["resource"].split(".")
    assert resource == "cpu", f"only CPU resources are read here: {ref}"
    cores = _cpu_cores(str(container["resources"][section][resource]))
    return str(math.ceil(cores / _cpu_cores(str(ref.get("divisor", "1")))))


def _recd_argv(container: dict[str, Any]) -> list[str]:
    argv = list(container.get("command", [])) + list(container.get("args", []))
    # $(VAR) in command and args is expanded by Kubernetes from the container's env.
    argv = [re.sub(r"\$\((\w+)\)", lambda m: _env_value(container, m.group(1)), a) for a in argv]
    if argv[:2] == ["/bin/sh", "-c"] or argv[:2] == ["sh", "-c"]:
        # A shell wrapper: substitute the pod ordinal it derives, then read the recd command line.
        script = argv[2].replace('"${HOSTNAME##*-}"', "0")
        words = shlex.split(script)
        if words[0] == "exec":
            words = words[1:]
        argv = words
    return argv


def test_containers_run_real_recd_subcommands(monkeypatch: pytest.MonkeyPatch) -> None:
    containers = _containers()
    assert len(containers) >= 4
    parser = build_parser()
    for where, container in containers:
        assert container["image"].startswith("recd:"), where
        argv = _recd_argv(container)
        assert argv and argv[0] == "recd", f"{where}: {argv}"
        try:
            args = parser.parse_args(argv[1:])
        except SystemExit as e:  # argparse exits on an unknown subcommand or option
            raise AssertionError(f"{where}: `{' '.join(argv)}` is not a valid recd command line") from e
        assert args.config == "/etc/recd/recd.yaml", where


def _doc(kind: str, name: str) -> dict[str, Any]:
    return next(d for d in _k8s_docs() if d.get("kind") == kind and d["metadata"]["name"] == name)


def _container(kind: str, name: str) -> dict[str, Any]:
    return dict(_doc(kind, name)["spec"]["template"]["spec"]["containers"][0])


def test_the_frontend_service_is_headless_over_ready_pods() -> None:
    """Callers balance per request over the pods' addresses; a virtual IP would pin each connection."""
    service = _doc("Service", "recd-frontend")["spec"]
    assert service["clusterIP"] == "None"
    assert not service.get("publishNotReadyAddresses", False)  # a pod gets calls once it is ready
    ports = {p["name"]: p["containerPort"] for p in _container("Deployment", "recd-frontend")["ports"]}
    for port in service["ports"]:
        # No virtual IP, no port mapping: clients dial the pods' own ports.
        assert port["port"] == ports[port["name"]], port


def test_the_edge_balances_over_the_headless_service(tmp_path: Path) -> None:
    frontend_port = next(
        p["containerPort"] for p in _container("Deployment", "recd-frontend")["ports"] if p["name"] == "grpc"
    )
    target = f"recd-frontend.recd.svc.cluster.local:{frontend_port}"
    argv = _recd_argv(_container("Deployment", "recd-edge"))
    args = build_parser().parse_args(argv[1:])
    assert args.origin == [target]
    configmap = next(d for d in _k8s_docs() if d.get("kind") == "ConfigMap")
    path = tmp_path / "recd.yaml"
    path.write_text(configmap["data"]["recd.yaml"])
    edge = load_config(path, environ={}).edge
    assert edge.origins == [target]
    assert edge.watch_deletes
    # Re-resolved well within the frontends' preStop sleep: a terminating pod is dropped before SIGTERM.
    sleep = float(_container("Deployment", "recd-frontend")["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert edge.resolve_interval_s < sleep
    # Enough connections per pod that every worker of the pod's group gets some.
    assert edge.connections_per_origin >= int(
        _env_value(_container("Deployment", "recd-frontend"), "RECD_WORKERS")
    )


def test_each_frontend_pod_runs_a_worker_per_requested_core() -> None:
    container = _container("Deployment", "recd-frontend")
    argv = _recd_argv(container)
    assert argv[:2] == ["recd", "serve"]
    workers = argv[argv.index("--workers") + 1]
    cores = _cpu_cores(str(container["resources"]["requests"]["cpu"]))
    assert cores == int(cores) >= 2, "a whole number of cores: one worker each"
    assert int(workers) == int(cores)
    assert _cpu_cores(str(container["resources"]["limits"]["cpu"])) >= cores
