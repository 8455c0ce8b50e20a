"""The streamseq monitoring mixin: alert rules and the Grafana dashboard, as files for
Prometheus, prometheus-operator and the Grafana sidecar, from one configuration.

    python deploy/mixin/build.py                 # regenerate the files in this repository
    python deploy/mixin/build.py --out DIR \\
        --selector 'job="streamseq-prod",namespace="forecasting"' \\
        --runbook-url-base https://git.example.com/ops/streamseq/-/blob/main/docs/deploy.md

Like a jsonnet monitoring mixin (kubernetes-mixin, the Prometheus and Kafka mixins), the rules
are written once against a configuration (:class:`MixinConfig`): the selector that picks
streamseq's series (``job="streamseq"`` by default: set it to whatever your service
discovery produces), the labels that identify one deployment in group-level alerts
(``cluster``, ``namespace``, ``job``), the runbook location and the thresholds.
Aggregations drop only streamseq's own labels (``sum without (topic, kind)``), so every
target label (``cluster``, ``namespace``, ``pod``, ``instance``, ...) stays on the alert.

Outputs (the repository's copies are generated with the defaults; a test keeps them so):

- ``deploy/prometheus/alerts.yml``: the rule file (Prometheus ``rule_files``).
- ``deploy/k8s/monitoring/prometheusrule.yaml``: the same groups as a ``PrometheusRule``.
- ``deploy/k8s/monitoring/grafana-dashboard.yaml``: ``deploy/grafana/dashboards/
  streamseq.json`` in a ConfigMap labelled ``grafana_dashboard: "1"`` for the Grafana sidecar
  (kube-prometheus-stack). The dashboard itself is edited as JSON; it selects its datasource
  through the ``datasource`` variable and carries ``__inputs`` for a manual import.

Only the standard library and PyYAML are used.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "streamseq.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
K8S_MONITORING = ROOT / "deploy" / "k8s" / "monitoring"
PROMETHEUS_RULE = K8S_MONITORING / "prometheusrule.yaml"
DASHBOARD_CONFIGMAP = K8S_MONITORING / "grafana-dashboard.yaml"

__all__ = ["MixinConfig", "Rule", "groups", "render_alerts", "render_prometheus_rule",
           "render_dashboard_configmap", "outputs", "main"]


@dataclass(frozen=True)
class MixinConfig:
    """What differs between installations. Thresholds are the alerts' conditions.

    Examples
    --------
    >>> MixinConfig().sel('outcome="failed"')
    '{job="streamseq", outcome="failed"}'
    >>> MixinConfig(selector='job=~"streamseq.*",namespace="prod"').sel()
    '{job=~"streamseq.*",namespace="prod"}'
    """

    selector: str = 'job="streamseq"'
    group_labels: str = "cluster, namespace, job"
    runbook_url_base: str = "docs/deploy.md"
    namespace: str = "streamseq"
    checkpoint_stale_seconds: int = 600
    checkpoint_stale_critical_seconds: int = 1800
    far_behind_seconds: int = 600
    lag_growing_messages: int = 1000
    latency_p99_seconds: float = 2.5
    dead_letter_ratio: float = 0.05
    dead_letter_min_per_second: float = 0.1
    worse_than_persistence_ratio: float = 1.05
    rebalances_per_15m: int = 4

    def sel(self, *matchers: str) -> str:
        """The selector braces: the configured selector plus ``matchers``."""
        return "{" + ", ".join([self.selector, *matchers]) + "}"

    def runbook(self, alert: str) -> str:
        return f"{self.runbook_url_base}#{alert.lower()}"


@dataclass(frozen=True)
class Rule:
    """One alerting rule; ``note`` becomes a comment above its expression."""

    alert: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    note: str = ""


def _availability(c: MixinConfig) -> list[Rule]:
    return [
        Rule("StreamseqDown", f"up{c.sel()} == 0", "2m", "critical",
             "streamseq {{ $labels.instance }} is down",
             "Prometheus has failed to scrape {{ $labels.instance }} for 2 minutes. Its "
             "partitions move to the other consumers of the group after the session timeout; "
             "with a single replica nothing is being forecast."),
        Rule("StreamseqTargetMissing", f"absent(up{c.sel()})", "10m", "warning",
             "No streamseq scrape target",
             f"Prometheus has no target matching {c.selector} (service discovery, "
             "ServiceMonitor selector or scrape annotations are wrong, or the service is "
             "not deployed)."),
        Rule("StreamseqBrokerDisconnected", f"streamseq_broker_connected{c.sel()} == 0", "2m",
             "critical", "streamseq {{ $labels.instance }} cannot reach Kafka",
             "streamseq_broker_connected has been 0 for 2 minutes. The service waits the "
             "outage out (no data is lost) but no events are consumed and no predictions "
             "published."),
        Rule("StreamseqNoPartitionsAssigned",
             f"sum by ({c.group_labels}) (streamseq_shards_assigned{c.sel()}) == 0", "10m",
             "warning", "No streamseq replica owns a partition",
             "The consumer group of job {{ $labels.job }} has held no partition for 10 "
             "minutes: topics missing, group stuck rebalancing or every replica failing "
             "readiness.",
             note="Group level: one deployment (cluster, namespace, job) owns no partition."),
        Rule("StreamseqRebalancingOften",
             f"increase(streamseq_rebalances_total{c.sel()}[15m]) > {c.rebalances_per_15m}",
             "15m", "warning",
             "streamseq {{ $labels.instance }} keeps rebalancing",
             "Partitions were assigned to {{ $labels.instance }} {{ $value | humanize }} times "
             "in 15 minutes. Every rebalance moves shard state through the checkpoint store "
             "and pauses consumption: a replica crash-looping, probes failing, or batches "
             "slower than max.poll.interval.ms."),
    ]


def _flow(c: MixinConfig) -> list[Rule]:
    lag = f"streamseq_consumer_lag_messages{c.sel()}"
    consumed = f"streamseq_events_consumed_total{c.sel()}"
    return [
        Rule("StreamseqNoEventsConsumed",
             f"""(
  sum without (topic, kind) (rate({consumed}[10m]))
  or
  0 * (up{c.sel()} == 1)
) == 0
and
streamseq_shards_assigned{c.sel()} > 0""", "10m", "warning",
             "streamseq {{ $labels.instance }} consumes no events",
             "No record has been read from the input topics for 20 minutes although the "
             "process is up and owns partitions. Producers may be down, the topics empty, or "
             "the consumer stuck.",
             note="The \"or\" branch counts an instance that never consumed as 0; a replica "
                  "that owns no partition (more replicas than partitions) is idle by design."),
        Rule("StreamseqNoPredictionsPublished",
             f"""sum without (topic, kind) (rate({consumed}[10m])) > 0
