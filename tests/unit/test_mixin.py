"""The monitoring mixin (deploy/mixin/build.py): the committed rule files, PrometheusRule and
dashboard ConfigMap are its output with the default configuration, and another
configuration (selector, runbook location, thresholds) gives valid rules that use it
everywhere and keep every target label."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.unit.test_deploy_static import ALERTS, ROOT, _promtool, prom

DEFAULT_SELECTOR = 'job="streamseq"'


mixin = prom.load_mixin()


def test_committed_files_are_the_mixin_output() -> None:
    places = {mixin.ALERTS.name: mixin.ALERTS, mixin.PROMETHEUS_RULE.name: mixin.PROMETHEUS_RULE,
              mixin.DASHBOARD_CONFIGMAP.name: mixin.DASHBOARD_CONFIGMAP}
    for name, text in mixin.outputs(mixin.MixinConfig()).items():
        assert places[name].read_text() == text, (
            f"{places[name].relative_to(ROOT)} is stale: run python deploy/mixin/build.py")


def test_rendered_rules_are_the_yaml_they_mean() -> None:
    """The hand-written emitter: block scalars, quoting and folding round-trip exactly."""
    config = mixin.MixinConfig()
    doc = yaml.safe_load(mixin.render_alerts(config))
    rules = [r for g in doc["groups"] for r in g["rules"]]
    want = [r for _, group in mixin.groups(config) for r in group]
    assert [r["alert"] for r in rules] == [r.alert for r in want]
    for got, rule in zip(rules, want, strict=True):
        assert got["expr"].strip() == rule.expr
        assert got["for"] == rule.for_ and got["labels"] == {"severity": rule.severity}
        assert got["annotations"]["summary"] == rule.summary
        assert got["annotations"]["description"] == rule.description


def _selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    return prom.promql_selectors(expr)


def test_every_series_is_picked_by_the_selector() -> None:
    for e in prom.alert_expressions(ALERTS):
        for name, matchers in _selectors(e.expr):
            assert matchers.get("job") == '="streamseq"', f"{e.name}: {name} {matchers}"


def test_aggregations_keep_the_target_labels() -> None:
    """Per-target alerts drop only streamseq's labels (without), group-level ones keep
    cluster, namespace and job; no on()/by() throws namespace, pod or cluster away."""
    config = mixin.MixinConfig()
    group = {label.strip() for label in config.group_labels.split(",")}
    assert group == {"cluster", "namespace", "job"}
    own = {"topic", "kind", "partition", "reason", "forecaster", "outcome", "le", "window"}
    for e in prom.alert_expressions(ALERTS):
        for clause, labels in re.findall(r"\b(by|without|on|ignoring)\s*\(([^)]*)\)", e.expr):
            names = {n.strip() for n in labels.split(",") if n.strip()}
            if clause == "by":
                assert names == group, f"{e.name}: by ({labels})"
            elif clause in ("without", "ignoring"):
                assert names <= own, f"{e.name}: {clause} ({labels}) drops a target label"
            else:
                pytest.fail(f"{e.name}: on ({labels}) matches on a fixed label list")


def test_a_custom_configuration(tmp_path: Path) -> None:
    """Another job and namespace, runbooks elsewhere, another threshold: promtool accepts
    the rules, every series carries the selector, no default selector is left."""
    selector = 'job="forecaster",namespace="prod"'
    base = "https://git.example.org/ops/streamseq/-/blob/main/docs/deploy.md"
    config = mixin.MixinConfig(selector=selector, runbook_url_base=base, namespace="ml",
                               checkpoint_stale_seconds=900)
    out = mixin.outputs(config)
    text = out["alerts.yml"]
    assert DEFAULT_SELECTOR not in text
    (tmp_path / "alerts.yml").write_text(text)
    proc = subprocess.run([_promtool(), "check", "rules", "alerts.yml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rules = [r for g in yaml.safe_load(text)["groups"] for r in g["rules"]]
    for rule in rules:
        assert rule["annotations"]["runbook_url"] == f"{base}#{rule['alert'].lower()}"
        for name, matchers in _selectors(rule["expr"]):
            assert matchers.get("job") == '="forecaster"', (rule["alert"], name)
            assert matchers.get("namespace") == '="prod"', (rule["alert"], name)
    stale = next(r for r in rules if r["alert"] == "StreamseqCheckpointStale")
    assert "> 900" in stale["expr"] and "15 minutes" in stale["annotations"]["description"]
    operator_rule = yaml.safe_load(out["prometheusrule.yaml"])
    assert operator_rule["metadata"]["namespace"] == "ml"
    assert operator_rule["spec"] == yaml.safe_load(text)


def test_dashboard_configmap_carries_the_dashboard() -> None:
    cm = yaml.safe_load(mixin.DASHBOARD_CONFIGMAP.read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    (name, text), = cm["data"].items()
    assert name == mixin.DASHBOARD.name
    assert json.loads(text) == json.loads(mixin.DASHBOARD.read_text())
    assert len(text.encode()) < 1_000_000, "a ConfigMap holds at most 1 MiB"


def test_build_script_writes_the_files(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "deploy" / "mixin" / "build.py"),
                           "--out", str(tmp_path), "--selector", 'job="x"'],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(mixin.outputs(
        mixin.MixinConfig()))
    assert 'up{job="x"}' in (tmp_path / "alerts.yml").read_text()
    assert shutil.which(sys.executable)
