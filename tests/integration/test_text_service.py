"""Text topics through the real service: a surprise score per message, class probabilities
when a message arrives, learning when its (late) label arrives, dead letters for labels of
unknown ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.harness import ServiceProcess, TopicReader, produce

pytestmark = pytest.mark.integration


def test_text_topic_scores_messages_and_learns_late_labels(broker, unique: str,
                                                           tmp_path: Path) -> None:
    text, pred, dead = f"text-{unique}", f"pred-{unique}", f"dead-{unique}"
    broker.create_topics({text: 1, pred: 1, dead: 1})
    msgs = []
    sentences = ["a fine film", "a dull film", "fine acting", "dull plot", "truly fine"]
    for i in range(40):
        s = sentences[i % len(sentences)]
        msgs.append(("reviews", json.dumps({"kind": "text", "key": "reviews", "ts": 1000 * i,
                                            "text": s, "id": f"m{i}"}).encode(), 1000 * i))
        if i >= 3:  # labels arrive three messages late
            j = i - 3
            label = "pos" if "fine" in sentences[j % len(sentences)] else "neg"
            msgs.append(("reviews", json.dumps({"kind": "label", "key": "reviews",
                                                "ts": 1000 * i + 1, "id": f"m{j}",
                                                "label": label}).encode(), 1000 * i + 1))
    msgs.append(("reviews", b'{"kind": "label", "key": "reviews", "ts": 99999, "id": "nope", '
                            b'"label": "pos"}', 99999))
    args = ["--bootstrap", broker.bootstrap, "--text-topic", text, "--text-classifier",
            "--prediction-topic", pred, "--dead-letter-topic", dead, "--group", f"g-{unique}",
            "--checkpoint-dir", str(tmp_path / "ckpt"), "--session-timeout-ms", "6000",
            "--heartbeat-interval-ms", "1000"]
    with ServiceProcess(args, tmp_path / "svc.log").start() as svc:
        svc.wait_ready(shards=1)
        produce(broker.bootstrap, text, msgs)
        with TopicReader(broker.bootstrap, pred) as reader:
            recs = reader.read_until(lambda r: len(r) >= 40 + 37, timeout=120)
        with TopicReader(broker.bootstrap, dead) as reader:
            dl = reader.read_until(lambda r: len(r) >= 1, timeout=60)
        # m37..m39 never get a label: three messages wait (0 when the service is down)
        svc.wait_until(lambda: svc.metric("streamseq_text_pending_labels") == 3,
                       timeout=30, what="3 messages waiting for their labels")
        assert svc.terminate() == 0
    outs = [r.json() for r in recs]
    scored = [o for o in outs if o["kind"] == "text"]
    learned = [o for o in outs if o["kind"] == "label"]
    assert len(scored) == 40 and len(learned) == 37
    assert all(o["nll_per_char"] > 0 and set(o["probs"]) <= {"pos", "neg"} for o in scored)
    assert {o["message_id"] for o in learned} == {f"m{j}" for j in range(37)}
    assert len({o["id"] for o in outs}) == len(outs)  # deterministic, distinct ids
    assert dl[0].headers["streamseq.reason"] == b"bad_label"
