"""Simulators, fault injection, truth file, replay and pacing (no broker needed)."""

from __future__ import annotations

import doctest
import importlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict

import numpy as np
import pytest

from simulators.faults import FaultInjector, FaultRates
from simulators.output import Pacer, dry_run
from simulators.prices import PriceSimulator
from simulators.replay import event_payload, replay_messages
from simulators.sensors import AnomalyRates, SensorSimulator
from simulators.truth import TruthWriter, read_truth
from streamseq.cli import main
from streamseq.events import EventDecoder, EventError
from streamseq.io.files import FileLayout, RowErrors, read_events

DECODER = EventDecoder()
REJECTED_FAULTS = {"malformed", "nan", "missing_field"}


@pytest.mark.parametrize("module", ["output", "truth", "faults", "sensors", "prices", "replay"])
def test_module_doctests(module):
    """The docstring examples run even where pytest's testpaths leave simulators/ out."""
    mod = importlib.import_module(f"simulators.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def cli_stdout(capsysbinary: pytest.CaptureFixture[bytes], argv: list[str]) -> bytes:
    capsysbinary.readouterr()
    assert main(argv) == 0
    return capsysbinary.readouterr().out


def lines(out: bytes) -> list[bytes]:
    return out.splitlines()


# -- reproducibility ---------------------------------------------------------------------------
SENSOR_ARGS = ["simulate", "sensors", "--sensors", "7", "--values", "temp,hum", "--count", "3000",
               "--anomaly-rate", "0.002", "--duplicate-rate", "0.01", "--out-of-order-rate", "0.01",
               "--malformed-rate", "0.01", "--nan-rate", "0.01", "--missing-field-rate", "0.01",
               "--dry-run"]


def test_sensor_cli_dry_run_is_reproducible_byte_for_byte(capsysbinary, tmp_path):
    a = cli_stdout(capsysbinary, [*SENSOR_ARGS, "--seed", "11", "--truth", str(tmp_path / "a")])
    b = cli_stdout(capsysbinary, [*SENSOR_ARGS, "--seed", "11", "--truth", str(tmp_path / "b")])
    c = cli_stdout(capsysbinary, [*SENSOR_ARGS, "--seed", "12"])
    assert len(lines(a)) == 3000
    assert a == b
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
    assert a != c


def test_sensor_api_matches_cli(capsysbinary):
    out = cli_stdout(capsysbinary, ["simulate", "sensors", "--sensors", "5", "--n-values", "3",
                                    "--count", "1000", "--seed", "3", "--dry-run"])
    sim = SensorSimulator(5, ("v0", "v1", "v2"), seed=3)
    buf = io.BytesIO()
    assert dry_run(sim.messages(), buf, count=1000) == 1000
    assert buf.getvalue() == out
    # a payload is exactly the compact json.dumps of what it decodes to
    first = lines(out)[0]
    assert json.dumps(json.loads(first), separators=(",", ":")).encode() == first


@pytest.mark.parametrize("extra", [[], ["--bars", "--bar-seconds", "300"]])
def test_price_cli_dry_run_is_reproducible(capsysbinary, extra):
    argv = ["simulate", "prices", "--symbols", "3", "--count", "2000", "--seed", "5",
            "--dry-run", *extra]
    a = cli_stdout(capsysbinary, argv)
    assert a == cli_stdout(capsysbinary, argv)
    assert len(lines(a)) == 2000
    assert a != cli_stdout(capsysbinary, [*argv, "--seed", "6"])
    sim = PriceSimulator(3, seed=5, bars=bool(extra), bar_seconds=300.0)
    buf = io.BytesIO()
    dry_run(sim.messages(), buf, count=2000)
    assert buf.getvalue() == a


def test_count_prefix_property():
    """A shorter run is a prefix of a longer one (also with faults and truth)."""
    def run(n: int) -> tuple[bytes, str]:
        truth, out = io.StringIO(), io.BytesIO()
        tw = TruthWriter(truth)
        inj = FaultInjector(FaultRates(duplicate=0.05), seed=1)
        sim = SensorSimulator(4, seed=9, anomalies=AnomalyRates(spike=0.01))
        dry_run(inj.apply(sim.messages(tw), tw), out, count=n)
        return out.getvalue(), truth.getvalue()

    short, long_ = run(200), run(2000)
    assert long_[0].startswith(short[0])
    assert long_[1].startswith(short[1])


def test_anomalies_do_not_change_the_noise_stream():
    clean = SensorSimulator(3, seed=4, steps=50)
    spiky = SensorSimulator(3, seed=4, steps=50, anomalies=AnomalyRates(spike=0.05))
    a = [DECODER.decode(p).values["value"] for _, p, _ in clean.messages()]
    b = [DECODER.decode(p).values["value"] for _, p, _ in spiky.messages()]
    differ = sum(x != y for x, y in zip(a, b, strict=True))
    assert 0 < differ < len(a) * 0.15


# -- events are valid and in time order --------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: SensorSimulator(20, ("a", "b"), seed=1, steps=300),
    lambda: SensorSimulator(3, seed=2, steps=500, interval=1.0, jitter=0.5,
                            anomalies=AnomalyRates.uniform(0.005)),
    lambda: PriceSimulator(5, seed=3, steps=4000),
    lambda: PriceSimulator(["AAA", "BBB"], seed=3, steps=500, bars=True),
], ids=["sensors", "sensors-anomalies", "ticks", "bars"])
def test_generated_events_decode_and_are_in_time_order(make):
    sim = make()
    last: dict[str, int] = {}
    prev_ts = -1
    n = 0
    for key, payload, ts in sim.messages():
        ev = DECODER.decode(payload)
        assert (ev.key, ev.ts_ms) == (key, ts)
        assert ts >= prev_ts, "keys are interleaved in event-time order"
        assert ts > last.get(key, -1), "a key's event times strictly increase"
        prev_ts = last[key] = ts
        if ev.kind == "price":
            v = ev.values
            if "close" in v:
                assert v["low"] <= min(v["open"], v["close"]) <= max(v["open"], v["close"]) \
                    <= v["high"]
                assert v["volume"] > 0
            else:
                assert v["price"] > 0 and v["size"] >= 1
        n += 1
    assert n > 100
    assert len(last) == (sim.n_sensors if hasattr(sim, "n_sensors") else len(sim.symbols))


