"""Static checks of deploy/: Prometheus rules and config (promtool), Grafana JSON and
provisioning, docker-compose, Dockerfile and Kubernetes manifests, each checked against the
others and against the metrics the service really exposes (``streamseq.metrics``).

Docker cannot run here, so the compose stack is checked by reading it: every mounted file
exists, every host:port it names agrees with the service, Prometheus and Grafana settings.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import tomllib
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from streamseq.metrics import ServiceMetrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROM_DIR = DEPLOY / "prometheus"
ALERTS = PROM_DIR / "alerts.yml"
DASHBOARD_DIR = DEPLOY / "grafana" / "dashboards"
DASHBOARDS = sorted(DASHBOARD_DIR.glob("*.json"))
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "streamseq.yml"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S = DEPLOY / "k8s"
EXAMPLE_CONFIG = DEPLOY / "config" / "streamseq.toml"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
METRICS_PORT = 9400  # docs/CONTRACTS.md
SEVERITIES = {"critical", "warning", "info"}
TARGET_LABELS = {"job", "instance"}
GRAFANA_BUILTIN_VARS = {"__rate_interval", "__interval", "__range", "__interval_ms",
                        "__range_s", "__range_ms", "__dashboard", "__from", "__to", "__all"}


def _load_prom() -> ModuleType:
    """tests/integration/prom.py (the PromQL helpers), imported by path."""
    path = ROOT / "tests" / "integration" / "prom.py"
    spec = importlib.util.spec_from_file_location("streamseq_tests_prom", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


prom = _load_prom()


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _yaml_all(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# ------------------------------------------------------------------ promtool


def _promtool() -> str:
    path = shutil.which("promtool")
    if path:
        return path
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail("promtool is missing in CI: .ci/run must install the prometheus package")
    pytest.skip("promtool not installed (apt-get install prometheus); CI installs it")


def _run_promtool(*args: str) -> None:
    proc = subprocess.run([_promtool(), *args], cwd=PROM_DIR, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"


def test_promtool_check_rules() -> None:
    _run_promtool("check", "rules", "alerts.yml")


def test_promtool_check_config() -> None:
    _run_promtool("check", "config", "prometheus.yml")


def test_promtool_rule_unit_tests() -> None:
    """deploy/prometheus/alerts_test.yml: every alert fires on its failure, none when healthy."""
    _run_promtool("test", "rules", "alerts_test.yml")


def test_every_alert_has_a_promtool_unit_test() -> None:
    tests = _yaml(PROM_DIR / "alerts_test.yml")["tests"]
    tested = {case["alertname"] for t in tests for case in t.get("alert_rule_test", [])
              if case.get("exp_alerts")}
    alerts = {e.name for e in prom.alert_expressions(ALERTS)}
    assert alerts - tested == set(), "alerts never shown to fire in alerts_test.yml"


# ------------------------------------------------------------------ the metric set


def exposed_metrics() -> dict[str, set[str]]:
    """Sample name -> label names, as ServiceMetrics renders them once every labelled metric
    has a child (a labelled metric without children renders nothing)."""
    m = ServiceMetrics(version="0.0.0", cell="gru", hidden=8)
    for attr in vars(m).values():
        if isinstance(attr, MetricWrapperBase):
            # No public API lists a wrapper's label names; _labelnames is stable since 0.4.
            names = attr._labelnames
            if names:
                attr.labels(**{n: "x" for n in names})
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    out["up"] = set()  # synthesised by Prometheus for every target
    return out


EXPOSED = exposed_metrics()


def _all_expressions() -> list[Any]:
    exprs = prom.alert_expressions(ALERTS)
    for path in DASHBOARDS:
        exprs += prom.dashboard_expressions(path)
    return exprs


def _template_queries(dash: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(variable, metric selector, label) of each label_values() template variable."""
    for var in dash.get("templating", {}).get("list", []):
        query = var.get("query")
        text = query.get("query", "") if isinstance(query, dict) else (query or "")
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", text)
        if m:
            yield var["name"], m.group(1), m.group(2)


