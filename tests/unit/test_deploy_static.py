"""Static checks of deploy/: Prometheus rules and config (promtool), Grafana JSON and
provisioning, docker-compose, the Dockerfile and the dependency pins, each checked against
the others and against the metrics the service really exposes (``streamseq.metrics``).
The monitoring mixin is checked in test_mixin.py, the Kubernetes manifests in
test_deploy_k8s.py.

Docker cannot run here, so the compose stack is checked by reading it: every mounted file
exists, every host:port it names agrees with the service, Prometheus and Grafana settings.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from streamseq.metrics import ServiceMetrics
from tests.integration import prom

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
DOCKERIGNORE = ROOT / ".dockerignore"
CONSTRAINTS = ROOT / "constraints.txt"
K8S = DEPLOY / "k8s"
EXAMPLE_CONFIG = DEPLOY / "config" / "streamseq.toml"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
METRICS_PORT = 9400  # docs/CONTRACTS.md
SEVERITIES = {"critical", "warning", "info"}
TARGET_LABELS = {"job", "instance"}
GRAFANA_BUILTIN_VARS = {"__rate_interval", "__interval", "__range", "__interval_ms",
                        "__range_s", "__range_ms", "__dashboard", "__from", "__to", "__all"}


PENDING_METRICS: dict[str, set[str]] = prom.PENDING_METRICS


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
    """Dashboards use exposed metrics only; alerts may also watch the agreed pending ones."""
    known = {**EXPOSED, **(PENDING_METRICS if expression.source == "alert" else {})}
    selectors = prom.promql_selectors(prom.substitute_grafana_variables(expression.expr))
    assert selectors, f"no metric found in {expression.expr!r}"
    for name, matchers in selectors:
        assert name in known, (f"{expression.name}: metric {name!r} is not exposed by "
                               f"ServiceMetrics (nor is it 'up')")
        allowed = known[name] | TARGET_LABELS
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


def test_pending_metrics_are_not_exposed_yet() -> None:
    """Once the service exposes a pending metric, it leaves PENDING_METRICS (and its labels
    must be the agreed ones)."""
    for name, labels in PENDING_METRICS.items():
        assert name not in EXPOSED, (f"{name} is exposed now: check its labels "
                                     f"{sorted(EXPOSED[name])} == {sorted(labels)} and remove "
                                     "it from PENDING_METRICS")
        assert name.startswith("streamseq_") and name.endswith("_total"), name


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
        assert set(notes) == {"summary", "description", "runbook_url"}, name
        assert notes["summary"] and notes["description"], name
        doc, _, anchor = notes["runbook_url"].partition("#")
        assert doc == "docs/deploy.md", f"{name}: {notes['runbook_url']}"
        assert anchor == name.lower() and anchor in anchors, f"{name}: no runbook section"


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
    rule = _yaml(K8S / "monitoring" / "prometheusrule.yaml")
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"] == _yaml(ALERTS), "prometheusrule.yaml differs from alerts.yml"


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
    inputs = {i["name"] for i in dash.get("__inputs", [])}  # filled in by an import
    used = set(re.findall(r"\$\{?(\w+)", text)) - GRAFANA_BUILTIN_VARS - inputs
    assert used <= defined, f"undefined variables {sorted(used - defined)}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_datasource_is_a_variable(path: Path) -> None:
    """No hard-coded datasource: every query goes through the ``datasource`` variable, whose
    value an import fills from the ``DS_PROMETHEUS`` input (``__inputs``); provisioned, the
    variable falls back to the default Prometheus datasource."""
    dash = json.loads(path.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds_var = variables["datasource"]
    assert ds_var["type"] == "datasource" and ds_var["query"] == "prometheus"
    assert dash["templating"]["list"][0] is ds_var, "the datasource variable comes first"
    (ds_input,) = dash["__inputs"]
    assert ds_input["type"] == "datasource" and ds_input["pluginId"] == "prometheus"
    assert ds_var["current"]["value"] == "${" + ds_input["name"] + "}"
    required = {(r["type"], r["id"]) for r in dash["__requires"]}
    assert {("grafana", "grafana"), ("datasource", "prometheus")} <= required
    panel_types = {p["type"] for p in _all_panels(dash["panels"])} - {"row"}
    assert {("panel", t) for t in panel_types} <= required
    refs = list(_walk_datasources(dash))
    assert refs
    for where, ref in refs:
        if isinstance(ref, dict) and ref.get("type") == "grafana":
            continue  # Grafana's built-in annotations
        assert ref == {"type": "prometheus", "uid": "${datasource}"}, f"{where}: {ref}"
    assert _datasource()["uid"] not in path.read_text(), "the provisioned uid is hard-coded"


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
                   "process_resident_memory_bytes", 'forecaster="mixture"',
                   "streamseq_interval_coverage{", "streamseq_interval_width{",
                   "streamseq_anomalies_total"]:
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
    return {container: host for _, host, container in _port_bindings(service)}


def _port_bindings(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """``(host address, host port, container port)`` of each published port ("" = all
    interfaces)."""
    out = []
    for spec in service.get("ports", []):
        *address, host, container = str(spec).split(":")
        out.append((":".join(address), int(host), int(container.split("/")[0])))
    return out


def test_compose_publishes_ports_on_loopback_only() -> None:
    """An unauthenticated broker and Grafana's default password stay off the network."""
    published = [(name, b) for name, svc in _compose()["services"].items()
                 for b in _port_bindings(svc)]
    assert published
    for name, (address, _, _) in published:
        assert address == "127.0.0.1", f"{name} publishes on {address or 'every interface'}"


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
    created |= set(re.findall(r"--topic ([\w-]+)", init))
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


