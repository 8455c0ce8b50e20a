"""``streamseq top``: a live terminal summary of a running service, read from its /metrics.

Two scrapes ``--interval`` seconds apart give rates (events, rejections, optimizer steps,
CPU) and latency quantiles over that interval; gauges (lag, keys, checkpoint age, loss, MAE)
are shown as last read. Everything except :func:`scrape` and the command itself is a pure
function of the scraped text, so it is tested without a service.

Examples
--------
>>> text_1 = '''
... # TYPE streamseq_events_consumed counter
... streamseq_events_consumed_total{topic="sensors",kind="sensor"} 100
... '''
>>> text_2 = text_1.replace(" 100", " 300")
>>> before, after = parse_metrics(text_1, t=10.0), parse_metrics(text_2, t=12.0)
>>> rates(before, after, "streamseq_events_consumed_total")
{(): 100.0}
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "Snapshot",
    "Summary",
    "parse_metrics",
    "scrape",
    "rates",
    "bucket_quantile",
    "bucket_deltas",
    "summarize",
    "render",
    "register",
]

Labels = tuple[tuple[str, str], ...]
Group = tuple[str, ...]

DEFAULT_URL = "http://127.0.0.1:9400/metrics"


@dataclass(frozen=True)
class Snapshot:
    """Every sample of one scrape, by sample name, then by sorted label pairs.

    Attributes
    ----------
    samples
        ``{sample_name: {labels: value}}``; ``labels`` is a sorted tuple of ``(name, value)``.
    t
        When the scrape was taken (seconds on a monotonic clock).
    """

    samples: dict[str, dict[Labels, float]]
    t: float = 0.0

    def series(self, name: str, **match: str) -> dict[Labels, float]:
        """Samples of ``name`` whose labels include every ``match`` pair."""
        out = {}
        for labels, value in self.samples.get(name, {}).items():
            d = dict(labels)
            if all(d.get(k) == v for k, v in match.items()):
                out[labels] = value
        return out

    def sum_by(self, name: str, by: Sequence[str] = (), **match: str) -> dict[Group, float]:
        """Sum of the matching samples of ``name``, grouped by the label values in ``by``.

        Examples
        --------
        >>> s = parse_metrics('m{k="a",o="x"} 1\\nm{k="a",o="y"} 2\\nm{k="b",o="x"} 4\\n')
        >>> s.sum_by("m", ["k"])
        {('a',): 3.0, ('b',): 4.0}
        >>> s.sum_by("m", o="x")
        {(): 5.0}
        >>> s.sum_by("absent")
        {}
        """
        out: dict[Group, float] = {}
        for labels, value in self.series(name, **match).items():
            d = dict(labels)
            key = tuple(d.get(b, "") for b in by)
            out[key] = out.get(key, 0.0) + value
        return out

    def value(self, name: str, **match: str) -> float | None:
        """Sum of the matching samples, or ``None`` when there is none."""
        got = self.sum_by(name, (), **match)
        return got.get(())


def parse_metrics(text: str, t: float = 0.0) -> Snapshot:
    """Parse Prometheus text exposition into a :class:`Snapshot`.

    Examples
    --------
    >>> s = parse_metrics('# TYPE up gauge\\nup{job="a"} 1\\n', t=5.0)
    >>> s.samples, s.t
    ({'up': {(('job', 'a'),): 1.0}}, 5.0)
    """
    samples: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = float(sample.value)
    return Snapshot(samples=samples, t=t)


def scrape(url: str, timeout: float = 5.0, clock: Callable[[], float] = time.monotonic
           ) -> Snapshot:
    """Fetch ``url`` (a /metrics endpoint) and parse it.

    Raises
    ------
    OSError
        The endpoint cannot be reached or answers with an HTTP error (``urllib.error.URLError``
        and ``HTTPError`` are ``OSError`` subclasses).
    """
    request = urllib.request.Request(url, headers={"Accept": "text/plain;version=0.0.4"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        body = response.read().decode("utf-8", errors="replace")
    return parse_metrics(body, t=clock())


def _increase(before: float | None, after: float) -> float:
    """Counter increase with reset handling (a smaller value means the process restarted)."""
    if before is None or after < before:
        return after
    return after - before


def rates(before: Snapshot, after: Snapshot, name: str, by: Sequence[str] = (),
          **match: str) -> dict[Group, float]:
    """Per-second increase of counter ``name`` between two snapshots, grouped by ``by``.

    A series absent from ``before`` counts from 0 (it was created during the interval); a
    series that went down was reset by a restart and counts from 0 too.

    Examples
    --------
    >>> a = parse_metrics('c_total{r="x"} 10\\n', t=0.0)
    >>> b = parse_metrics('c_total{r="x"} 30\\nc_total{r="y"} 4\\n', t=2.0)
    >>> rates(a, b, "c_total", ["r"])
    {('x',): 10.0, ('y',): 2.0}
    >>> c = parse_metrics('c_total{r="x"} 6\\n', t=4.0)
    >>> rates(b, c, "c_total", ["r"])  # went down: restarted, so 0 -> 6 in 2 s
    {('x',): 3.0}
    """
    dt = after.t - before.t
    if dt <= 0:
        return {}
    old = before.samples.get(name, {})
    out: dict[Group, float] = {}
    for labels, value in after.series(name, **match).items():
        d = dict(labels)
        key = tuple(d.get(b, "") for b in by)
        out[key] = out.get(key, 0.0) + _increase(old.get(labels), value) / dt
    return out


def bucket_deltas(before: Snapshot | None, after: Snapshot, name: str,
                  **match: str) -> dict[float, float]:
    """Cumulative histogram buckets ``{le: count}`` of ``name`` (the family name, without
    ``_bucket``) observed between two snapshots, summed over the other labels.

    With ``before=None`` the buckets since the process started are returned.

    Examples
    --------
    >>> text = 'h_bucket{le="0.1"} %d\\nh_bucket{le="1.0"} %d\\nh_bucket{le="+Inf"} %d\\n'
    >>> a, b = parse_metrics(text % (1, 2, 2)), parse_metrics(text % (1, 7, 9))
    >>> bucket_deltas(a, b, "h")
    {0.1: 0.0, 1.0: 5.0, inf: 7.0}
    """
    old = before.samples.get(f"{name}_bucket", {}) if before is not None else {}
    out: dict[float, float] = {}
    for labels, value in after.series(f"{name}_bucket", **match).items():
        le = float(dict(labels).get("le", "+Inf"))
        increase = value if before is None else _increase(old.get(labels), value)
        out[le] = out.get(le, 0.0) + increase
    return dict(sorted(out.items()))


def bucket_quantile(q: float, buckets: Mapping[float, float]) -> float:
    """Quantile ``q`` of a cumulative histogram, interpolated like PromQL's
    ``histogram_quantile``: linear within the bucket, the lowest bucket starting at 0, and
    the upper bound of the highest finite bucket when the rank falls in ``+Inf``.

    Returns NaN when the histogram is empty.

    Examples
    --------
    >>> b = {0.01: 0.0, 0.025: 100.0, 0.05: 100.0, math.inf: 100.0}
    >>> round(bucket_quantile(0.5, b), 6), round(bucket_quantile(0.99, b), 6)
    (0.0175, 0.02485)
    >>> bucket_quantile(0.99, {0.1: 1.0, math.inf: 10.0})
    0.1
    >>> math.isnan(bucket_quantile(0.5, {0.1: 0.0, math.inf: 0.0}))
    True
    """
    items = sorted(buckets.items())
    if not items or items[-1][0] != math.inf or items[-1][1] <= 0:
        return math.nan
    rank = q * items[-1][1]
    prev_le: float | None = None
    prev_count = 0.0
    for le, count in items:
        if count >= rank:
            if le == math.inf:
                return prev_le if prev_le is not None else math.nan
            if prev_le is None:
                if le <= 0:
                    return le
                start = 0.0
            else:
                start = prev_le
            if count == prev_count:
                return start
            return start + (le - start) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return math.nan


@dataclass
class Summary:
    """What :func:`render` prints: figures over one scrape interval and gauges as last read."""

    url: str
    interval: float
    build: dict[str, str] = field(default_factory=dict)
    up_broker: float | None = None
    shards: float | None = None
    consumed: float = 0.0
    published: float = 0.0
    rejected: dict[str, float] = field(default_factory=dict)
    dropped: dict[str, float] = field(default_factory=dict)
    dead_letters: float = 0.0
    lag: dict[str, dict[str, float]] = field(default_factory=dict)
    latency: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    mae: dict[str, dict[str, float]] = field(default_factory=dict)
    mae_interval: dict[str, dict[str, float]] = field(default_factory=dict)
    keys: dict[str, float] = field(default_factory=dict)
    checkpoint_age: float | None = None
    checkpoints_failed: float = 0.0
    loss: dict[str, float] = field(default_factory=dict)
    grad_norm: dict[str, float] = field(default_factory=dict)
    updates: dict[str, dict[str, float]] = field(default_factory=dict)
    cpu: float | None = None
    rss: float | None = None

    @property
    def lag_total(self) -> float:
        return sum(sum(parts.values()) for parts in self.lag.values())


def _flat(groups: Mapping[Group, float]) -> dict[str, float]:
    return {"/".join(k) if k else "": v for k, v in groups.items()}


def summarize(before: Snapshot, after: Snapshot, url: str = "") -> Summary:
    """Reduce two snapshots to a :class:`Summary`.

    Examples
    --------
    >>> a = parse_metrics('streamseq_keys_held{kind="price"} 3\\n', t=0.0)
    >>> b = parse_metrics('streamseq_keys_held{kind="price"} 5\\n', t=1.0)
    >>> summarize(a, b).keys
    {'price': 5.0}
    """
    s = Summary(url=url, interval=after.t - before.t)
    info = after.series("streamseq_build_info")
    if info:
        s.build = dict(next(iter(info)))
    s.up_broker = after.value("streamseq_broker_connected")
    s.shards = after.value("streamseq_shards_assigned")
    s.consumed = sum(rates(before, after, "streamseq_events_consumed_total").values())
    s.published = sum(rates(before, after, "streamseq_predictions_published_total").values())
    s.rejected = _flat(rates(before, after, "streamseq_events_rejected_total", ["reason"]))
    s.dropped = _flat(rates(before, after, "streamseq_events_dropped_total", ["reason"]))
    s.dead_letters = sum(rates(before, after, "streamseq_dead_letters_total").values())
    for (topic, partition), lag in sorted(
            after.sum_by("streamseq_consumer_lag_messages", ["topic", "partition"]).items(),
            key=lambda kv: (kv[0][0], _int_or_str(kv[0][1]))):
        s.lag.setdefault(topic, {})[partition] = lag

    latency = "streamseq_event_to_prediction_seconds"
    kinds = sorted(k for (k,) in after.sum_by(f"{latency}_count", ["kind"]))
    for kind in [*kinds, ""] if len(kinds) > 1 else kinds:
        match = {"kind": kind} if kind else {}
        buckets = bucket_deltas(before, after, latency, **match)
        n = buckets.get(math.inf, 0.0)
        if n > 0:
            s.latency[kind or "all"] = (bucket_quantile(0.5, buckets),
                                        bucket_quantile(0.99, buckets), n)

    for (kind, forecaster), v in after.sum_by("streamseq_mae", ["kind", "forecaster"]).items():
        s.mae.setdefault(kind, {})[forecaster] = v
    scored = rates(before, after, "streamseq_forecast_scored_total", ["kind"])
    errors = rates(before, after, "streamseq_forecast_abs_error_total", ["kind", "forecaster"])
    for (kind, forecaster), err in errors.items():
        n = scored.get((kind,), 0.0)
        if n > 0:
            s.mae_interval.setdefault(kind, {})[forecaster] = err / n

    s.keys = _flat(after.sum_by("streamseq_keys_held", ["kind"]))
    s.checkpoint_age = _max(after.series("streamseq_checkpoint_age_seconds").values())
    s.checkpoints_failed = sum(
        rates(before, after, "streamseq_checkpoints_total", outcome="failed").values())
    s.loss = _flat(after.sum_by("streamseq_train_loss", ["kind"]))
    s.grad_norm = _flat(after.sum_by("streamseq_grad_norm", ["kind"]))
    for (kind, outcome), r in rates(before, after, "streamseq_updates_total",
                                    ["kind", "outcome"]).items():
        s.updates.setdefault(kind, {})[outcome] = r
    cpu = rates(before, after, "process_cpu_seconds_total")
    s.cpu = cpu.get(()) if cpu else None
    s.rss = after.value("process_resident_memory_bytes")
    return s


def _int_or_str(x: str) -> tuple[int, int | str]:
    return (0, int(x)) if x.isdigit() else (1, x)


def _max(values: Iterable[float]) -> float | None:
    vals = list(values)
    return max(vals) if vals else None


def _num(x: float | None, unit: str = "", digits: int = 1) -> str:
    """Compact number: ``1234.5 -> '1.23k'``.

    Examples
    --------
    >>> _num(0.5), _num(12.0), _num(1234.5), _num(2.5e6, "B"), _num(None), _num(math.nan)
    ('0.5', '12.0', '1.23k', '2.50MB', '-', '-')
    """
    if x is None or math.isnan(x):
        return "-"
    for div, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.2f}{prefix}{unit}"
    return f"{x:.{digits}f}{unit}"


def _ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{x * 1000:.1f} ms"


def _by(values: Mapping[str, float], fmt: Callable[[float], str], limit: int = 6) -> str:
    if not values:
        return "-"
    top = sorted(values.items(), key=lambda kv: -kv[1])[:limit]
    more = f" (+{len(values) - limit} more)" if len(values) > limit else ""
    return "  ".join(f"{k or 'all'} {fmt(v)}" for k, v in top) + more


def render(s: Summary) -> str:
    """Format a :class:`Summary` as a compact block of text (no colours, fits 100 columns).

    Examples
    --------
    >>> text = 'streamseq_events_consumed_total{topic="t",kind="sensor"} %d\\n'
    >>> a, b = parse_metrics(text % 0, t=0.0), parse_metrics(text % 50, t=2.0)
    >>> print(render(summarize(a, b, "http://x/metrics")).splitlines()[2])
    events/s    consumed 25.0   published 0.0   dead letters 0.0
    """
    build = s.build
    head = (f"streamseq top  {s.url}  interval {s.interval:.1f}s"
            + (f"  version {build.get('version', '?')} {build.get('cell', '?')}"
               f"/{build.get('hidden', '?')}" if build else ""))
    broker = {None: "?", 1.0: "connected", 0.0: "DISCONNECTED"}.get(s.up_broker, "?")
    lines = [
        head,
        f"broker      {broker}   shards {_num(s.shards, digits=0)}",
        f"events/s    consumed {_num(s.consumed)}   published {_num(s.published)}"
        f"   dead letters {_num(s.dead_letters)}",
        f"rejected/s  {_by(s.rejected, _num)}",
    ]
    if s.dropped:
        lines.append(f"dropped/s   {_by(s.dropped, _num)}")
    if s.lag:
        parts = []
        for topic, partitions in s.lag.items():
            shown = sorted(partitions.items(), key=lambda kv: -kv[1])[:8]
            more = " ..." if len(partitions) > 8 else ""
            detail = " ".join(f"{p}:{_num(v, digits=0)}" for p, v in
                              sorted(shown, key=lambda kv: _int_or_str(kv[0])))
            parts.append(f"{topic} {_num(sum(partitions.values()), digits=0)} [{detail}{more}]")
        lines.append(f"lag         total {_num(s.lag_total, digits=0)}   " + "   ".join(parts))
    else:
        lines.append("lag         -")
    if s.latency:
        lat = "   ".join(f"{k} p50 {_ms(p50)} p99 {_ms(p99)} (n={_num(n, digits=0)})"
                         for k, (p50, p99, n) in s.latency.items())
        lines.append(f"latency     {lat}")
    else:
        lines.append("latency     - (no prediction in the interval)")
    kinds = sorted(set(s.mae) | set(s.mae_interval))
    if kinds:
        lines.append("accuracy    kind      MAE model  MAE persistence  ratio   (interval: model"
                     " / persistence)")
        for kind in kinds:
            m = s.mae.get(kind, {})
            model, pers = m.get("model"), m.get("persistence")
            ratio = model / pers if model is not None and pers else None
            w = s.mae_interval.get(kind, {})
            lines.append(
                f"            {kind:<9} {_num(model, digits=4):>9}  {_num(pers, digits=4):>15}"
                f"  {_num(ratio, digits=2):>5}   ({_num(w.get('model'), digits=4)}"
                f" / {_num(w.get('persistence'), digits=4)})")
    else:
        lines.append("accuracy    -")
    lines.append(
        f"state       keys {_by(s.keys, lambda v: _num(v, digits=0))}"
        f"   checkpoint age {_num(s.checkpoint_age, 's')}"
        + (f"   checkpoint FAILURES {_num(s.checkpoints_failed)}/s"
           if s.checkpoints_failed > 0 else ""))
    steps = {k: v.get("applied", 0.0) for k, v in s.updates.items()}
    skipped = {k: v.get("skipped_nonfinite", 0.0) for k, v in s.updates.items()
               if v.get("skipped_nonfinite", 0.0) > 0}
    lines.append(
        f"training    loss {_by(s.loss, lambda v: f'{v:.4g}')}"
        f"   grad norm {_by(s.grad_norm, lambda v: f'{v:.3g}')}"
        f"   steps/s {_by(steps, _num)}"
        + (f"   SKIPPED/s {_by(skipped, _num)}" if skipped else ""))
    cpu = "-" if s.cpu is None else f"{s.cpu * 100:.0f}%"
    lines.append(f"process     cpu {cpu}   rss {_num(s.rss, 'B')}")
    return "\n".join(lines)


def _metrics_url(url: str) -> str:
    """Accept ``host:port`` or a base URL and point at /metrics.

    Examples
    --------
    >>> _metrics_url("localhost:9400"), _metrics_url("http://h:1/"), _metrics_url("http://h/x")
    ('http://localhost:9400/metrics', 'http://h:1/metrics', 'http://h/x')
    """
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.path in ("", "/"):
        parts = parts._replace(path="/metrics")
    return urllib.parse.urlunsplit(parts)


def _run(args: argparse.Namespace) -> int:
    url = _metrics_url(args.url)
    if args.interval <= 0:
        print("streamseq top: --interval must be positive", file=sys.stderr)
        return 2
    if args.once:
        return _run_once(url, args.interval, args.timeout)
    return _run_live(url, args.interval, args.timeout)


def _run_once(url: str, interval: float, timeout: float) -> int:
    try:
        before = scrape(url, timeout=timeout)
        time.sleep(interval)
        after = scrape(url, timeout=timeout)
    except OSError as exc:
        print(f"streamseq top: cannot scrape {url}: {exc}", file=sys.stderr)
        return 1
    print(render(summarize(before, after, url)), flush=True)
    return 0


def _run_live(url: str, interval: float, timeout: float) -> int:
    clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""
    previous: Snapshot | None = None
    try:
        while True:
            try:
                current = scrape(url, timeout=timeout)
            except OSError as exc:
                print(f"{clear}streamseq top: cannot scrape {url}: {exc} (retrying)", flush=True)
                previous = None
            else:
                if previous is not None:
                    print(clear + render(summarize(previous, current, url)), flush=True)
                    if not clear:
                        print(flush=True)
                previous = current
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``streamseq top`` to the CLI."""
    p = subparsers.add_parser(
        "top",
        help="live terminal summary of a running service's /metrics",
        description="Scrape a streamseq /metrics endpoint every --interval seconds and show "
                    "rates, lag, latency, accuracy against persistence and training health.",
    )
    p.add_argument("--url", default=DEFAULT_URL,
                   help=f"metrics endpoint, or host:port (default {DEFAULT_URL})")
    p.add_argument("--interval", type=float, default=2.0,
                   help="seconds between scrapes; rates are over this interval (default 2)")
    p.add_argument("--once", action="store_true",
                   help="print one summary (two scrapes --interval apart) and exit")
    p.add_argument("--timeout", type=float, default=5.0, help="HTTP timeout in seconds")
    p.set_defaults(func=_run)
