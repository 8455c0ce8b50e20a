"""A real Prometheus server for tests, and the PromQL of our dashboards and alert rules.

:class:`PrometheusServer` runs the ``prometheus`` binary (Debian package ``prometheus``) on a
free loopback port with a generated config that scrapes one target every second and loads
``deploy/prometheus/alerts.yml`` (copied into its temporary directory), then answers
:meth:`~PrometheusServer.query` and :meth:`~PrometheusServer.alerts` through the HTTP API.

:func:`dashboard_expressions` and :func:`alert_expressions` list every PromQL expression of
the deploy/ files; :func:`promql_selectors` finds the metric names and label matchers in one
(enough of PromQL's grammar for our own expressions, not a full parser).

Only the standard library is used (urllib, subprocess), plus PyYAML already required.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

__all__ = [
    "ROOT",
    "DASHBOARDS",
    "ALERTS",
    "PENDING_METRICS",
    "Expression",
    "PrometheusError",
    "PrometheusServer",
    "prometheus_binary",
    "dashboard_expressions",
    "alert_expressions",
    "promql_selectors",
    "substitute_grafana_variables",
    "load_mixin",
]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

#: Metrics the alert rules may watch before the service exposes them (name -> label names):
#: agree a name, write the alert, list it here, then remove the entry when the service
#: exposes it (tests/unit/test_deploy_static.py fails until then). Issue 15's rebalances,
#: offset commits, producer send errors and restore outcomes are all exposed now.
PENDING_METRICS: dict[str, set[str]] = {}


class PrometheusError(RuntimeError):
    """Prometheus could not be started, reached, or rejected a query."""


@dataclass(frozen=True)
class Expression:
    """One PromQL expression and where it comes from.

    Attributes
    ----------
    source
        ``"dashboard"``, ``"annotation"`` or ``"alert"``.
    name
        Panel title + refId (``"Lag / A"``), annotation name, or alert name.
    expr
        The expression as written (Grafana variables not substituted).
    """

    source: str
    name: str
    expr: str


# ------------------------------------------------------------------------- the mixin


def load_mixin() -> ModuleType:
    """deploy/mixin/build.py (the monitoring mixin that renders alerts.yml), imported by path:
    ``load_mixin().render_alerts(load_mixin().MixinConfig(...))``."""
    name = "streamseq_deploy_mixin"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "deploy" / "mixin" / "build.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


# ------------------------------------------------------------------------- expressions


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_expressions(path: str | Path) -> list[Expression]:
    """Every target expression and annotation query of one Grafana dashboard JSON file.

    Examples
    --------
    >>> exprs = dashboard_expressions(DASHBOARDS / "streamseq.json")
    >>> any(e.expr.startswith("histogram_quantile(0.99") for e in exprs)
    True
    """
    dash = json.loads(Path(path).read_text())
    out = []
    for panel in _panels(dash.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                out.append(Expression("dashboard", f"{panel.get('title')} / {target['refId']}",
                                      target["expr"]))
    for annotation in dash.get("annotations", {}).get("list", []):
        if annotation.get("expr"):
            out.append(Expression("annotation", annotation["name"], annotation["expr"]))
    return out


def alert_expressions(path: str | Path = ALERTS) -> list[Expression]:
    """Every alerting (and recording) rule expression of a Prometheus rules file.

    Examples
    --------
    >>> names = [e.name for e in alert_expressions()]
    >>> "StreamseqDown" in names and len(names) == len(set(names))
    True
    """
    doc = yaml.safe_load(Path(path).read_text())
    out = []
    for group in doc["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            out.append(Expression("alert" if "alert" in rule else "record", name,
                                  rule["expr"].strip()))
    return out


GRAFANA_DEFAULTS = {
    "__rate_interval": "30s",
    "__interval": "5s",
    "__range": "5m",
}


def substitute_grafana_variables(expr: str, values: Mapping[str, str] | None = None,
                                 default: str = ".+") -> str:
    """Replace Grafana variables (``$name``, ``${name}``, ``[[name]]``) by test values.

    ``$__rate_interval`` and friends get a duration; other variables ``default`` (a regex
    matching every value, for ``label=~"$var"`` matchers).

    Examples
    --------
    >>> substitute_grafana_variables('rate(x{job=~"$job"}[$__rate_interval])')
    'rate(x{job=~".+"}[30s])'
    >>> substitute_grafana_variables('x{kind=~"${kind}"}', {"kind": "sensor"})
    'x{kind=~"sensor"}'
    """
    merged = {**GRAFANA_DEFAULTS, **(values or {})}

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        return merged.get(name, default)

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", repl, expr)


# A metric name, a string, a {matchers} block, a [range] block, a number or duration,
# an identifier, or any other single character.
_TOKEN = re.compile(r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<braces>\{[^}]*\})
  | (?P<range>\[[^\]]*\])
  | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[a-zA-Z]*|\.\d+)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<other>\S)
""", re.VERBOSE)
_LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = {"and", "or", "unless", "offset", "bool", "atan2", "inf", "nan", "Inf", "NaN"}
# Aggregations may put their clause first: sum by (kind) (...), so "(" need not follow.
_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                 "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
_MATCHER = re.compile(r"""([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|'[^']*')""")