def _topic_configs(command: str, topic: str) -> dict[str, str]:
    """The ``--config k=v`` of the kafka-topics.sh call that creates ``topic``."""
    for call in command.split("kafka-topics.sh")[1:]:
        if re.search(rf"--topic {re.escape(topic)}\b", call):
            return dict(kv.split("=", 1) for kv in re.findall(r"--config (\S+)", call))
    raise AssertionError(f"{topic} is not created")


def test_compose_checkpoint_topic_is_compacted_like_the_k8s_one() -> None:
    """The service keeps its snapshots in Kafka; the topic is compacted (retention would
    delete an idle partition's state) with the settings of deploy/k8s/scale-out."""
    services = _compose()["services"]
    env = services["streamseq"]["environment"]
    assert env["STREAMSEQ_CHECKPOINT_STORE"] == "kafka"
    topic = env["STREAMSEQ_CHECKPOINT_TOPIC"]
    configs = _topic_configs(" ".join(services["kafka-init"]["command"]), topic)
    kafka_topic = _yaml(K8S / "scale-out" / "kafkatopic.yaml")
    assert kafka_topic["metadata"]["name"] == topic and kafka_topic["spec"]["partitions"] == 1
    k8s = {k: str(v) for k, v in kafka_topic["spec"]["config"].items()}
    assert configs["cleanup.policy"] == k8s["cleanup.policy"] == "compact"
    assert {k: v for k, v in k8s.items() if k != "min.insync.replicas"} == configs


def test_compose_stop_grace_covers_the_final_checkpoint() -> None:
    """SIGTERM -> final checkpoint; with the Kafka store its worst case is ~165 s
    (test_deploy_k8s.FINAL_CHECKPOINT_BUDGET_S)."""
    grace = _compose()["services"]["streamseq"]["stop_grace_period"]
    assert re.fullmatch(r"\d+s", grace) and int(grace[:-1]) >= 180, grace


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
    assert steps[0] == ("FROM", "python:3.11-slim-bookworm")
    runs = " ".join(a for op, a in steps if op == "RUN")
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in runs
    assert runs.index("torch==2.13.0") < runs.index("pip install --no-deps .")
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


def test_dockerfile_layers_dependencies_before_the_code() -> None:
    """Dependencies (pinned by constraints.txt) are installed before any code is copied, and
    the code without resolving dependencies: a code change rebuilds only the code layers."""
    steps = _dockerfile()
    copies = [(i, shlex.split(a)[:-1]) for i, (op, a) in enumerate(steps) if op == "COPY"]
    code_copy = min(i for i, srcs in copies if {"streamseq", "simulators"} & set(srcs))
    deps_copy = [i for i, srcs in copies if "constraints.txt" in srcs]
    assert deps_copy and deps_copy[0] < code_copy
    assert set(copies[0][1]) == {"pyproject.toml", "constraints.txt"}
    deps_run = [a for i, (op, a) in enumerate(steps) if op == "RUN" and deps_copy[0] < i
                < code_copy]
    assert len(deps_run) == 1 and "-c constraints.txt" in deps_run[0]
    code_runs = [a for i, (op, a) in enumerate(steps) if op == "RUN" and i > code_copy]
    assert any("pip install --no-deps ." in a for a in code_runs)
    assert not any(re.search(r"pip install (?!--no-deps)", a) for a in code_runs)


