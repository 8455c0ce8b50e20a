"""The one pipeline step (streamseq/pipeline.py) and the shard adapters (streamseq/shards.py).

Checked against independent oracles: the prediction bytes against ``json.dumps`` of the
record built field by field from the engine's output; the metric increments against the
engine's own counters before and after; the outcome of every record against the decoder
and the engine called by hand.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamseq.config import EngineConfig, LearnerConfig, ModelConfig
from streamseq.engine import Engine, EngineOutput
from streamseq.events import Event, EventDecoder
from streamseq.forecast import EXPERTS
from streamseq.pipeline import InputRecord, RecordDecoder, apply, apply_events
from streamseq.predictions import PredictionEncoder
from streamseq.shards import NumericShard, TextShard, engine_deltas

T0 = 1_704_067_200_000
MIN = 60_000
CFG = EngineConfig(model=ModelConfig(hidden=8), learner=LearnerConfig(k1=1, k2=2,
                                                                      batch_windows=2))


def _payload(key: str, minute: int, x: float | None) -> bytes:
    return json.dumps({"key": key, "ts": T0 + minute * MIN, "values": {"x": x}}).encode()


def _records(n: int, bad_every: int = 0) -> list[InputRecord]:
    out = []
    for i in range(n):
        value = b"{nope" if bad_every and i % bad_every == bad_every - 1 else _payload(
            f"k{i % 3}", i // 3, float(i % 5))
        out.append(InputRecord("sensors", 2, 100 + i, T0 + i, value, f"k{i % 3}".encode()))
    return out


def _reference_record(ev: Event, out: EngineOutput, row: int, src: InputRecord,
                      targets: tuple[str, ...]) -> dict[str, Any]:
    """The prediction record as the contract defines it, built field by field."""
    def per_target(values: np.ndarray) -> dict[str, list[float | None]]:
        rounded = np.round(values, 10)  # what the contract's encoder always did
        return {name: [None if not math.isfinite(v) else float(v) for v in rounded[:, j]]
                for j, name in enumerate(targets)}

    rec: dict[str, Any] = {
        "id": f"{src.topic}:{src.partition}:{src.offset}", "key": ev.key, "kind": ev.kind,
        "event_ts": ev.ts_ms, "target_ts": [int(t) for t in out.target_ts[row]],
        "horizon": int(out.yhat.shape[1]), "yhat": per_target(out.yhat[row]),
        "lo": per_target(out.lo[row]), "hi": per_target(out.hi[row]),
        "model_version": int(out.version[row]),
        "source": {"topic": src.topic, "partition": src.partition, "offset": src.offset}}
    if out.weights is not None:
        w = np.round(out.weights[row], 6)  # [step, target, expert]
        rec["weights"] = {name: {e: [float(x) if math.isfinite(x) else None for x in w[:, j, k]]
                                 for k, e in enumerate(EXPERTS)}
                          for j, name in enumerate(targets)}
    return rec


# ---------------------------------------------------------------------------- records
@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("weights", [False, True])
@pytest.mark.parametrize("horizon", [1, 3])
def test_prediction_bytes_are_the_contract_record(horizon: int, weights: bool,
                                                  mixed: bool) -> None:
    """``mixed``: sources of several topics and partitions in one call, and a key cache
    smaller than the call's keys (cleared while encoding)."""
    cfg = CFG.replace(**{"model.horizon": horizon, "forecast.weights": weights})
    engine = Engine(cfg)
    events = [Event("sensor", key, T0 + i * MIN, {"x": float(i % 4), "y": None if i % 7 else 1.0})
              for i, key in enumerate(["a", "b\u00e9\"q", "c\\d"] * 10)]
    events[4] = events[1]  # a duplicate: dropped, so the forecasts are not every event's
    sources = [InputRecord(f"sen%sors{i % 2}" if mixed else "sensors", i % 3 if mixed else 5,
                           1000 + i) for i in range(len(events))]
    out = engine.process(events)
    encoder = PredictionEncoder("sensor", max_cached_keys=2 if mixed else 200_000)
    preds = encoder.encode(events, out, engine.target_names, sources)
    assert encoder.encode(events, out, engine.target_names, sources) == preds  # cache warm
    assert len(preds) == len(out.index) == len(events) - 1
    for row, i in enumerate(out.index.tolist()):
        want = _reference_record(events[i], out, row, sources[i], engine.target_names)
        assert preds[row].value == json.dumps(want, separators=(",", ":")).encode()
        assert preds[row].key == events[i].key.encode()