def test_sensor_seasonality_is_learnable():
    """Noise is white around a smooth signal: the signal beats persistence by far."""
    truth = io.StringIO()
    sim = SensorSimulator(1, seed=8, steps=3000)
    obs = np.array([DECODER.decode(p).values["value"] for _, p, _ in
                    sim.messages(TruthWriter(truth))])
    sig = np.array([r["signal"]["value"] for r in map(json.loads, truth.getvalue().splitlines())])
    persistence = np.mean(np.diff(obs) ** 2)
    oracle = np.mean((obs[1:] - sig[1:]) ** 2)
    assert oracle < 0.6 * persistence


# -- faults ------------------------------------------------------------------------------------
def test_faults_appear_at_the_asked_rate_and_are_marked(tmp_path):
    rates = FaultRates(out_of_order=0.02, duplicate=0.03, malformed=0.02, nan=0.025,
                       missing_field=0.015)
    n_in = 20_000
    sim = SensorSimulator(50, ("temp", "hum"), seed=21)
    with TruthWriter(tmp_path / "truth.jsonl") as tw:
        inj = FaultInjector(rates, seed=21, max_delay=4)
        src = (m for _, m in zip(range(n_in), sim.messages(tw), strict=False))
        out = list(inj.apply(src, tw))
    truth = read_truth(tmp_path / "truth.jsonl")
    faults = [r for r in truth if r["type"] == "fault"]
    by_kind = Counter(r["fault"] for r in faults)
    assert by_kind == inj.counts
    for kind in ("out_of_order", "duplicate", "malformed", "nan", "missing_field"):
        expected = getattr(rates, kind) * n_in
        assert abs(by_kind[kind] - expected) < 0.25 * expected, (kind, by_kind[kind], expected)
    assert len(out) == n_in + by_kind["duplicate"]
    assert sum(r["type"] == "event" for r in truth) == n_in

    marked = {r["seq"]: r for r in faults}
    rejected = Counter()
    max_ts = -1
    for seq, (key, payload, ts) in enumerate(out):
        rec = marked.get(seq)
        if rec is not None:
            assert (rec["key"], rec["ts"]) == (key, ts)
        if rec is not None and rec["fault"] in REJECTED_FAULTS:
            assert b"\n" not in payload
            with pytest.raises(EventError) as err:
                DECODER.decode(payload)
            rejected[err.value.reason] += 1
            if rec["fault"] == "nan":
                assert err.value.reason == "non_finite" and b"NaN" in payload
            if rec["fault"] == "missing_field":
                assert err.value.reason in ("missing_key", "missing_time", "no_values")
        else:
            ev = DECODER.decode(payload)  # every other message is a valid event
            assert (ev.key, ev.ts_ms) == (key, ts)
        if rec is not None and rec["fault"] == "duplicate":
            assert out[seq - 1] == out[seq] and rec["of_seq"] == seq - 1
        if rec is not None and rec["fault"] == "out_of_order":
            assert rec["delay"] >= 1 and ts < max_ts  # later than newer messages
        else:
            assert ts >= max_ts
        max_ts = max(max_ts, ts)
    assert {"not_json", "not_utf8"} & set(rejected)
    assert {"missing_key", "missing_time", "no_values"} <= set(rejected)