def test_exposed_metric_set_follows_the_naming_convention() -> None:
    for name in EXPOSED:
        if name.startswith(("process_", "python_")) or name == "up":
            continue
        assert name.startswith("streamseq_"), name
        assert "key" not in EXPOSED[name], f"{name}: a per-key label explodes cardinality"


@pytest.mark.parametrize("expression", _all_expressions(), ids=lambda e: f"{e.source}:{e.name}")
def test_expression_uses_only_exposed_metrics_and_labels(expression: Any) -> None:
    selectors = prom.promql_selectors(prom.substitute_grafana_variables(expression.expr))
    assert selectors, f"no metric found in {expression.expr!r}"
    for name, matchers in selectors:
        assert name in EXPOSED, (f"{expression.name}: metric {name!r} is not exposed by "
                                 f"ServiceMetrics (nor is it 'up')")
        allowed = EXPOSED[name] | TARGET_LABELS
        unknown = set(matchers) - allowed
        assert not unknown, f"{expression.name}: {name} has no label(s) {sorted(unknown)}"


def test_template_variables_use_exposed_metrics() -> None:
    for path in DASHBOARDS:
        for var, selector, label in _template_queries(json.loads(path.read_text())):
            for name, matchers in prom.promql_selectors(
                    prom.substitute_grafana_variables(selector)):
                assert name in EXPOSED, f"{path.name} ${var}: unknown metric {name}"
                assert label in EXPOSED[name] | TARGET_LABELS, f"{path.name} ${var}: {label}"
                assert set(matchers) <= EXPOSED[name] | TARGET_LABELS


def test_metrics_doc_lists_every_metric() -> None:
    doc = (ROOT / "README.md").read_text()
    families = set()
    for name in EXPOSED:
        if name.startswith("streamseq_") or name.startswith("process_"):
            families.add(re.sub(r"_(bucket|sum|count)$", "", name))
    missing = sorted(f for f in families if f"`{f}" not in doc)
    assert not missing, f"README.md does not document {missing}"


# ------------------------------------------------------------------ alert rules


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _yaml(ALERTS)["groups"] for rule in group["rules"]]