@settings(deadline=None, database=None, derandomize=True, max_examples=60,
          suppress_health_check=list(HealthCheck))
@given(values=st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.just(1e16),
                       min_size=1, max_size=6))
def test_any_forecast_value_serialises_like_json(values: list[float]) -> None:
    n = len(values)
    out = EngineOutput(np.arange(n), np.array(values, dtype=np.float64).reshape(n, 1, 1),
                       np.zeros((n, 1, 1)), np.zeros((n, 1, 1)), np.ones((n, 1, 1)),
                       np.full((n, 1), T0), np.arange(n))
    out.lo, out.hi = out.yhat[::-1].copy(), -out.yhat  # any values, in the interval fields
    events = [Event("sensor", "k", T0 + i, {"v": 0.0}) for i in range(n)]
    sources = [InputRecord("t", 0, i) for i in range(n)]
    preds = PredictionEncoder("sensor").encode(events, out, ("v",), sources)
    for row, p in enumerate(preds):
        want = _reference_record(events[row], out, row, sources[row], ("v",))
        assert p.value == json.dumps(want, separators=(",", ":"), allow_nan=False).encode()


# ---------------------------------------------------------------------------- the step
def test_every_record_is_predicted_dead_lettered_or_dropped_in_any_chunking() -> None:
    records = _records(90, bad_every=7)
    records.insert(30, records[29]._replace(offset=999))  # an exact repeat: dropped
    records = [r._replace(offset=100 + i) for i, r in enumerate(records)]
    decoder = RecordDecoder(EventDecoder())
    outcomes = []
    for chunk in (1, 13, len(records)):
        shard = NumericShard(CFG)
        got: dict[int, str] = {}
        values = {}
        for lo in range(0, len(records), chunk):
            step = apply(records[lo:lo + chunk], decoder, shard)
            assert step.next_offset == records[min(lo + chunk, len(records)) - 1].offset + 1
            for p in step.predictions:
                off = json.loads(p.value)["source"]["offset"]
                got[off] = "predict"
                values[off] = json.loads(p.value)["yhat"]
            for d in step.dead_letters:
                got[d.record.offset] = d.error.reason
            for r, reason in step.dropped:
                got[r.offset] = reason
        assert sorted(got) == [r.offset for r in records]
        outcomes.append((got, values))
    for got, values in outcomes[1:]:  # the same verdicts; values equal up to float32 rounding
        assert got == outcomes[0][0]
        for off, yhat in values.items():
            assert yhat["x"] == pytest.approx(outcomes[0][1][off]["x"], rel=1e-5, abs=1e-6)
    assert Counter(outcomes[0][0].values()) == {"predict": 78, "not_json": 12, "duplicate": 1}


def test_deltas_count_what_the_call_did() -> None:
    shard = NumericShard(CFG)
    engine = shard.engine
    records = _records(60, bad_every=10)
    total = Counter()
    for lo in range(0, 60, 25):
        before = engine.stats.to_dict()
        step = apply(records[lo:lo + 25], RecordDecoder(EventDecoder()), shard)
        after = engine.stats
        d = step.deltas
        assert d.consumed == len(records[lo:lo + 25])
        assert d.predictions == len(step.predictions)
        assert d.updates_applied == after.updates_applied - before["updates_applied"]
        assert d.scored == after.z_scored - before["z_scored"]
        assert d.abs_error_model == pytest.approx(after.z_abs_model - before["z_abs_model"])
        assert d.abs_error_persistence == pytest.approx(
            after.z_abs_persistence - before["z_abs_persistence"])
        total.update(d.rejected)
    assert total == {"not_json": 6}
    assert engine.stats.updates_applied > 0


def test_records_before_the_next_offset_are_skipped_and_not_counted() -> None:
    shard = NumericShard(CFG)
    decoder = RecordDecoder(EventDecoder())
    records = _records(20)
    first = apply(records[:12], decoder, shard)
    again = apply(records[8:], decoder, shard, next_offset=first.next_offset)
    assert again.deltas.consumed == 8
    assert [json.loads(p.value)["source"]["offset"] for p in again.predictions] == [
        r.offset for r in records[12:]]