unless
sum without (kind) (rate(streamseq_predictions_published_total{c.sel()}[10m])) > 0""",
             "15m", "warning",
             "streamseq {{ $labels.instance }} consumes but publishes no predictions",
             "Events are consumed ({{ $value | humanize }}/s) but no prediction has been "
             "produced for 15 minutes: everything rejected, the engine stalled, or the "
             "producer failing."),
        Rule("StreamseqConsumerLagGrowing",
             f"""sum without (partition) ({lag}) > {c.lag_growing_messages}
and
sum without (partition) (deriv({lag}[10m])) > 0""", "15m", "warning",
             "Consumer lag on {{ $labels.topic }} keeps growing ({{ $labels.instance }})",
             "Lag on {{ $labels.topic }} is {{ $value | humanize }} messages and has been "
             "rising for 15 minutes: input rate exceeds processing rate."),
        Rule("StreamseqConsumerFarBehind",
             f"""(
  sum without (partition) ({lag})
  /
  (sum without (kind) (rate({consumed}[5m])) > 0)
) > {c.far_behind_seconds}
and
sum without (partition) (deriv({lag}[15m])) >= 0""", "10m", "critical",
             f"streamseq is more than {_duration(c.far_behind_seconds)} behind on "
             "{{ $labels.topic }}",
             "At the current consumption rate the lag on {{ $labels.topic }} takes "
             "{{ $value | humanizeDuration }} to drain ({{ $labels.instance }}), and it has "
             "not shrunk for 15 minutes. Predictions are stale by at least that much.",
             note="Seconds to drain the backlog at the current consumption rate, only while "
                  "the backlog is not shrinking: a catch-up after an outage does not page, "
                  "and a topic consuming nothing (rate 0: +Inf) is left to "
                  "StreamseqNoEventsConsumed."),
        Rule("StreamseqLatencyHigh",
             f"""histogram_quantile(0.99, sum without (kind) (
  rate(streamseq_event_to_prediction_seconds_bucket{c.sel()}[5m])
)) > {c.latency_p99_seconds}""", "15m", "warning",
             f"p99 event-to-prediction latency above {c.latency_p99_seconds} s "
             "({{ $labels.instance }})",
             "p99 latency from record timestamp to prediction is "
             "{{ $value | humanizeDuration }}. Usually a symptom of lag (catching up) or of "
             "slow batches; see the dashboard."),
        Rule("StreamseqDeadLettersSpiking",
             f"""rate(streamseq_dead_letters_total{c.sel()}[5m])