def test_dockerfile_dependency_listing_reads_pyproject(tmp_path: Path) -> None:
    """The RUN that lists pyproject's dependencies for pip, run here on the real file."""
    (deps_run,) = [a for op, a in _dockerfile() if op == "RUN" and "tomllib" in a]
    m = re.search(r'python -c "(.*?)"\s*>\s*(\S+)', deps_run)
    assert m, deps_run
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    out = subprocess.run([sys.executable, "-c", m.group(1)], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout.split("\n")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert [line for line in out if line] == declared


def test_dockerfile_oci_labels() -> None:
    labels = dict(shlex.split(kv)[0].split("=", 1) for op, a in _dockerfile() if op == "LABEL"
                  for kv in re.findall(r'\S+="[^"]*"', a))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    prefix = "org.opencontainers.image."
    assert {prefix + k for k in ("title", "description", "licenses", "version", "revision",
                                 "created", "base.name")} <= set(labels)
    assert labels[prefix + "licenses"] == project["license"]
    args = {a.split("=")[0]: a.split("=", 1)[1] for op, a in _dockerfile() if op == "ARG"}
    assert args["VERSION"] == project["version"] and labels[prefix + "version"] == "${VERSION}"
    # labels last: a new revision must not invalidate the dependency layers
    ops = [op for op, _ in _dockerfile()]
    assert ops.index("ARG") > max(i for i, op in enumerate(ops) if op in ("RUN", "COPY"))


def test_dockerfile_copies_files_that_exist_and_are_not_ignored() -> None:
    """Copied paths exist and pass the root .dockerignore (an allow-list: ``**`` first)."""
    assert not (DOCKERFILE.parent / "Dockerfile.dockerignore").exists(), "one ignore file"
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert patterns[0] == "**", "the .dockerignore is an allow-list"
    allowed = {p[1:].split("/")[0] for p in patterns if p.startswith("!")}
    for op, args in _dockerfile():
        if op == "COPY":
            *sources, _dest = shlex.split(args)
            for src in sources:
                if src.startswith("--"):
                    continue
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
                assert src.rstrip("/") in allowed, f"COPY {src}: excluded by .dockerignore"


# ------------------------------------------------------------------ dependency pins


def _pins() -> dict[str, str]:
    """constraints.txt as canonical name -> pinned version."""
    from packaging.utils import canonicalize_name

    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


def test_constraints_pin_every_declared_dependency_within_its_range() -> None:
    """Runtime and dev dependencies of pyproject.toml are pinned, each inside the range
    pyproject.toml allows (kafka-python cannot float to another major version)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins()
    declared = [Requirement(r) for r in project["dependencies"]]
    declared += [Requirement(r) for extra in project["optional-dependencies"].values()
                 for r in extra]
    for req in declared:
        if req.marker is not None and not req.marker.evaluate({"python_version": "3.11"}):
            continue  # e.g. tomli, for Python 3.10 only
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in constraints.txt (make lock)"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{req.name}=={pins[name]} is outside pyproject.toml's {req.specifier}")
    kafka = next(r for r in declared if canonicalize_name(r.name) == "kafka-python")
    assert not kafka.specifier.contains("4.0.0"), "kafka-python needs an upper bound"


def test_constraints_pin_the_whole_runtime_closure() -> None:
    """Every package the service needs at run time, transitively, is pinned: an image built
    with constraints.txt resolves nothing that was not tested."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = _pins()
    env = {"python_version": "3.11", "extra": ""}
    todo = [Requirement(r) for r in
            tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate(env)):
            continue
        seen.add(name)
        assert name in pins, f"{req.name} (needed at run time) is not pinned"
        try:
            todo += [Requirement(r) for r in distribution(req.name).requires or []]
        except PackageNotFoundError:
            pytest.fail(f"{req.name} is pinned but not installed here: run make setup")
    assert {"torch", "kafka-python", "numpy"} <= seen