def test_record_rules_tombstone_and_far_future() -> None:
    decoder = RecordDecoder(EventDecoder(), max_future_ms=MIN)
    recs = [InputRecord("s", 0, 0, T0, None),
            InputRecord("s", 0, 1, T0, _payload("a", 2, 1.0)),  # 2 minutes ahead of its record
            InputRecord("s", 0, 2, T0, _payload("a", 1, 1.0)),  # exactly at the bound
            InputRecord("s", 0, 3, None, _payload("a", 500, 1.0))]  # no record time: no check
    step = apply(recs, decoder, NumericShard(CFG))
    assert [(d.record.offset, d.error.reason) for d in step.dead_letters] == [
        (0, "not_json"), (1, "bad_time")]
    assert len(step.predictions) == 2


def test_backtest_entry_takes_decoded_events() -> None:
    events = [Event("sensor", "a", T0 + i * MIN, {"x": float(i)}) for i in range(10)]
    step = apply_events(events, [InputRecord("file", 0, i) for i in range(10)], NumericShard(CFG))
    assert step.next_offset == 10 and len(step.predictions) == 10 and step.deltas.consumed == 10


def test_engine_deltas_of_an_empty_call() -> None:
    engine = Engine(CFG)
    d = engine_deltas(engine.process([]))
    assert (d.scored, d.updates_applied, d.predictions) == (0, 0, 0)


# ---------------------------------------------------------------------------- text
def test_text_shard_ids_versions_and_refusals() -> None:
    from streamseq.text.config import ClassifierConfig, LMConfig, TextEngineConfig
    from streamseq.text.events import TextDecoder

    shard = TextShard(TextEngineConfig(lm=LMConfig(hidden=8, embed_dim=4),
                                       classifier=ClassifierConfig(hidden=4, embed_dim=4)))
    docs = [{"kind": "text", "key": "r", "ts": 1, "text": "good", "id": "m1"},
            {"kind": "label", "key": "r", "ts": 2, "id": "m1", "label": "pos"},
            {"kind": "label", "key": "r", "ts": 3, "id": "zz", "label": "pos"},
            {"kind": "text", "key": "r", "ts": 4, "text": "fine", "id": "m2", "label": "neg"}]
    recs = [InputRecord("texts", 0, i, 10, json.dumps(d).encode()) for i, d in enumerate(docs)]
    step = apply(recs, RecordDecoder(TextDecoder()), shard)
    out = [json.loads(p.value) for p in step.predictions]
    assert [o["id"] for o in out] == ["texts:0:0", "texts:0:1", "texts:0:3", "texts:0:3#1"]
    assert [o["kind"] for o in out] == ["text", "label", "text", "label"]
    assert out[1]["message_id"] == "m1"
    assert [(d.record.offset, d.error.reason) for d in step.dead_letters] == [(2, "bad_label")]
    assert step.deltas.rejected == {"bad_label": 1}
    assert {g.name for g in step.gauges} >= {"streamseq_text_lm_log_loss",
                                             "streamseq_text_accuracy"}
    assert shard.model_version == out[-1]["model_version"]


def test_a_shard_state_dict_is_a_copy() -> None:
    """The service writes snapshots in the background while the shard runs on: a
    ``state_dict()`` must share no memory with the live engine (its bytes do not change when
    the shard processes more events), for every kind of shard."""
    from streamseq.state.checkpoint import dumps
    from streamseq.text.config import ClassifierConfig, LMConfig, TextEngineConfig
    from streamseq.text.events import TextDecoder

    numeric = NumericShard(CFG)
    sensor = EventDecoder(kind="sensor")
    text = TextShard(TextEngineConfig(lm=LMConfig(hidden=8, embed_dim=4),
                                      classifier=ClassifierConfig(hidden=4, embed_dim=4)))

    def sensor_records(lo: int, hi: int) -> list[InputRecord]:
        return [InputRecord("s", 0, i, 10, json.dumps(
            {"kind": "sensor", "sensor_id": f"k{i % 5}", "ts": 60_000 * i,
             "values": {"temp": float(i % 7)}}).encode()) for i in range(lo, hi)]

    def text_records(lo: int, hi: int) -> list[InputRecord]:
        return [InputRecord("t", 0, i, 10, json.dumps(
            {"kind": "text", "key": f"r{i % 3}", "ts": i, "text": f"word {i} again",
             "id": f"m{i}", "label": "pos" if i % 2 else "neg"}).encode())
            for i in range(lo, hi)]

    for shard, decoder, records in ((numeric, RecordDecoder(sensor), sensor_records),
                                    (text, RecordDecoder(TextDecoder()), text_records)):
        apply(records(0, 200), decoder, shard)
        state = shard.state_dict()
        before = dumps(state)
        apply(records(200, 400), decoder, shard)
        assert dumps(state) == before, shard.kind