> {c.dead_letter_ratio} * sum without (kind) (rate({consumed}[5m]))
and
rate(streamseq_dead_letters_total{c.sel()}[5m]) > {c.dead_letter_min_per_second}""",
             "10m", "warning",
             "Dead letters spiking on {{ $labels.topic }} ({{ $labels.instance }})",
             "{{ $value | humanize }} records/s of {{ $labels.topic }} go to the dead-letter "
             f"topic (more than {c.dead_letter_ratio:.0%} of its input). A producer is sending "
             "malformed or schema-changed events; the dashboard's \"Rejected, dropped and "
             "dead-lettered\" panel shows the reasons.",
             note=f"More than {c.dead_letter_ratio:.0%} of a topic's input dead-lettered, and "
                  f"at least {c.dead_letter_min_per_second} record/s."),
        Rule("StreamseqProducerSendErrors",
             f"increase(streamseq_producer_send_errors_total{c.sel()}[5m]) > 0", "10m",
             "warning",
             "Records to {{ $labels.topic }} are not delivered ({{ $labels.instance }})",
             "The producer has failed to deliver records to {{ $labels.topic }} in every "
             "5-minute window for 10 minutes. Checkpoints fail and rewind while this lasts "
             "(records are re-published, nothing is lost), so StreamseqCheckpointFailing "
             "follows."),
    ]


def _model(c: MixinConfig) -> list[Rule]:
    err = "streamseq_forecast_abs_error_total"
    return [
        Rule("StreamseqModelWorseThanPersistence",
             f"""(
  sum without (forecaster) (
    rate({err}{c.sel('forecaster="model"')}[30m])
  )
  /
  sum without (forecaster) (
    rate({err}{c.sel('forecaster="persistence"')}[30m])
  )
) > {c.worse_than_persistence_ratio}
and
increase(streamseq_forecast_scored_total{c.sel()}[30m]) > 500""", "1h", "warning",
             "{{ $labels.kind }} model is worse than persistence ({{ $labels.instance }})",
             "Over the last 30 minutes the model's MAE on {{ $labels.kind }} is "
             "{{ $value | humanizePercentage }} of the naive last-value forecast's, for an "
             "hour. The model is not earning its keep: drift, bad learning rate or diverged "
             "weights.",
             note="MAE ratio model / persistence over 30 min, only with enough scored values."),
        Rule("StreamseqNonFiniteUpdates",
             f"""sum without (outcome) (
  increase(streamseq_updates_total{c.sel('outcome="skipped_nonfinite"')}[15m])
) > 0""", "5m", "warning",
             "Optimizer steps skipped for NaN/inf ({{ $labels.kind }}, {{ $labels.instance }})",
             "{{ $value | humanize }} {{ $labels.kind }} updates were skipped by the NaN/inf "
             "guard in the last 15 minutes. Weights are protected, but the loss or gradients "
             "are exploding: check learning rate, gradient clipping and input scaling."),
        Rule("StreamseqModelNotLearning",
             f"""sum without (outcome) (
  rate(streamseq_updates_total{c.sel('outcome="skipped_nonfinite"')}[10m])
)
/
sum without (outcome) (rate(streamseq_updates_total{c.sel()}[10m]))
> 0.5""", "10m", "critical",
             "Most {{ $labels.kind }} updates are skipped ({{ $labels.instance }})",
             "{{ $value | humanizePercentage }} of the optimizer steps were non-finite for 10 "
             "minutes: the {{ $labels.kind }} model has effectively stopped learning."),
    ]


def _state(c: MixinConfig) -> list[Rule]:
    age = f"streamseq_checkpoint_age_seconds{c.sel()}"
    owns = f"streamseq_shards_assigned{c.sel()} > 0"
    failed = 'outcome="failed"'
    restores = f"streamseq_checkpoint_restores_total{c.sel(failed)}"
    commits = "streamseq_offset_commits_total"
    return [
        Rule("StreamseqCheckpointStale", f"{age} > {c.checkpoint_stale_seconds}\nand\n{owns}",
             "2m", "warning",
             "No checkpoint for {{ $value | humanizeDuration }} ({{ $labels.instance }})",
             f"The last durable checkpoint is older than "
             f"{_duration(c.checkpoint_stale_seconds)}. Offsets are committed only after a "
             "checkpoint, so a crash now replays everything since then.",
             note="Only replicas that own partitions: an idle one has nothing to checkpoint."),
        Rule("StreamseqCheckpointStaleCritical",
             f"{age} > {c.checkpoint_stale_critical_seconds}\nand\n{owns}", "2m", "critical",
             "No checkpoint for {{ $value | humanizeDuration }} ({{ $labels.instance }})",
             "The last durable checkpoint is older than "
             f"{_duration(c.checkpoint_stale_critical_seconds)}; recovery after a crash would "
             "replay a large backlog and retention may drop the events needed to replay."),
        Rule("StreamseqCheckpointFailing",
             f"""sum without (outcome) (
  increase(streamseq_checkpoints_total{c.sel('outcome="failed"')}[15m])
) > 0""", "0m", "warning",
             "Checkpoints failing on {{ $labels.instance }}",
             "{{ $value | humanize }} checkpoints failed in the last 15 minutes (disk full, "
             "permissions, producer flush failure). Offsets are not committed while this "
             "lasts."),
        Rule("StreamseqCheckpointRestoreFailed",
             f"""sum without (outcome) (
  increase({restores}[1h])
) > 0
or
sum without (outcome) ({restores}) > 0
  and ignoring (topic)
  (time() - process_start_time_seconds{c.sel()} < 3600)""",
             "0m", "warning",
             "Shard state of {{ $labels.topic }} could not be restored ({{ $labels.instance }})",
             "{{ $value | humanize }} partition(s) of {{ $labels.topic }} had snapshots, none "
             "of them readable, in the last hour, and were started from a fresh or "
             "warm-start model (--on-corrupt-state fresh): their learned state is lost. The "
             "unreadable snapshots are kept as *.ckpt.unreadable (local store).",
             note="Restores happen right after start, often before the first scrape, so a "
                  "process younger than an hour with failures counts too. With the default "
                  "--on-corrupt-state refuse the process exits (code 3) instead: "
                  "StreamseqDown pages."),
        Rule("StreamseqOffsetCommitsFailing",
             f"""sum without (outcome) (
  increase({commits}{c.sel('outcome="failed"')}[15m])
) > 0
unless
sum without (outcome) (
  increase({commits}{c.sel('outcome="ok"')}[15m])
) > 0""",
             "15m", "warning",
             "Offset commits failing on {{ $labels.instance }}",
             "Every offset commit of the last 15 minutes failed, for 15 minutes. Snapshots "
             "stay durable and restores use their offsets, so nothing is lost or replayed "
             "twice, but the group's committed offsets (kafka-consumer-groups.sh, external "
             "lag monitors) fall behind."),
    ]


def _duration(seconds: float) -> str:
    """``600`` -> ``"10 minutes"`` (for descriptions).

    >>> _duration(600), _duration(3600), _duration(90)
    ('10 minutes', '1 hour', '90 seconds')
    """
    if seconds % 3600 == 0:
        n = int(seconds // 3600)
        return f"{n} hour{'s' if n != 1 else ''}"
    if seconds % 60 == 0:
        n = int(seconds // 60)
        return f"{n} minute{'s' if n != 1 else ''}"
    return f"{seconds:g} seconds"


def groups(config: MixinConfig) -> list[tuple[str, list[Rule]]]:
    """The rule groups, in file order."""
    return [("streamseq.availability", _availability(config)),
            ("streamseq.flow", _flow(config)),
            ("streamseq.model", _model(config)),
            ("streamseq.state", _state(config))]


# ------------------------------------------------------------------------- YAML


def _q(text: str) -> str:
    """A double-quoted YAML scalar (JSON strings are valid YAML)."""
    return json.dumps(text, ensure_ascii=False)


def _wrap(text: str, width: int) -> list[str]:
    """Words wrapped at ``width``, never inside a ``{{ template }}``.

    >>> _wrap("takes {{ $value | humanizeDuration }} to drain", 20)
    ['takes', '{{ $value | humanizeDuration }}', 'to drain']
    """
    glued = re.sub(r"\{\{.*?\}\}", lambda m: m.group().replace(" ", "\0"), text)
    return [line.replace("\0", " ")
            for line in textwrap.wrap(glued, width, break_on_hyphens=False,
                                      break_long_words=False)]


def _rule_lines(rule: Rule, config: MixinConfig, pad: str) -> Iterator[str]:
    yield f"{pad}- alert: {rule.alert}"
    pad += "  "
    for line in textwrap.wrap(rule.note, 92 - len(pad)) if rule.note else []:
        yield f"{pad}# {line}"
    if "\n" in rule.expr:
        yield f"{pad}expr: |"
        yield from (f"{pad}  {line}" for line in rule.expr.splitlines())
    else:
        yield f"{pad}expr: {rule.expr}"
    yield f"{pad}for: {rule.for_}"
    yield f"{pad}labels:"
    yield f"{pad}  severity: {rule.severity}"
    yield f"{pad}annotations:"
    yield f"{pad}  summary: {_q(rule.summary)}"
    yield f"{pad}  description: >-"
    yield from (f"{pad}    {line}" for line in _wrap(rule.description, 96 - len(pad)))
    yield f"{pad}  runbook_url: {_q(config.runbook(rule.alert))}"


def _groups_lines(config: MixinConfig, pad: str) -> Iterator[str]:
    for i, (name, rules) in enumerate(groups(config)):
        if i:
            yield ""
        yield f"{pad}- name: {name}"
        yield f"{pad}  rules:"
        for j, rule in enumerate(rules):
            if j:
                yield ""
            yield from _rule_lines(rule, config, pad + "    ")


GENERATED = ("# Generated by deploy/mixin/build.py from its MixinConfig: do not edit; change the\n"
             "# mixin and run `python deploy/mixin/build.py` (a test checks this file is current).\n")


def render_alerts(config: MixinConfig) -> str:
    """The Prometheus rule file."""
    head = GENERATED + textwrap.dedent(f"""\
        #
        # Conventions
        # - Every alert carries severity (critical = page, warning = ticket), a summary, a
        #   description and a runbook_url: its section of the runbook in docs/deploy.md.
        # - Series are picked by the selector {config.selector}; aggregations drop only
        #   streamseq's own labels (without (...)), so target labels (cluster, namespace, pod,
        #   instance) stay on every alert; group-level alerts keep {config.group_labels}.
        # - Thresholds tied to configuration: StreamseqCheckpointStale assumes a checkpoint
        #   interval of about 60 s (checkpoint_every_seconds in deploy/config/streamseq.toml).
        groups:
        """)
    return head + "\n".join(_groups_lines(config, "  ")) + "\n"


def _k8s_metadata(name: str, config: MixinConfig, extra_labels: dict[str, str]) -> str:
    labels = {**extra_labels, "app.kubernetes.io/name": "streamseq",
              "app.kubernetes.io/part-of": "streamseq"}
    lines = ["metadata:", f"  name: {name}", f"  namespace: {config.namespace}", "  labels:"]
    lines += [f"    {k}: {_q(v) if v.isdigit() else v}" for k, v in labels.items()]
    return "\n".join(lines) + "\n"


def render_prometheus_rule(config: MixinConfig) -> str:
    """The rules as a prometheus-operator ``PrometheusRule``."""
    return (GENERATED
            + "# Your Prometheus resource's ruleSelector may require an extra label (e.g. "
              "release).\n"
            + "apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\n"
            + _k8s_metadata("streamseq", config, {})
            + "spec:\n  groups:\n" + "\n".join(_groups_lines(config, "    ")) + "\n")


def render_dashboard_configmap(config: MixinConfig, dashboard: str) -> str:
    """The dashboard JSON in a ConfigMap the Grafana sidecar picks up by its label."""
    compact = json.dumps(json.loads(dashboard), separators=(",", ":"), ensure_ascii=False)
    return (GENERATED
            + "# The Grafana sidecar (kube-prometheus-stack: sidecar.dashboards.enabled) loads\n"
              "# ConfigMaps labelled grafana_dashboard; set sidecar.dashboards.searchNamespace\n"
              "# to ALL (or to this namespace) when Grafana runs elsewhere.\n"
            + "apiVersion: v1\nkind: ConfigMap\n"
            + _k8s_metadata("streamseq-grafana-dashboard", config, {"grafana_dashboard": "1"})
            + "data:\n  streamseq.json: |-\n    " + compact + "\n")


def outputs(config: MixinConfig) -> dict[str, str]:
    """File name -> content of every generated file."""
    return {ALERTS.name: render_alerts(config),
            PROMETHEUS_RULE.name: render_prometheus_rule(config),
            DASHBOARD_CONFIGMAP.name: render_dashboard_configmap(config, DASHBOARD.read_text())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    defaults = MixinConfig()
    for f in fields(MixinConfig):
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(defaults, f.name)),
                            default=getattr(defaults, f.name), metavar=f.name.upper())
    parser.add_argument("--out", type=Path, help="write the three files here (default: "
                                                 "their places in this repository)")
    args = parser.parse_args(argv)
    config = MixinConfig(**{f.name: getattr(args, f.name) for f in fields(MixinConfig)})
    places = {ALERTS.name: ALERTS, PROMETHEUS_RULE.name: PROMETHEUS_RULE,
              DASHBOARD_CONFIGMAP.name: DASHBOARD_CONFIGMAP}
    for name, text in outputs(config).items():
        path = args.out / name if args.out else places[name]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
