"""The deploy files (Kubernetes manifests, Prometheus rules, Grafana dashboard, Dockerfiles) agree with
the code: they parse, name only metrics that server/metrics.py exports, embed a config that loads, and
run only real `recd` subcommands; the manifests as kustomize renders them are hardened (non-root,
read-only root, no token, network policies, disruption budgets, spread) and roll on a config change;
and deploy/scripts/check_deploy.sh, with the real tools, passes on them and fails on broken copies."""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram

from server import metrics
from server.cli import build_parser
from server.config import load_config
from server.experiments.registry import ExperimentRegistry

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
K8S_GPU = ROOT / "deploy" / "k8s-gpu"
DOCKER = ROOT / "deploy" / "docker"
SCRIPTS = ROOT / "deploy" / "scripts"
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "recd.json"
METRIC_NAME = re.compile(r"(?<![\w:])recd_[a-z0-9_]+(?![\w:])")
# Recording rules' outputs: level:metric:operations.
RULE_NAME = re.compile(r"(?<![\w:])[a-z_][a-z0-9_]*:[a-z0-9_:]+")


def _yaml_files(*dirs: Path) -> list[Path]:
    return sorted(p for d in dirs for p in d.rglob("*") if p.suffix in (".yaml", ".yml"))


@functools.cache
def _tool(name: str) -> str:
    """The pinned tool deploy/scripts/tools.sh installs (cached under ~/.cache/recd/tools)."""
    result = subprocess.run(
        [str(SCRIPTS / "tools.sh"), "path", name], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"tools.sh path {name} failed:\n{result.stderr}"
    return result.stdout.strip()


def _render(directory: Path) -> list[dict[str, Any]]:
    """What `kubectl apply -k directory` would apply, as kustomize builds it."""
    result = subprocess.run(
        [_tool("kustomize"), "build", str(directory)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"kustomize build {directory} failed:\n{result.stderr}"
    return [d for d in yaml.safe_load_all(result.stdout) if d is not None]


@functools.cache
def _rendered(entry: str) -> tuple[dict[str, Any], ...]:
    return tuple(_render(ROOT / "deploy" / entry))


def _k8s_docs() -> list[dict[str, Any]]:
    """The workloads and the schema Job as rendered (their shared namespace and config once)."""
    docs: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in ("k8s", "k8s/schema"):
        for doc in _rendered(entry):
            docs.setdefault((doc["kind"], doc["metadata"]["name"]), doc)
    return list(docs.values())


def _exported_names() -> set[str]:
    """Series names the prometheus_client objects in server.metrics and shards.metrics (the shard nodes')
    expose, and the per-shard gauges shards.metrics collects at scrape time."""
    from shards import metrics as shard_metrics

    names: set[str] = {family.name for family in shard_metrics.ShardCollector().collect()}
    for obj in [*vars(metrics).values(), *vars(shard_metrics).values()]:
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


@pytest.mark.parametrize(
    "path", _yaml_files(K8S, K8S_GPU, PROMETHEUS), ids=lambda p: str(p.relative_to(ROOT))
)
def test_yaml_parses(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} holds no document"
    # The experiments file is data for a ConfigMap (a list of experiments), not a manifest.
    kind = list if path.name == "experiments.yaml" else dict
    for doc in docs:
        assert isinstance(doc, kind), f"{path}: a document is not a {kind.__name__}"


def test_manifests_have_kind_and_name() -> None:
    kinds = set()
    for doc in _k8s_docs():
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
        "NetworkPolicy",
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


def test_every_pod_that_serves_recommends_mounts_the_experiments_file(tmp_path: Path) -> None:
    """The frontends and the edge assign users from the same experiments file, which keeps its
    ConfigMap name (an edit reaches running pods) and loads as experiments with the shipped config."""
    maps = {d["metadata"]["name"]: d for d in _k8s_docs() if d.get("kind") == "ConfigMap"}
    config_map = next(d for name, d in maps.items() if "recd.yaml" in d.get("data", {}))
    path = tmp_path / "recd.yaml"
    path.write_text(config_map["data"]["recd.yaml"])
    config = load_config(path, environ={})
    assert config.experiments.file is not None
    mount_dir, _, file_name = config.experiments.file.rpartition("/")
    experiments = maps["recd-experiments"]  # no hash suffix: edits are not rollouts
    (tmp_path / file_name).write_text(experiments["data"][file_name])
    config.experiments.file = str(tmp_path / file_name)
    assert ExperimentRegistry(config).current().experiments == ()
    mounting = set()
    for doc in _k8s_docs():
        pod = doc.get("spec", {}).get("template", {}).get("spec") if doc.get("kind") == "Deployment" else None
        if not pod:
            continue
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            for m in c.get("volumeMounts", []):
                if m["mountPath"] == mount_dir:
                    assert volumes[m["name"]]["configMap"]["name"] == "recd-experiments"
                    mounting.add(doc["metadata"]["name"])
    assert mounting == {"recd-frontend", "recd-edge"}


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
        assert container["image"] == _images()["recd"], where
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
    # No CPU limit (CFS throttling against the 100 ms budget): the request alone sizes the group.
    assert "cpu" not in container["resources"].get("limits", {})


# --- images ------------------------------------------------------------------------------------------
def _images() -> dict[str, str]:
    """Image name in the manifests -> the pinned reference the kustomize component gives it."""
    component = yaml.safe_load((K8S / "image" / "kustomization.yaml").read_text())
    return {i["name"]: f"{i['newName']}:{i['newTag']}" for i in component["images"]}


def _pod_specs(docs: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"])
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet", "Job")
    ]


def test_images_are_pinned_and_set_in_one_place() -> None:
    images = _images()
    assert set(images) == {"recd", "recd-gpu"}
    for ref in images.values():
        tag = ref.rsplit(":", 1)[1]
        assert tag and tag != "latest", f"{ref}: pin a release tag"
    # The raw manifests name only the bare image; the component is what pins it, for every entry point.
    for path in [*K8S.glob("*.yaml"), *(K8S / "schema").glob("*.yaml")]:
        for doc in yaml.safe_load_all(path.read_text()):
            for _, pod in _pod_specs([doc] if doc and "kind" in doc else []):
                assert {c["image"] for c in pod["containers"]} == {"recd"}, path
    for entry in ("k8s", "k8s/schema", "k8s-gpu"):
        used = {c["image"] for _, pod in _pod_specs(_rendered(entry)) for c in pod["containers"]}
        assert used and used <= set(images.values()), (entry, used)


# --- hardening ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("entry", ["k8s", "k8s/schema", "k8s-gpu"])
def test_pods_are_hardened(entry: str) -> None:
    for where, pod in _pod_specs(_rendered(entry)):
        assert pod["automountServiceAccountToken"] is False, where
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] > 10000, where
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
        mounts_needed = {"/tmp"}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            assert container["imagePullPolicy"] == "IfNotPresent", where
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            # A read-only root needs somewhere to write: /tmp (the worker group's run directory).
            for path in mounts_needed:
                assert path in mounts, f"{where}: no writable {path}"
                assert "emptyDir" in volumes[mounts[path]], where
            # The data directory of common/recd.yaml is writable where it is mounted.
            if "/var/lib/recd/data" in mounts:
                name = mounts["/var/lib/recd/data"]
                assert name in volumes or where.startswith("StatefulSet/"), where


def test_no_cpu_limits_and_memory_limited() -> None:
    """CPU limits are CFS quotas per 100 ms period: a burst throttles the pod for the rest of the period,
    against a 100 ms p99 budget. Requests reserve the cores; memory stays limited."""
    for where, pod in _pod_specs(_k8s_docs()):
        for container in pod["containers"]:
            resources = container["resources"]
            assert "cpu" not in resources.get("limits", {}), where
            assert resources["requests"]["cpu"], where
            assert resources["limits"]["memory"], where


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def test_disruption_budgets_and_spread() -> None:
    docs = _k8s_docs()
    budgets = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    for kind, name in [
        ("Deployment", "recd-frontend"),
        ("Deployment", "recd-edge"),
        ("StatefulSet", "recd-shard"),
    ]:
        workload = _doc(kind, name)
        labels = workload["spec"]["template"]["metadata"]["labels"]
        matching = [b for b in budgets if _selects(b["spec"]["selector"], labels)]
        assert len(matching) == 1, name
        assert matching[0]["spec"]["maxUnavailable"] == 1, name
        assert workload["spec"]["replicas"] >= 3, name
    for name in ("recd-frontend", "recd-edge"):
        pod = _doc("Deployment", name)["spec"]["template"]
        spread = {c["topologyKey"]: c for c in pod["spec"]["topologySpreadConstraints"]}
        # One pod per node (hard), zones soft.
        host = spread["kubernetes.io/hostname"]
        assert host["whenUnsatisfiable"] == "DoNotSchedule" and host["maxSkew"] == 1, name
        assert _selects(host["labelSelector"], pod["metadata"]["labels"]), name
        assert spread["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "ScheduleAnyway", name


def test_shard_replicas_never_share_a_node() -> None:
    statefulset = _doc("StatefulSet", "recd-shard")
    pod = statefulset["spec"]["template"]
    anti = pod["spec"]["affinity"]["podAntiAffinity"]
    assert "preferredDuringSchedulingIgnoredDuringExecution" not in anti
    (term,) = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert _selects(term["labelSelector"], pod["metadata"]["labels"])


def _policies() -> list[dict[str, Any]]:
    return [d for d in _k8s_docs() if d["kind"] == "NetworkPolicy"]


def _ingress_sources(name: str) -> list[dict[str, Any]]:
    """The `from` peers allowed to the pods of workload `name` on its grpc port."""
    labels = _doc("StatefulSet" if name == "recd-shard" else "Deployment", name)["spec"]["template"][
        "metadata"
    ]["labels"]
    peers = []
    for policy in _policies():
        if "Ingress" in policy["spec"]["policyTypes"] and _selects(policy["spec"]["podSelector"], labels):
            for rule in policy["spec"].get("ingress", []):
                if any(p["port"] == "grpc" for p in rule.get("ports", [])):
                    peers.extend(rule["from"])
    return peers


def test_network_policies_keep_the_tiers_apart() -> None:
    policies = _policies()
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and "Ingress" in p["spec"]["policyTypes"]]
    assert deny and all(not p["spec"].get("ingress") for p in deny), "a default-deny ingress policy"
    # Shard nodes: frontends and shard nodes of this namespace only.
    shard_peers = _ingress_sources("recd-shard")
    assert shard_peers and all(set(p) == {"podSelector"} for p in shard_peers)
    assert {p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for p in shard_peers} == {
        "recd-frontend",
        "recd-shard",
    }
    # Frontends: the edge, and opted-in callers; never "everyone".
    frontend_peers = _ingress_sources("recd-frontend")
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "recd-edge"}}} in frontend_peers
    for peer in frontend_peers:
        assert peer.get("podSelector", {}).get("matchLabels"), f"frontends open to {peer}"
    assert _ingress_sources("recd-edge"), "the edge is the public API"
    # Every workload's metrics port is scrapeable from the monitoring namespace.
    metrics = [
        p
        for p in policies
        if any(r["ports"] == [{"port": "metrics", "protocol": "TCP"}] for r in p["spec"].get("ingress", []))
    ]
    assert metrics
    for _, pod in _pod_specs(_rendered("k8s")):
        assert any(port["name"] == "metrics" for port in pod["containers"][0]["ports"])