def promql_selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """Metric names used by ``expr``, each with its label matchers ``{label: operator+value}``.

    Function names, aggregation clauses (``by (...)``, ``on (...)``, ``group_left (...)``),
    keywords, numbers, durations and strings are skipped.

    Examples
    --------
    >>> promql_selectors('sum by (kind, le) (rate(a_bucket{kind=~"x", job="j"}[5m])) '
    ...                  '/ on (kind) group_left sum by (kind) (b_total) > 0.5 or vector(0)')
    [('a_bucket', {'kind': '=~"x"', 'job': '="j"'}), ('b_total', {})]
    >>> promql_selectors('up{job="streamseq"} == 0 unless x offset 10m')
    [('up', {'job': '="streamseq"'}), ('x', {})]
    """
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr)]
    out: list[tuple[str, dict[str, str]]] = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else (None, "")
        if kind == "ident" and text in _LABEL_LIST_KEYWORDS:
            if nxt[1] == "(":  # skip the label list
                j = i + 2
                while j < len(tokens) and tokens[j][1] != ")":
                    j += 1
                i = j + 1
                continue
        elif (kind == "ident" and text not in _KEYWORDS and text not in _AGGREGATIONS
              and nxt[1] != "("):
            labels: dict[str, str] = {}
            if nxt[0] == "braces":
                labels = {name: op + value for name, op, value in _MATCHER.findall(nxt[1])}
                i += 1
            out.append((text, labels))
        elif kind == "braces":  # a selector without a metric name: {__name__="..."}
            labels = {name: op + value for name, op, value in _MATCHER.findall(text)}
            name_matcher = labels.pop("__name__", "")
            out.append((name_matcher, labels))
        i += 1
    return out


# ------------------------------------------------------------------------- the server