def _doc_anchors(path: Path) -> set[str]:
    """GitHub-style anchors of the markdown headings of ``path``."""
    anchors = set()
    for line in path.read_text().splitlines():
        m = re.match(r"#+\s+(.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


def test_alert_rules_are_complete() -> None:
    rules = _rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    anchors = _doc_anchors(DEPLOY_DOC)
    for rule in rules:
        name = rule["alert"]
        assert name.startswith("Streamseq"), name
        assert "for" in rule, f"{name}: give it a for: duration, even 0m"
        assert rule["labels"]["severity"] in SEVERITIES, name
        notes = rule["annotations"]
        assert notes.get("summary") and notes.get("description"), name
        doc, _, anchor = notes["runbook"].partition("#")
        assert doc == "docs/deploy.md" and anchor in anchors, f"{name}: runbook {anchor!r}"


def test_required_alerts_exist() -> None:
    exprs = {r["alert"]: r["expr"] for r in _rules()}
    wanted = {
        "StreamseqDown": "up{",
        "StreamseqNoEventsConsumed": "streamseq_events_consumed_total",
        "StreamseqConsumerLagGrowing": "streamseq_consumer_lag_messages",
        "StreamseqModelWorseThanPersistence": 'forecaster="persistence"',
        "StreamseqNonFiniteUpdates": 'outcome="skipped_nonfinite"',
        "StreamseqCheckpointStale": "streamseq_checkpoint_age_seconds",
        "StreamseqDeadLettersSpiking": "streamseq_dead_letters_total",
        "StreamseqBrokerDisconnected": "streamseq_broker_connected",
    }
    for name, needle in wanted.items():
        assert needle in exprs.get(name, ""), f"{name} missing or not using {needle}"


def test_prometheusrule_is_alerts_yml() -> None:
    rule = _yaml(K8S / "prometheusrule.yaml")
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"] == _yaml(ALERTS), "k8s/prometheusrule.yaml differs from alerts.yml"


# ------------------------------------------------------------------ Grafana


def _datasource() -> dict[str, Any]:
    (ds,) = _yaml(DATASOURCES)["datasources"]
    return dict(ds)


def _walk_datasources(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield where, value
            yield from _walk_datasources(value, f"{where}/{node.get('title', key)}")
    elif isinstance(node, list):
        for item in node:
            yield from _walk_datasources(item, where)


def _all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _all_panels(panel.get("panels", []))


def test_dashboards_exist() -> None:
    assert [p.name for p in DASHBOARDS] == ["streamseq.json"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_valid_grafana_json(path: Path) -> None:
    dash = json.loads(path.read_text())
    assert isinstance(dash.get("schemaVersion"), int) and 36 <= dash["schemaVersion"] <= 41
    assert dash.get("uid") and len(dash["uid"]) <= 40 and dash.get("title")
    assert "id" not in dash or dash["id"] is None, "a provisioned dashboard has no fixed id"
    panels = list(_all_panels(dash["panels"]))
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids)), ids
    cells: dict[tuple[int, int], int] = {}
    for p in panels:
        assert p.get("type") and p.get("title"), p.get("id")
        g = p["gridPos"]
        assert g["w"] >= 1 and g["h"] >= 1 and g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                other = cells.setdefault((x, y), p["id"])
                assert other == p["id"], f"panels {other} and {p['id']} overlap at {x},{y}"
        refs = [t["refId"] for t in p.get("targets", [])]
        assert len(refs) == len(set(refs)), f"{p['title']}: duplicate refId"
        if p["type"] != "row":
            assert p.get("targets"), f"{p['title']} has no query"
    defined = {v["name"] for v in dash["templating"]["list"]}
    assert {"instance", "kind"} <= defined
    text = path.read_text()
    used = set(re.findall(r"\$\{?(\w+)", text)) - GRAFANA_BUILTIN_VARS
    assert used <= defined, f"undefined variables {sorted(used - defined)}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_datasources_are_the_provisioned_one(path: Path) -> None:
    uid = _datasource()["uid"]
    refs = list(_walk_datasources(json.loads(path.read_text())))
    assert refs
    for where, ref in refs:
        if isinstance(ref, dict) and ref.get("type") == "grafana":
            continue  # Grafana's built-in annotations
        assert isinstance(ref, dict), f"{where}: datasource by name {ref!r}; use {{'uid': ...}}"
        assert ref.get("uid") == uid and ref.get("type") == "prometheus", f"{where}: {ref}"


def test_dashboard_covers_the_issue() -> None:
    """The panels the issue asks for are all there."""
    exprs = " ".join(e.expr for e in prom.dashboard_expressions(DASHBOARDS[0]))
    for needle in ["streamseq_events_consumed_total", "streamseq_predictions_published_total",
                   "sum by (topic, reason) (rate(streamseq_events_rejected_total",
                   "histogram_quantile(0.5,", "histogram_quantile(0.95,",
                   "histogram_quantile(0.99,", "streamseq_event_to_prediction_seconds_bucket",
                   "sum by (topic, partition) (streamseq_consumer_lag_messages",
                   'forecaster="persistence"', "streamseq_forecast_abs_error_total",
                   "streamseq_mae{", "streamseq_train_loss", "streamseq_grad_norm",
                   "streamseq_updates_total", "streamseq_drift_events_total",
                   "streamseq_keys_held", "streamseq_checkpoint_age_seconds",
                   "streamseq_checkpoint_duration_seconds_bucket", "process_cpu_seconds_total",
                   "process_resident_memory_bytes"]:
        assert needle in exprs, needle


def test_grafana_provisioning() -> None:
    ds = _datasource()
    assert ds["type"] == "prometheus" and ds["access"] == "proxy" and ds.get("isDefault")
    assert ds["jsonData"]["timeInterval"] == _yaml(PROM_DIR / "prometheus.yml")["global"][
        "scrape_interval"], "timeInterval must equal the scrape interval"
    (provider,) = _yaml(PROVIDERS)["providers"]
    assert provider["type"] == "file"


# ------------------------------------------------------------------ docker-compose


def _compose() -> dict[str, Any]:
    doc = _yaml(COMPOSE)
    assert isinstance(doc, dict) and doc.get("services")
    return doc


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of the bind mounts (named volumes skipped)."""
    out = {}
    for volume in service.get("volumes", []):
        src, dst = volume.split(":")[:2]
        if src.startswith((".", "/")):
            out[dst] = (COMPOSE.parent / src).resolve()
    return out


def _container_file(service: dict[str, Any], container_path: str) -> Path | None:
    """The host file that ``container_path`` resolves to through the service's bind mounts."""
    for dst, src in sorted(_mounts(service).items(), key=lambda kv: -len(kv[0])):
        if container_path == dst:
            return src
        if container_path.startswith(dst.rstrip("/") + "/"):
            return src / container_path[len(dst.rstrip("/")) + 1:]
    return None


def _ports(service: dict[str, Any]) -> dict[int, int]:
    """Container port -> host port."""
    out = {}
    for spec in service.get("ports", []):
        host, _, container = str(spec).rpartition(":")
        out[int(container.split("/")[0])] = int(host)
    return out


def _flag(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def test_compose_services_images_and_dependencies() -> None:
    services = _compose()["services"]
    assert {"kafka", "kafka-init", "streamseq", "prometheus", "grafana", "simulator-sensors",
            "simulator-prices"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    for name, svc in services.items():
        image = svc.get("image", "")
        assert image and ":" in image and not image.endswith(":latest"), f"{name}: pin {image}"
        for dep in svc.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown {dep}"
    # The service and the simulators are one image built from deploy/Dockerfile.
    app = services["streamseq"]
    build = app["build"]
    assert (COMPOSE.parent / build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE
    for name in ("simulator-sensors", "simulator-prices"):
        sim = services[name]
        assert sim["image"] == app["image"]
        assert sim["entrypoint"][:2] == ["streamseq", "simulate"]
        assert sim["healthcheck"] == {"disable": True}, f"{name} serves no /healthz"
        assert sim["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert app["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert services["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["kafka"].get("healthcheck")


def test_compose_mounts_exist() -> None:
    services = _compose()["services"]
    named = set(_compose().get("volumes") or {})
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            src = volume.split(":")[0]
            if src.startswith((".", "/")):
                assert (COMPOSE.parent / src).exists(), f"{name}: {src} does not exist"
            else:
                assert src in named, f"{name}: named volume {src} not declared"


def test_compose_prometheus_uses_our_config_and_rules() -> None:
    services = _compose()["services"]
    svc = services["prometheus"]
    config_path = _flag(svc["command"], "--config.file")
    assert config_path and _container_file(svc, config_path) == PROM_DIR / "prometheus.yml"
    config = _yaml(PROM_DIR / "prometheus.yml")
    for rule_file in config["rule_files"]:
        in_container = str(Path(config_path).parent / rule_file)
        assert _container_file(svc, in_container) == PROM_DIR / rule_file, rule_file
    assert 9090 in _ports(svc)
    # The scrape target is the streamseq service on its metrics port.
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "streamseq"]
    (target,) = [t for sc in job["static_configs"] for t in sc["targets"]]
    host, port = target.split(":")
    assert host in services and host == "streamseq"
    app = services["streamseq"]
    assert int(port) == METRICS_PORT == int(app["environment"]["STREAMSEQ_METRICS_PORT"])
    assert METRICS_PORT in _ports(app)
    assert job.get("metrics_path", "/metrics") == "/metrics"
    # alerts select job="streamseq"
    assert all('job="streamseq"' in r["expr"] for r in _rules() if "up{" in r["expr"])


def test_compose_grafana_is_provisioned_with_our_files() -> None:
    services = _compose()["services"]
    svc = services["grafana"]
    assert _container_file(svc, "/etc/grafana/provisioning/datasources/prometheus.yml") \
        == DATASOURCES
    assert _container_file(svc, "/etc/grafana/provisioning/dashboards/streamseq.yml") \
        == PROVIDERS
    (provider,) = _yaml(PROVIDERS)["providers"]
    assert _container_file(svc, provider["options"]["path"]) == DASHBOARD_DIR
    home = svc["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    assert home and _container_file(svc, home) == DASHBOARD_DIR / "streamseq.json"
    # The datasource URL reaches the prometheus service on its port.
    url = _datasource()["url"]
    m = re.fullmatch(r"http://([\w.-]+):(\d+)", url)
    assert m and m.group(1) in services and m.group(1) == "prometheus", url
    assert int(m.group(2)) in _ports(services["prometheus"])
    assert 3000 in _ports(svc)


def test_compose_kafka_topics_and_bootstrap_agree() -> None:
    services = _compose()["services"]
    kafka_env = services["kafka"]["environment"]
    advertised = kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    internal = re.search(r"PLAINTEXT://([\w.-]+:\d+)", advertised)
    assert internal, advertised
    bootstrap = internal.group(1)
    assert bootstrap.split(":")[0] in services
    env = services["streamseq"]["environment"]
    assert env["STREAMSEQ_BOOTSTRAP"] == bootstrap
    init = " ".join(services["kafka-init"]["command"])
    assert f"--bootstrap-server {bootstrap}" in init
    created = set(re.findall(r"([\w-]+):\d+", init.split("for spec in", 1)[1].split(";")[0]))
    needed = {env[k] for k in env if k.endswith("_TOPIC")}
    if "STREAMSEQ_TOPICS" in env:
        needed |= {spec.split(":")[0] for spec in env["STREAMSEQ_TOPICS"].split(",")}
    needed |= {t["name"] for t in tomllib.loads(EXAMPLE_CONFIG.read_text())["topics"]}
    for name in ("simulator-sensors", "simulator-prices"):
        argv = services[name]["command"]
        assert _flag(argv, "--bootstrap") == bootstrap
        needed.add(_flag(argv, "--topic") or "")
    assert needed <= created, f"topics not created: {sorted(needed - created)}"
    # The config file the service is given is mounted.
    config = env["STREAMSEQ_CONFIG"]
    assert _container_file(services["streamseq"], config) == EXAMPLE_CONFIG


# ------------------------------------------------------------------ Dockerfile


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, args = line.partition(" ")
            out.append((op.upper(), args.strip()))
    return out


def test_dockerfile() -> None:
    steps = _dockerfile()
    ops = [op for op, _ in steps]
    assert steps[0] == ("FROM", "python:3.11-slim")
    runs = " ".join(a for op, a in steps if op == "RUN")
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in runs
    assert runs.index("torch==2.13.0") < runs.index("pip install .")
    user = [a for op, a in steps if op == "USER"][-1]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) > 0, "numeric non-root USER (runAsNonRoot checks it)"
    assert ops.index("USER") > max(i for i, op in enumerate(ops) if op == "RUN")
    (expose,) = [a for op, a in steps if op == "EXPOSE"]
    assert expose.split() == [str(METRICS_PORT)]
    (health,) = [a for op, a in steps if op == "HEALTHCHECK"]
    assert "/healthz" in health and "CMD" in health
    (entry,) = [a for op, a in steps if op == "ENTRYPOINT"]
    assert json.loads(entry) == ["streamseq", "run"]
    env = " ".join(a for op, a in steps if op == "ENV")
    assert f"STREAMSEQ_METRICS_PORT={METRICS_PORT}" in env


def test_dockerfile_copies_files_that_exist_and_are_not_ignored() -> None:
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    allowed = {p[1:].split("/")[0] for p in ignore if p.startswith("!")}
    for op, args in _dockerfile():
        if op == "COPY":
            *sources, _dest = shlex.split(args)
            for src in sources:
                if src.startswith("--"):
                    continue
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
                assert src.rstrip("/") in allowed, f"COPY {src}: excluded by .dockerignore"


# ------------------------------------------------------------------ Kubernetes


def _k8s() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in _yaml_all(path):
            if doc["kind"] != "Kustomization":
                docs[doc["kind"]] = doc
    return docs


def test_k8s_deployment() -> None:
    k = _k8s()
    dep = k["Deployment"]
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    docker_uid = [a for op, a in _dockerfile() if op == "USER"][-1].split(":")[0]
    assert str(spec["securityContext"]["runAsUser"]) == docker_uid
    (container,) = spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": METRICS_PORT}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ("metrics", METRICS_PORT)
    res = container["resources"]
    assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"])
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    notes = pod["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert int(notes["prometheus.io/port"]) == METRICS_PORT
    # The config file passed to the service is the mounted ConfigMap key.
    config_path = _flag(container["args"], "--config")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    cm = k["ConfigMap"]
    assert volumes["config"]["configMap"]["name"] == cm["metadata"]["name"]
    assert config_path == f"{mounts['config']}/streamseq.toml"
    assert "streamseq.toml" in cm["data"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["STREAMSEQ_CHECKPOINT_DIR"] == mounts["checkpoints"]
    claim = volumes["checkpoints"]["persistentVolumeClaim"]["claimName"]
    assert claim == k["PersistentVolumeClaim"]["metadata"]["name"]


def test_k8s_service_and_servicemonitor_select_the_pods() -> None:
    k = _k8s()
    pod_labels = k["Deployment"]["spec"]["template"]["metadata"]["labels"]
    svc = k["Service"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    (port,) = svc["spec"]["ports"]
    assert port["name"] == "metrics" and port["targetPort"] == "metrics"
    mon = k["ServiceMonitor"]
    assert mon["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert [e["port"] for e in mon["spec"]["endpoints"]] == ["metrics"]
    assert mon["spec"]["endpoints"][0]["path"] == "/metrics"
    # job label = Service name; the alert rules select job="streamseq".
    assert svc["metadata"]["name"] == "streamseq"


def test_k8s_kustomization_lists_existing_files() -> None:
    kust = _yaml(K8S / "kustomization.yaml")
    for resource in kust["resources"]:
        assert (K8S / resource).exists(), resource
    namespaces = {d["metadata"].get("namespace") for d in _k8s().values()
                  if d["kind"] != "Namespace"}
    assert namespaces == {kust["namespace"]}


def test_k8s_config_is_the_example_config() -> None:
    example = tomllib.loads(EXAMPLE_CONFIG.read_text())
    in_cluster = tomllib.loads(_k8s()["ConfigMap"]["data"]["streamseq.toml"])

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
    path.write_text(_k8s()["ConfigMap"]["data"]["streamseq.toml"])
    in_cluster, example = load_config(path, env={}), load_config(EXAMPLE_CONFIG, env={})
    assert in_cluster.bootstrap != example.bootstrap
    assert in_cluster.checkpoint_dir == _env_of_k8s()["STREAMSEQ_CHECKPOINT_DIR"]


def _env_of_k8s() -> dict[str, str]:
    (container,) = _k8s()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def _env_of_dockerfile() -> dict[str, str]:
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
    sources = {"Dockerfile": _env_of_dockerfile(), "k8s": _env_of_k8s()}
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