def test_shard_nodes_export_metrics_on_their_metrics_port() -> None:
    container = _container("StatefulSet", "recd-shard")
    args = build_parser().parse_args(_recd_argv(container)[1:])
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == "metrics")
    assert args.metrics_address == f"0.0.0.0:{port}"


# --- config rollout and the schema Job ---------------------------------------------------------------
def _config_refs(docs: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> set[str]:
    """The recd.yaml ConfigMaps the pods mount (the experiments one keeps its name on purpose)."""
    return {
        v["configMap"]["name"]
        for _, pod in _pod_specs(docs)
        for v in pod.get("volumes", [])
        if "configMap" in v and v["configMap"]["name"] != "recd-experiments"
    }


def test_a_config_change_rolls_the_workloads(tmp_path: Path) -> None:
    """The ConfigMap's name carries a hash of recd.yaml, so editing it changes every pod template."""
    (configmap,) = [
        d
        for d in _rendered("k8s")
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] != "recd-experiments"
    ]
    assert re.fullmatch(r"recd-config-[a-z0-9]{10}", configmap["metadata"]["name"])
    assert _config_refs(_rendered("k8s")) == {configmap["metadata"]["name"]}
    # The schema Job reads the same generated ConfigMap.
    assert _config_refs(_rendered("k8s/schema")) == {configmap["metadata"]["name"]}

    copy = tmp_path / "deploy"
    shutil.copytree(K8S, copy / "k8s")
    recd_yaml = copy / "k8s" / "common" / "recd.yaml"
    recd_yaml.write_text(recd_yaml.read_text().replace("grace_s: 20.0", "grace_s: 25.0", 1))
    changed = _render(copy / "k8s")
    (new_name,) = _config_refs(changed)
    assert new_name != configmap["metadata"]["name"]
    assert new_name in {d["metadata"]["name"] for d in changed if d["kind"] == "ConfigMap"}


