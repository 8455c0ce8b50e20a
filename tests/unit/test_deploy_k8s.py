"""Static checks of the Kubernetes manifests in deploy/k8s: the workload (base/), the
scale-out variant on the Kafka checkpoint store (scale-out/) and the monitoring objects
(monitoring/), against each other, the Dockerfile, the example configuration and the
service's configuration loader.

``kubectl kustomize`` (offline) builds the three kustomizations where kubectl is installed;
without it the base and monitoring resources are read file by file and the overlay tests
are skipped.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml

from tests.unit.test_deploy_static import (
    EXAMPLE_CONFIG,
    METRICS_PORT,
    ROOT,
    _compose,
    _dockerfile,
    _flag,
    _yaml,
)

K8S = ROOT / "deploy" / "k8s"
BASE, SCALE_OUT, MONITORING = K8S / "base", K8S / "scale-out", K8S / "monitoring"

#: Worst case of the final checkpoint after SIGTERM, from streamseq/service/app.py: producer
#: flush (60 s timeout), snapshots (local: seconds; Kafka store: its own flush, 60 s), offset
#: commit (request timeout 35 s), producer and consumer close (10 s). The grace periods must
#: exceed it, or SIGKILL cuts the checkpoint and the restart replays.
FINAL_CHECKPOINT_BUDGET_S = {"local": 60 + 5 + 35 + 10, "kafka": 60 + 60 + 35 + 10}


def _kubectl() -> str | None:
    return shutil.which("kubectl")


@cache
def _build(directory: Path) -> tuple[dict[str, Any], ...]:
    """The objects a kustomization produces (kubectl kustomize, else its resource files)."""
    if _kubectl():
        out = subprocess.run([_kubectl() or "kubectl", "kustomize", str(directory)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return tuple(d for d in yaml.safe_load_all(out.stdout) if d)
    kust = _yaml(directory / "kustomization.yaml")
    if kust.get("patches") or any((directory / r).is_dir() for r in kust["resources"]):
        pytest.skip("kubectl is needed to build this kustomization")
    return tuple(d for r in kust["resources"] for d in yaml.safe_load_all(
        (directory / r).read_text()) if d)


def _one(docs: tuple[dict[str, Any], ...], kind: str, name: str | None = None
         ) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def _base() -> tuple[dict[str, Any], ...]:
    return _build(BASE)


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _env(deployment: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in _container(deployment).get("env", [])}


def _config_map() -> dict[str, Any]:
    return _one(_base(), "ConfigMap", "streamseq-config")


# ------------------------------------------------------------------ the workload


def test_kustomizations_list_existing_files_and_one_namespace() -> None:
    for directory in (K8S, BASE, SCALE_OUT, MONITORING):
        kust = _yaml(directory / "kustomization.yaml")
        for resource in kust["resources"]:
            assert (directory / resource).exists(), f"{directory.name}: {resource}"
    for directory in (BASE, MONITORING):
        namespaces = {d["metadata"].get("namespace") for d in _build(directory)
                      if d["kind"] != "Namespace"}
        assert namespaces == {"streamseq"}, (directory.name, namespaces)


def test_deployment() -> None:
    docs = _base()
    dep = _one(docs, "Deployment")
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    docker_uid = [a for op, a in _dockerfile() if op == "USER"][-1].split(":")[0]
    assert str(spec["securityContext"]["runAsUser"]) == docker_uid
    container = _container(dep)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": METRICS_PORT}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ("metrics", METRICS_PORT)
    res = container["resources"]
    assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"])
    notes = pod["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert int(notes["prometheus.io/port"]) == METRICS_PORT
    # The config file passed to the service is the mounted ConfigMap key.
    config_path = _flag(container["args"], "--config")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["config"]["configMap"]["name"] == _config_map()["metadata"]["name"]
    assert config_path == f"{mounts['config']}/streamseq.toml"
    assert _env(dep)["STREAMSEQ_CHECKPOINT_DIR"] == mounts["checkpoints"]
    claim = volumes["checkpoints"]["persistentVolumeClaim"]["claimName"]
    assert claim == _one(docs, "PersistentVolumeClaim")["metadata"]["name"]
    assert dep["spec"]["strategy"]["type"] == "Recreate", "a ReadWriteOnce volume"


def test_pod_meets_the_restricted_pod_security_standard() -> None:
    """The namespace enforces "restricted" (Pod Security Admission); the pod passes it."""
    docs = _base()
    labels = _one(docs, "Namespace")["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted", mode
    spec = _one(docs, "Deployment")["spec"]["template"]["spec"]
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] != 0
    assert pod_sc["seccompProfile"]["type"] in ("RuntimeDefault", "Localhost")
    for c in spec["containers"] + spec.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
        assert not sc.get("privileged")
    allowed = {"configMap", "emptyDir", "persistentVolumeClaim", "secret", "projected",
               "downwardAPI"}
    for v in spec["volumes"]:
        assert set(v) - {"name"} <= allowed, v
    assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))


def test_no_service_account_token_and_bounded_scratch_space() -> None:
    docs = _base()
    sa = _one(docs, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    spec = _one(docs, "Deployment")["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == sa["metadata"]["name"]
    assert spec["automountServiceAccountToken"] is False
    for volume in spec["volumes"]:
        if "emptyDir" in volume:
            assert volume["emptyDir"].get("sizeLimit"), f"{volume['name']}: no sizeLimit"


def test_disruption_budget_and_network_policy_select_the_pods() -> None:
    docs = _base()
    pod_labels = _one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    pdb = _one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
    policy = _one(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    (ingress,) = policy["spec"]["ingress"]
    assert [p["port"] for p in ingress["ports"]] in (["metrics"], [METRICS_PORT])
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    bootstrap = tomllib.loads(_config_map()["data"]["streamseq.toml"])["bootstrap"]
    kafka_port = int(bootstrap.rsplit(":", 1)[1])
    assert {53, kafka_port} <= egress_ports
    kafka_ns = bootstrap.split(".")[1]  # <service>.<namespace>.svc...
    egress_ns = {rule["to"][0]["namespaceSelector"]["matchLabels"][
        "kubernetes.io/metadata.name"] for rule in policy["spec"]["egress"]}
    assert kafka_ns in egress_ns, (kafka_ns, egress_ns)


def test_termination_grace_outlasts_the_final_checkpoint() -> None:
    spec = _one(_base(), "Deployment")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] > FINAL_CHECKPOINT_BUDGET_S["local"]
    assert FINAL_CHECKPOINT_BUDGET_S["kafka"] < 180 <= int(
        _compose()["services"]["streamseq"]["stop_grace_period"][:-1])


def test_service_and_servicemonitor_select_the_pods() -> None:
    pod_labels = _one(_base(), "Deployment")["spec"]["template"]["metadata"]["labels"]
    svc = _one(_base(), "Service")
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    (port,) = svc["spec"]["ports"]
    assert port["name"] == "metrics" and port["targetPort"] == "metrics"
    mon = _one(_build(MONITORING), "ServiceMonitor")
    assert mon["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert [e["port"] for e in mon["spec"]["endpoints"]] == ["metrics"]
    assert mon["spec"]["endpoints"][0]["path"] == "/metrics"
    # job label = Service name; the alert rules select job="streamseq".
    assert svc["metadata"]["name"] == "streamseq"


def test_monitoring_objects() -> None:
    docs = _build(MONITORING)
    assert {d["kind"] for d in docs} == {"ServiceMonitor", "PrometheusRule", "ConfigMap"}
    dashboard = _one(docs, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = dashboard["data"].values()
    json.loads(text)


# ------------------------------------------------------------------ scale-out


def test_scale_out_runs_replicas_on_the_kafka_checkpoint_store() -> None:
    docs = _build(SCALE_OUT)
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"], "no shared volume"
    dep = _one(docs, "Deployment")
    assert dep["spec"]["replicas"] > 1 and dep["spec"]["strategy"]["type"] == "RollingUpdate"
    spec = dep["spec"]["template"]["spec"]
    assert "checkpoints" not in {v["name"] for v in spec["volumes"]}
    assert "checkpoints" not in {m["name"] for m in _container(dep)["volumeMounts"]}
    env = _env(dep)
    assert env["STREAMSEQ_CHECKPOINT_STORE"] == "kafka"
    assert "STREAMSEQ_CHECKPOINT_DIR" not in env
    topic = _yaml(SCALE_OUT / "kafkatopic.yaml")
    assert topic["kind"] == "KafkaTopic" and topic["metadata"]["name"] == env[
        "STREAMSEQ_CHECKPOINT_TOPIC"]
    assert topic["spec"]["config"]["cleanup.policy"] == "compact"
    assert spec["terminationGracePeriodSeconds"] > FINAL_CHECKPOINT_BUDGET_S["kafka"]
    # everything else as in the base
    base = {d["kind"] for d in _base()} - {"PersistentVolumeClaim"}
    assert {d["kind"] for d in docs} == base


def test_scale_out_config_loads_in_the_service(tmp_path: Path) -> None:
    from streamseq.service.config import load_config

    docs = _build(SCALE_OUT)
    path = tmp_path / "streamseq.toml"
    path.write_text(_one(docs, "ConfigMap")["data"]["streamseq.toml"])
    env = {k: v for k, v in _env(_one(docs, "Deployment")).items()
           if k.startswith("STREAMSEQ_")}
    config = load_config(path, env=env)
    assert config.checkpoint_store == "kafka"
    assert config.checkpoint_topic == env["STREAMSEQ_CHECKPOINT_TOPIC"]


# ------------------------------------------------------------------ configuration


def test_k8s_config_is_the_example_config() -> None:
    example = tomllib.loads(EXAMPLE_CONFIG.read_text())
    in_cluster = tomllib.loads(_config_map()["data"]["streamseq.toml"])

    def keys(d: dict[str, Any], prefix: str = "") -> set[str]:
        out = set()
        for k, v in d.items():
            out |= keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
        return out

    assert keys(in_cluster) == keys(example)
    differing = {k for k in example if example[k] != in_cluster[k]}
    assert differing <= {"bootstrap"}, differing


def test_example_config_loads_in_the_service() -> None:
    from streamseq.service.config import load_config
    from tests.unit.test_deploy_static import _rules

    config = load_config(EXAMPLE_CONFIG, env={})
    assert config.metrics_port == METRICS_PORT and config.metrics_host == "0.0.0.0"
    assert {(t.name, t.kind) for t in config.topics} == {("sensors", "sensor"),
                                                        ("prices", "price")}
    assert config.engine.model.cell in ("gru", "lstm")
    # StreamseqCheckpointStale (600 s) leaves room for several checkpoint intervals.
    stale = min(int(re.search(r"> (\d+)", r["expr"]).group(1)) for r in _rules()
                if r["alert"].startswith("StreamseqCheckpointStale"))
    assert config.checkpoint_every_seconds * 5 <= stale


def test_k8s_config_loads_in_the_service(tmp_path: Path) -> None:
    from streamseq.service.config import load_config

    path = tmp_path / "streamseq.toml"
    path.write_text(_config_map()["data"]["streamseq.toml"])
    in_cluster, example = load_config(path, env={}), load_config(EXAMPLE_CONFIG, env={})
    assert in_cluster.bootstrap != example.bootstrap
    assert in_cluster.checkpoint_dir == _env(_one(_base(), "Deployment"))[
        "STREAMSEQ_CHECKPOINT_DIR"]


def _env_of_dockerfile() -> dict[str, str]:
    import shlex

    out = {}
    for op, args in _dockerfile():
        if op == "ENV":
            for item in shlex.split(args):
                name, _, value = item.partition("=")
                out[name] = value
    return out


def test_every_streamseq_variable_is_read_by_the_service() -> None:
    """A STREAMSEQ_* variable the config loader ignores is a silent misconfiguration."""
    from streamseq.service.config import ServiceConfig, load_config

    fields = set(ServiceConfig.__dataclass_fields__) - {"engine", "security"}
    sources = {"Dockerfile": _env_of_dockerfile(), "k8s": _env(_one(_base(), "Deployment"))}
    if _kubectl():
        sources["k8s scale-out"] = _env(_one(_build(SCALE_OUT), "Deployment"))
    for name, svc in _compose()["services"].items():
        sources[f"compose {name}"] = {k: str(v) for k, v in
                                      (svc.get("environment") or {}).items()}
    for where, env in sources.items():
        for var in (v for v in env if v.startswith("STREAMSEQ_")):
            field = var[len("STREAMSEQ_"):].lower()
            assert field in fields | {"config", "topics"} or field.startswith("security_"), (
                f"{where}: {var} is not read by streamseq.service.config")
    app_env = sources["compose streamseq"]
    config = load_config(env={k: v for k, v in app_env.items() if k != "STREAMSEQ_CONFIG"})
    assert config.metrics_port == METRICS_PORT