def test_cli_faults_in_truth_file(capsysbinary, tmp_path):
    truth = tmp_path / "t.jsonl"
    out = cli_stdout(capsysbinary, ["simulate", "prices", "--symbols", "4", "--count", "10000",
                                    "--seed", "2", "--dry-run", "--truth", str(truth),
                                    "--nan-rate", "0.05", "--malformed-rate", "0.05"])
    msgs = lines(out)
    faults = [r for r in read_truth(truth) if r["type"] == "fault"]
    for kind in ("nan", "malformed"):
        k = sum(r["fault"] == kind for r in faults)
        assert 350 < k < 650, (kind, k)
    bad = {r["seq"] for r in faults}
    for seq, payload in enumerate(msgs):
        if seq in bad:
            with pytest.raises(EventError):
                DECODER.decode(payload)
        else:
            DECODER.decode(payload)


def test_fault_rates_are_validated(capsysbinary):
    with pytest.raises(ValueError):
        FaultRates(duplicate=0.7, nan=0.5)
    assert main(["simulate", "sensors", "--dry-run", "--count", "1",
                 "--duplicate-rate", "0.7", "--nan-rate", "0.5"]) == 2


# -- anomalies and truth -----------------------------------------------------------------------
def test_sensor_anomalies_are_in_the_truth_and_in_the_data(tmp_path):
    n_sensors, steps, rate = 30, 2000, 0.002
    sim = SensorSimulator(n_sensors, ("x", "y"), seed=5, steps=steps, interval=60.0,
                          anomalies=AnomalyRates.uniform(rate), stuck_steps=10,
                          dropout_steps=20)
    path = tmp_path / "truth.jsonl"
    with TruthWriter(path) as tw:
        events = [DECODER.decode(p) for _, p, _ in sim.messages(tw)]
    truth = read_truth(path)
    anomalies = [r for r in truth if r["type"] == "anomaly"]
    count = Counter(r["anomaly"] for r in anomalies)
    for kind in ("level_shift", "drift", "variance_burst", "stuck", "spike"):
        expected = rate * n_sensors * steps * 2
        assert abs(count[kind] - expected) < 0.3 * expected, (kind, count[kind], expected)
    assert abs(count["dropout"] - rate * n_sensors * steps) < 0.3 * rate * n_sensors * steps

    ev_truth = {(r["key"], r["ts"]): r for r in truth if r["type"] == "event"}
    assert len(ev_truth) == len(events)
    by_key: dict[str, list] = defaultdict(list)
    for ev in events:
        by_key[ev.key].append(ev)

    # dropouts: nothing from that sensor inside the gap
    for r in anomalies:
        if r["anomaly"] == "dropout":
            inside = [e for e in by_key[r["key"]] if r["ts"] <= e.ts_ms < r["end_ts"] - 3000]
            assert not inside
    assert len(events) < n_sensors * steps

    # spikes stand out from the noise; stuck readings repeat
    resid: dict[tuple[str, str], list[float]] = defaultdict(list)
    spikes, stuck = [], defaultdict(list)
    for ev in events:
        t = ev_truth[(ev.key, ev.ts_ms)]
        for name, v in ev.values.items():
            labels = t.get("labels", {}).get(name, [])
            r = v - t["signal"][name]
            if "spike" in labels and "stuck" not in labels:
                spikes.append((ev.key, name, r))
            elif "stuck" in labels:
                stuck[(ev.key, name)].append(v)
            elif not labels:
                resid[(ev.key, name)].append(r)
    assert spikes
    big = [abs(r) > 3 * np.std(resid[(k, n)]) for k, n, r in spikes]
    assert np.mean(big) > 0.9
    repeated = sum(len(v) - len(set(v)) for v in stuck.values())
    assert repeated > 0.8 * sum(len(v) - 1 for v in stuck.values())