def test_the_workloads_do_not_carry_the_schema_job() -> None:
    """A Job's template is immutable: inside deploy/k8s it would fail every apply after an image change."""
    assert not [d for d in _rendered("k8s") if d["kind"] == "Job"]
    assert not [d for d in _rendered("k8s-gpu") if d["kind"] == "Job"]
    (job,) = [d for d in _rendered("k8s/schema") if d["kind"] == "Job"]
    assert 0 < job["spec"]["ttlSecondsAfterFinished"] <= 3600
    assert _recd_argv(job["spec"]["template"]["spec"]["containers"][0])[1:3] == ["schema", "apply"]


# --- the GPU variant ---------------------------------------------------------------------------------
def test_the_gpu_variant_ranks_on_a_gpu(tmp_path: Path) -> None:
    gpu = {(d["kind"], d["metadata"]["name"]): d for d in _rendered("k8s-gpu")}
    cpu = {(d["kind"], d["metadata"]["name"]): d for d in _rendered("k8s")}
    assert gpu.keys() == cpu.keys()
    frontend = gpu[("Deployment", "recd-frontend")]["spec"]["template"]["spec"]
    container = frontend["containers"][0]
    assert container["image"] == _images()["recd-gpu"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in frontend["tolerations"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    configmap = next(d for d in gpu.values() if d["kind"] == "ConfigMap")
    path = tmp_path / "recd.yaml"
    path.write_text(configmap["data"]["recd.yaml"])
    overrides = {k: v for k, v in env.items() if k.startswith("RECD_RANKING__") and v is not None}
    assert load_config(path, environ=overrides).ranking.ranker == "gpu"
    # Everything but the frontend is the CPU variant, unchanged.
    for key in cpu:
        if key != ("Deployment", "recd-frontend"):
            assert gpu[key] == cpu[key], key


# --- image build -------------------------------------------------------------------------------------
def test_dockerfiles_build_portable_pinned_non_root_images() -> None:
    cpu = (DOCKER / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", cpu, re.M)
    assert len(stages) >= 3, "multi-stage: toolchain, build, runtime"
    for arg in re.findall(r"^ARG (\w+_IMAGE)=(\S+)$", cpu, re.M):
        assert re.search(r":\d+\.\d+\.\d+", arg[1]), f"{arg[0]} is not pinned to a patch version: {arg[1]}"
    assert re.search(r"^\s*HNSWLIB_NO_NATIVE=1", cpu, re.M), "hnswlib must not build with -march=native"
    assert "--no-binary hnswlib" in cpu
    instructions = "\n".join(line for line in cpu.splitlines() if not line.lstrip().startswith("#"))
    assert "target-cpu" not in instructions and "march=native" not in instructions
    assert re.search(r'^\s*RUSTFLAGS="" \\$', instructions, re.M), "no RUSTFLAGS from the build environment"
    assert re.search(r"^USER 10001:10001$", cpu, re.M)
    assert re.search(r"maturin==\d", cpu) and "--locked" in cpu
    gpu = (DOCKER / "Dockerfile.gpu").read_text()
    assert re.search(r"^USER 10001:10001$", gpu, re.M)
    assert "cupy-cuda12x[ctk]==" in gpu and "requirements-gpu.lock" in gpu


def _lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name] = version
    return pins


def test_the_image_lock_pins_every_runtime_dependency() -> None:
    from packaging.requirements import Requirement

    project = __import__("tomllib").loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = _lock(DOCKER / "requirements.lock")
    for text in project["dependencies"]:
        req = Requirement(text)
        name = req.name.lower().replace("_", "-")
        assert name in lock, f"{name} is not in deploy/docker/requirements.lock: run `make docker-lock`"
        assert req.specifier.contains(lock[name]), (
            f"{name}=={lock[name]} is outside pyproject's {req.specifier}: run `make docker-lock`"
        )
    gpu_lock = _lock(DOCKER / "requirements-gpu.lock")
    gpu_req = Requirement(next(r for r in project["optional-dependencies"]["gpu"] if r.startswith("cupy")))
    assert gpu_req.specifier.contains(gpu_lock["cupy-cuda12x"])


# --- the real tools ----------------------------------------------------------------------------------
def _check_deploy(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPTS / "check_deploy.sh"), str(root)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "RECD_PYTHON": sys.executable},
        timeout=600,
    )