def prometheus_binary() -> str | None:
    """Path of the ``prometheus`` binary (``$PROMETHEUS_BIN`` overrides), or ``None``."""
    return os.environ.get("PROMETHEUS_BIN") or shutil.which("prometheus")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusServer:
    """A Prometheus child process scraping streamseq targets, with our alert rules loaded.

    Parameters
    ----------
    target
        ``host:port`` of the /metrics endpoint to scrape, or several (one job).
    job
        Job label of the target; the alert rules select ``job="streamseq"``.
    scrape_interval
        Scrape and rule evaluation interval (Prometheus duration).
    rules
        Rule files copied next to the generated config and listed in ``rule_files``.
    binary
        The ``prometheus`` executable (found on PATH by default).

    Examples
    --------
    ::

        with PrometheusServer("127.0.0.1:9400") as prom:
            prom.wait_for_target()
            prom.query('rate(streamseq_events_consumed_total[30s])')
    """

    def __init__(self, target: str | Sequence[str], *, job: str = "streamseq",
                 scrape_interval: str = "1s", rules: tuple[Path, ...] = (ALERTS,),
                 binary: str | None = None) -> None:
        self.targets_scraped = [target] if isinstance(target, str) else list(target)
        self.target = ", ".join(self.targets_scraped)
        self.job = job
        self.scrape_interval = scrape_interval
        self.rules = tuple(Path(r) for r in rules)
        self.binary = binary or prometheus_binary()
        self.port = _free_port()
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        """Prometheus' own log so far (for assertion messages)."""
        if self._dir is None:
            return ""
        path = Path(self._dir.name) / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def config(self) -> dict[str, Any]:
        """The generated prometheus.yml, as a dict."""
        return {
            "global": {"scrape_interval": self.scrape_interval,
                       "evaluation_interval": self.scrape_interval,
                       "scrape_timeout": self.scrape_interval},
            "rule_files": [r.name for r in self.rules],
            "scrape_configs": [{"job_name": self.job, "metrics_path": "/metrics",
                                "static_configs": [{"targets": self.targets_scraped}]}],
        }

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        if self.binary is None:
            raise PrometheusError("the prometheus binary is not installed "
                                  "(apt-get install prometheus, or set PROMETHEUS_BIN)")
        self._dir = tempfile.TemporaryDirectory(prefix="streamseq-prom-")
        work = Path(self._dir.name)
        for rule_file in self.rules:
            shutil.copy(rule_file, work / rule_file.name)
        (work / "prometheus.yml").write_text(yaml.safe_dump(self.config(), sort_keys=False))
        cmd = [self.binary, f"--config.file={work / 'prometheus.yml'}",
               f"--storage.tsdb.path={work / 'data'}",
               f"--web.listen-address=127.0.0.1:{self.port}",
               "--log.level=warn"]
        with open(work / "prometheus.log", "ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                          cwd=work, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self._proc.returncode}:\n"
                                      f"{self.log}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise PrometheusError(f"prometheus not ready after {timeout:.0f}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate Prometheus (SIGTERM, then SIGKILL) and delete its directory."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- HTTP API

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        url = f"{self.url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as exc:  # 400/422 carry a JSON error body
            body = json.loads(exc.read() or b"{}")
        except OSError as exc:
            raise PrometheusError(f"GET {url}: {exc}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {dict(params or {})}: {body.get('errorType')}: "
                                  f"{body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query; the result list (``[{"metric": {...}, "value": [t, "v"]}, ...]``).

        A scalar or string result comes back as a one-element list.
        """
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._get("/api/v1/query", params)
        result = data["result"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": result}]
        return list(result)

    def value(self, expr: str) -> float | None:
        """The single value of an instant query, or ``None`` when it returns nothing."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"{expr!r} returned {len(result)} series, expected one")
        return float(result[0]["value"][1])

    def targets(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/targets")["activeTargets"])

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts: ``[{"labels": {"alertname": ...}, "state": "pending"|"firing"}]``."""
        return list(self._get("/api/v1/alerts")["alerts"])

    def rules_loaded(self) -> list[dict[str, Any]]:
        """Every loaded rule with its health and last error (``/api/v1/rules``)."""
        return [rule for group in self._get("/api/v1/rules")["groups"]
                for rule in group["rules"]]

    def wait_for_target(self, timeout: float = 30.0) -> None:
        """Block until every target has been scraped successfully (``up == 1``)."""
        deadline = time.monotonic() + timeout
        last: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            last = self.targets()
            if len(last) == len(self.targets_scraped) and all(
                    t.get("health") == "up" for t in last):
                return
            time.sleep(0.25)
        raise PrometheusError(f"target {self.target} not up after {timeout:.0f}s: "
                              f"{[(t.get('health'), t.get('lastError')) for t in last]}")

    def wait_for(self, expr: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Block until ``expr`` returns data; return it."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.5)