def test_price_truth_has_events_jumps_and_regimes(tmp_path):
    sim = PriceSimulator(3, seed=7, steps=3 * 86_400, jump_rate=4.0, calm_days=0.5,
                         stressed_days=0.25, weekends=True, tick_rate=0.05)
    path = tmp_path / "truth.jsonl"
    with TruthWriter(path) as tw:
        msgs = list(sim.messages(tw))
    truth = read_truth(path)
    kinds = Counter(r["type"] for r in truth)
    assert kinds["event"] == len(msgs)
    jumps = [r for r in truth if r.get("anomaly") == "jump"]
    assert 12 < len(jumps) < 72  # 3 symbols x 3 days x 4 / day = 36
    regimes = [r for r in truth if r["type"] == "regime"]
    assert regimes and len(regimes) % 3 == 0
    assert {r["regime"] for r in regimes} <= {"calm", "stressed"}
    assert [r["ts"] for r in truth] == sorted(r["ts"] for r in truth)
    ev = [r for r in truth if r["type"] == "event"]
    prices = np.array([json.loads(m[1])["price"] for m in msgs])
    signal = np.array([r["signal"]["price"] for r in ev])
    assert np.max(np.abs(prices - signal)) <= 0.01 + 1e-9  # half a tick bounce + rounding