def test_check_deploy_passes() -> None:
    result = _check_deploy(ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "check_deploy: all deploy files pass" in result.stdout


def _break_manifest(deploy: Path) -> None:
    path = deploy / "k8s" / "edge.yaml"
    # A typo'd field: kubectl would reject it server-side; --strict catches it here.
    path.write_text(
        path.read_text().replace("terminationGracePeriodSeconds: 45", "terminationGracePeriod: 45")
    )


def _writable_root(deploy: Path) -> None:
    path = deploy / "k8s" / "schema" / "job.yaml"
    # Schema-valid, so only kube-score can object.
    path.write_text(path.read_text().replace("readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false"))


def _break_rule(deploy: Path) -> None:
    path = deploy / "prometheus" / "rules.yaml"
    path.write_text(path.read_text().replace("> 0.1\n", "> > 0.1\n", 1))


def _wrong_alert_expectation(deploy: Path) -> None:
    path = deploy / "prometheus" / "tests" / "alerts.test.yaml"
    path.write_text(path.read_text().replace("Recommend p99 is 199ms", "Recommend p99 is 150ms"))


def _untested_alert(deploy: Path) -> None:
    path = deploy / "prometheus" / "rules.yaml"
    rules = yaml.safe_load(path.read_text())
    rules["groups"][-1]["rules"].append(
        {"alert": "RecdUntested", "expr": "recd_shard_node_up == 2", "labels": {"severity": "ticket"}}
    )
    path.write_text(yaml.safe_dump(rules))


def _unknown_dashboard_metric(deploy: Path) -> None:
    path = deploy / "grafana" / "recd.json"
    path.write_text(path.read_text().replace("recd_rpc_in_flight", "recd_rpc_inflight"))


def _bad_dashboard_promql(deploy: Path) -> None:
    path = deploy / "grafana" / "recd.json"
    dash = json.loads(path.read_text())
    target = next(t for p in dash["panels"] for t in p.get("targets", []))
    target["expr"] = "sum by (job (rate(recd_rpc_latency_seconds_count[5m]))"
    path.write_text(json.dumps(dash))


def _dockerfile_as_root(deploy: Path) -> None:
    path = deploy / "docker" / "Dockerfile"
    path.write_text(path.read_text().replace("USER 10001:10001\n", "USER recd\n"))


# Groups of (breakage, the check_deploy step that must fail, what it must say). The breakages of a group
# touch different files or different parts of one and are checked in one run of the tools; a rule file
# that does not parse stops the alert tests too, so it gets a run of its own.
BREAKAGES = {
    "one_of_each": [
        (_break_manifest, "deploy/k8s", "additional properties 'terminationGracePeriod' not allowed"),
        (_writable_root, "deploy/k8s/schema", "writable root filesystem"),
        (_wrong_alert_expectation, "promtool test rules", "alertname: RecdRecommendP99OverBudget, time: 20m"),
        (_untested_alert, "dashboard and rule PromQL", "alert RecdUntested has no unit test"),
        (_unknown_dashboard_metric, "dashboard and rule PromQL", "metric recd_rpc_inflight is not exported"),
        (_bad_dashboard_promql, "dashboard and rule PromQL", "does not parse"),
        (_dockerfile_as_root, "hadolint", "DL3066"),
    ],
    "rule_syntax": [(_break_rule, "promtool check rules", "RecdRecommendP99OverBudget")],
}


@pytest.mark.parametrize("group", sorted(BREAKAGES))
def test_check_deploy_fails_on_a_broken_copy(tmp_path: Path, group: str) -> None:
    """Each breakage in a copy of deploy/ is caught by its check, and the build fails."""
    deploy = tmp_path / "deploy"
    shutil.copytree(
        ROOT / "deploy", deploy, ignore=shutil.ignore_patterns("java", "cassandra", "__pycache__")
    )
    for breakage, _, _ in BREAKAGES[group]:
        breakage(deploy)
    result = _check_deploy(tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, result.stdout[-3000:]
    failed = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    for breakage, step, message in BREAKAGES[group]:
        assert message in output, (breakage.__name__, output[-4000:])
        assert any(step in line for line in failed), (breakage.__name__, failed)


def _context_includes(path: str, rules: list[str]) -> bool:
    """Whether .dockerignore (Docker's last-match-wins patterns) keeps `path` in the build context."""
    import fnmatch

    kept = True
    for rule in rules:
        negated = rule.startswith("!")
        pattern = rule[1:] if negated else rule
        pattern = pattern.rstrip("/")
        # A pattern matches the path itself or a directory above it.
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes):
            kept = negated
    return kept


def test_the_build_context_holds_what_the_dockerfiles_copy() -> None:
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not _context_includes(".venv/bin/python", rules)
    assert not _context_includes("core_rs/target/release/x", rules)
    assert not _context_includes("data/demo/x", rules)
    copied = []
    for dockerfile in (DOCKER / "Dockerfile", DOCKER / "Dockerfile.gpu"):
        for line in dockerfile.read_text().splitlines():
            words = line.split()
            if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
                copied.extend(words[1:-1])
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: no such path"
        assert _context_includes(source, rules), f"COPY {source}: excluded by .dockerignore"


class _StubServer:
    """What server.security.tls.bind calls on a grpc.aio.Server, without opening a socket."""

    def __init__(self) -> None:
        self.bound: list[tuple[str, bool]] = []

    def add_insecure_port(self, address: str) -> int:
        self.bound.append((address, False))
        return 1

    def add_secure_port(self, address: str, credentials: object) -> int:
        self.bound.append((address, True))
        return 1


def test_every_listener_starts_with_the_clusters_config(tmp_path: Path) -> None:
    """recd refuses plaintext gRPC on an address other machines can reach unless the config allows it;
    each pod's listener goes through the same check the servers run at start."""
    from server.security.tls import bind

    configmap = next(d for d in _rendered("k8s") if d["kind"] == "ConfigMap")
    path = tmp_path / "recd.yaml"
    path.write_text(configmap["data"]["recd.yaml"])
    listeners = {"recd-frontend": "server.tls", "recd-edge": "edge.tls", "recd-shard": "cluster.tls"}
    for name, where in listeners.items():
        container = _container("StatefulSet" if name == "recd-shard" else "Deployment", name)
        env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
        config = load_config(path, environ=env)
        args = build_parser().parse_args(_recd_argv(container)[1:])
        section = where.split(".")[0]
        tls = {"server": config.server.tls, "edge": config.edge.tls, "cluster": config.cluster.tls}[section]
        address = (
            getattr(args, "address", None)
            or {"server": config.server.address, "edge": config.edge.address}[section]
        )
        grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
        assert address.endswith(f":{grpc_port}"), (name, address)
        server = _StubServer()
        bind(server, address, tls, where)  # type: ignore[arg-type]
        assert server.bound == [(address, False)], name