# -- replay of the recorded layouts ------------------------------------------------------------
LAYOUTS = {
    # name: (relative path, limit per file, expected keys (None: file names), kind, fields)
    "nab": ("sensor/nab/data/realKnownCause", 50, None, "sensor", {"value"}),
    "beijing": ("sensor/beijing_air", 30, None, "sensor", {"PM2.5", "TEMP", "WSPM"}),
    "ett": ("sensor/ett", 40, {"ETTh1", "ETTh2", "ETTm1"}, "sensor", {"OT", "HUFL"}),
    "lean_ticks": ("price/lean_equity_ticks", 200, {"AIG", "BAC", "IBM", "SPY"}, "price",
                   {"price", "size"}),
    "lean_hourly": ("price/lean_equity_hourly", 50, {"AAPL", "AIG", "BAC", "IBM", "SPY"},
                    "price", {"open", "high", "low", "close", "volume"}),
    "fx_hourly": ("price/lean_fx_hourly", 50, {"EURUSD", "NZDUSD", "XAUUSD"}, "price",
                  {"bid_close", "ask_close"}),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_replay_of_each_recorded_layout(data_dir, name):
    rel, limit, keys, kind, fields = LAYOUTS[name]
    path = data_dir / rel
    layout = FileLayout(limit_per_file=limit)
    n_files = sum(1 for f in path.iterdir() if f.name.endswith((".csv", ".csv.gz")))
    errors = RowErrors()
    msgs = list(replay_messages([path], layout, errors=errors))
    assert len(msgs) == n_files * limit
    originals = list(read_events([path], layout))
    decoded = []
    per_key: dict[str, list[int]] = defaultdict(list)
    for (key, payload, ts), orig in zip(msgs, originals, strict=True):
        ev = EventDecoder(kind=kind).decode(payload)
        assert ev.kind == kind and (ev.key, ev.ts_ms) == (key, ts) == (orig.key, orig.ts_ms)
        assert ev.values == orig.values  # nothing lost on the wire
        assert fields <= set(ev.values)
        per_key[key].append(ts)
        decoded.append(ev)
    if keys is not None:
        assert set(per_key) == keys
    assert len(per_key) == (n_files if name != "lean_ticks" else 4)
    assert all(v == sorted(v) for v in per_key.values()), "per-key time order"
    stamps = [ts for _, _, ts in msgs]
    assert stamps == sorted(stamps), "keys interleaved by event time"
    assert all(len(v) == limit for v in per_key.values())


def test_replay_cli_layout_options(capsysbinary, data_dir, tmp_path):
    out = cli_stdout(capsysbinary, [
        "replay", str(data_dir / "sensor/ett/ETTh2.csv"), "--target", "OT", "--features",
        "HUFL", "--features", "HULL", "--limit", "10", "--tz", "UTC", "--dry-run"])
    evs = [DECODER.decode(x) for x in lines(out)]
    assert len(evs) == 10 and all(list(e.values) == ["OT", "HUFL", "HULL"] for e in evs)
    assert {e.key for e in evs} == {"ETTh2"}

    csv = tmp_path / "multi.csv"
    csv.write_text("when,dev,reading,other\n2024-01-01T00:00:00Z,a,1,x\n"
                   "2024-01-01T00:01:00Z,b,2,y\n2024-01-01T00:02:00Z,a,3,z\n")
    out = cli_stdout(capsysbinary, ["replay", str(csv), "--key-col", "dev", "--time-col",
                                    "when", "--values", "reading", "--kind", "price",
                                    "--dry-run"])
    evs = [EventDecoder(kind="price").decode(x) for x in lines(out)]
    assert [(e.key, e.kind, e.values) for e in evs] == [
        ("a", "price", {"reading": 1.0}), ("b", "price", {"reading": 2.0}),
        ("a", "price", {"reading": 3.0})]


def test_replay_loop_keeps_key_time_increasing(capsysbinary, data_dir):
    out = cli_stdout(capsysbinary, ["replay", str(data_dir / "sensor/ett"), "--limit", "5",
                                    "--loop", "--count", "45", "--dry-run"])
    evs = [DECODER.decode(x) for x in lines(out)]
    assert len(evs) == 45
    per_key: dict[str, list[int]] = defaultdict(list)
    for e in evs:
        per_key[e.key].append(e.ts_ms)
    assert all(len(v) == 15 and v == sorted(set(v)) for v in per_key.values())


def test_replay_jsonl_round_trip(tmp_path):
    src = SensorSimulator(3, ("a", "b"), seed=1, steps=20)
    path = tmp_path / "rec.jsonl"
    path.write_bytes(b"".join(p + b"\n" for _, p, _ in src.messages()))
    back = list(replay_messages([path]))
    orig = list(src.messages())
    assert [(k, t) for k, _, t in back] == [(k, t) for k, _, t in orig]
    assert [DECODER.decode(p) for _, p, _ in back] == [DECODER.decode(p) for _, p, _ in orig]
    assert event_payload(DECODER.decode(back[0][1])) == back[0][1]


def test_replay_reports_missing_files(tmp_path, caplog):
    assert main(["replay", str(tmp_path / "nope.csv"), "--dry-run"]) == 2


# -- pacing ------------------------------------------------------------------------------------
def _timed_cli(capsysbinary, argv: list[str]) -> tuple[float, list[bytes]]:
    capsysbinary.readouterr()
    t0 = time.monotonic()
    assert main(argv) == 0
    elapsed = time.monotonic() - t0
    return elapsed, lines(capsysbinary.readouterr().out)


def test_replay_speed_factor_is_respected(capsysbinary, tmp_path):
    csv = tmp_path / "fast.csv"
    rows = [f"{1_704_067_200_000 + 500 * i},{i}" for i in range(21)]  # 10 s of event time
    csv.write_text("ts,value\n" + "\n".join(rows) + "\n")
    elapsed, out = _timed_cli(capsysbinary, ["replay", str(csv), "--speed", "20", "--dry-run"])
    assert len(out) == 21
    assert 0.4 < elapsed < 5.0, elapsed  # 10 s / 20 = 0.5 s (upper bound: noisy machine)


def test_rate_limit_is_respected(capsysbinary):
    elapsed, out = _timed_cli(capsysbinary, ["simulate", "sensors", "--rate", "400", "--count",
                                             "201", "--dry-run"])
    assert len(out) == 201
    assert 0.42 < elapsed < 5.0, elapsed  # 200 intervals / 400 per s = 0.5 s


def test_duration_limit(capsysbinary):
    elapsed, out = _timed_cli(capsysbinary, ["simulate", "prices", "--rate", "200",
                                             "--duration", "0.5", "--dry-run"])
    assert 0.4 < elapsed < 5.0
    assert 1 <= len(out) <= 110  # never more than the rate allows


def test_pacer_rate_and_speed_combined():
    now = [0.0]
    p = Pacer(rate=2.0, speed=1.0, clock=lambda: now[0])
    assert p.delay(0) == 0.0
    assert p.delay(100) == pytest.approx(0.5)  # the rate is the tighter bound
    assert p.delay(5000) == pytest.approx(5.0)  # the event time is
    p = Pacer(speed=1.0, max_gap=2.0, clock=lambda: now[0])
    p.delay(0)
    assert p.delay(3_600_000) == pytest.approx(2.0)  # an hour's gap shortened to 2 s
    now[0] = 2.0
    assert p.delay(3_601_000) == pytest.approx(1.0)  # then event time again


def test_sigint_stops_cleanly_with_a_final_count():
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamseq", "simulate", "sensors", "--rate", "200",
         "--dry-run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        first = proc.stdout.readline()  # started and producing
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        out = first + out
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    n = len(out.splitlines())
    assert n >= 1
    assert f"simulate sensors: {n:,} events".encode() in err
    for line in out.splitlines():
        DECODER.decode(line)


def test_simulate_without_kind_prints_usage(capsys):
    assert main(["simulate"]) == 2
    assert "sensors" in capsys.readouterr().out


def test_unreachable_broker_fails_cleanly():
    from streamseq.broker import free_port

    code = main(["simulate", "sensors", "--count", "3", "--connect-timeout", "1",
                 "--bootstrap", f"127.0.0.1:{free_port()}"])
    assert code == 1
