"""Text streams: online LM and classifier, engine checkpoints, readers (issue 8).

Quick versions on slices of the real data in ``shared/data/text``; the figures on whole
sets are in ``bench/results/text.md`` (``python -m bench.text_bench``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from streamseq.cli import main as cli_main
from streamseq.events import EventError
from streamseq.exceptions import CheckpointError, ConfigError
from streamseq.text import (
    ClassifierConfig,
    LabelEvent,
    LMConfig,
    TextEngine,
    TextEngineConfig,
    TextEvent,
    decode_text_json,
)
from streamseq.text.backtest import (
    TextBacktestOptions,
    format_report,
    is_text_input,
    read_text_events,
    run_text_backtest,
)
from streamseq.text.baselines import BigramCharModel
from streamseq.text.bptt import DropoutMasks, WindowBatch, window_gradients
from streamseq.text.lm import TokenLanguageModel
from streamseq.text.naive_bayes import HashedNaiveBayes
from streamseq.text.scoring import CompiledScorer
from streamseq.text.vocab import Vocabulary

SHAKESPEARE_CHARS = 40_000
SMALL_LM = LMConfig(hidden=128, embed_dim=32, k1=32, k2=32, batch_windows=1, lr=3e-3)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Batch-1 RNN steps are fastest (and steadiest on a busy machine) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


ALL_EXPERTS = ("word_nb", "char_nb", "rnn")


def tiny_engine(lm: bool = True, clf: bool = True, dropout: float = 0.0, **clf_kw: Any
                ) -> TextEngine:
    clf_kw.setdefault("experts", ALL_EXPERTS)
    return TextEngine(TextEngineConfig(
        lm=LMConfig(hidden=16, embed_dim=8, k1=16, k2=24, dropout=dropout) if lm else None,
        classifier=ClassifierConfig(hidden=8, embed_dim=8, dropout=dropout, replay=2,
                                    nb_bits=12, **clf_kw) if clf else None))


def mixed_stream(n: int = 120, seed: int = 0) -> list[TextEvent | LabelEvent]:
    """Two keys, texts with ids, labels inline or 1..30 messages late, some never."""
    rng = random.Random(seed)
    words = ["good", "bad", "great", "awful", "fine", "boring", "film", "plot", "the", "a"]
    events: list[TextEvent | LabelEvent] = []
    due: list[tuple[int, LabelEvent]] = []
    for i in range(n):
        key = f"k{i % 2}"
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 8)))
        label = "pos" if ("good" in text or "great" in text) else "neg"
        mode = rng.random()
        if mode < 0.3:
            events.append(TextEvent(key, 1000 * i, text, f"m{i}", label))
        else:
            events.append(TextEvent(key, 1000 * i, text, f"m{i}"))
            if mode < 0.9:
                due.append((i + rng.randint(1, 30), LabelEvent(key, 1000 * i + 1, f"m{i}", label)))
        for d in [d for d in due if d[0] <= i]:
            events.append(d[1])
            due.remove(d)
    events.extend(e for _, e in due)
    return events


def assert_same_state(a: Any, b: Any, path: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            assert_same_state(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), path
    else:
        assert a == b, path


# -- events ----------------------------------------------------------------------------
@pytest.mark.parametrize(("payload", "reason"), [
    (b'{"kind": "text", "key": "s", "ts": 1}', "bad_text"),
    (b'{"kind": "text", "key": "s", "ts": 1, "text": 5}', "bad_text"),
    (b'{"kind": "text", "key": "s", "ts": 1, "text": "\\ud800"}', "bad_text"),
    (b'{"kind": "text", "key": "s", "ts": 1, "text": "x", "label": ""}', "bad_label"),
    (b'{"kind": "text", "key": "s", "ts": 1, "text": "x", "label": [1]}', "bad_label"),
    (b'{"kind": "label", "key": "s", "ts": 1, "id": "m1"}', "bad_label"),
    (b'{"kind": "label", "key": "s", "ts": 1, "label": "pos"}', "bad_label"),
    (b'{"kind": "text", "ts": 1, "text": "x"}', "missing_key"),
    (b'{"kind": "text", "key": "s", "text": "x"}', "missing_time"),
    (b'{"kind": "text", "key": "s", "ts": "soon", "text": "x"}', "bad_time"),
    (b'{"kind": "poem", "key": "s", "ts": 1, "text": "x"}', "bad_kind"),
    (b'[1]', "not_object"),
    (b'\xff', "not_utf8"),
])
def test_decoder_rejects_with_typed_reasons(payload: bytes, reason: str) -> None:
    with pytest.raises(EventError) as info:
        decode_text_json(payload)
    assert info.value.reason == reason


@pytest.mark.parametrize("config", [LMConfig, ClassifierConfig])
def test_every_float_setting_refuses_nan_and_infinities(config: type) -> None:
    floats = [f.name for f in dataclasses.fields(config) if isinstance(f.default, float)]
    assert "lr" in floats
    for name in floats:
        for bad in (float("nan"), float("inf"), -float("inf")):
            with pytest.raises(ConfigError, match=f"{name} must be a finite number"):
                config(**{name: bad})


def test_decoder_round_trips_wire_form() -> None:
    for ev in (TextEvent("s-1", 1_704_067_200_000, "héllo\nwörld", "m1", "pos"),
               TextEvent("s-1", 5, "x"), LabelEvent("s-1", 9, "m1", "neg")):
        assert decode_text_json(json.dumps(ev.to_json_dict())) == ev


def test_vocabulary_caps_and_round_trips() -> None:
    v = Vocabulary("word", max_size=6, lowercase=True)
    assert v.encode("The cat, the DOG") == [3, 4, 5, 3, 0]  # cap 6: 'dog' is unknown
    w = Vocabulary("word", max_size=6, lowercase=True)
    w.load_state_dict(v.state_dict())
    assert w.encode("dog cat") == [0, 4] and w.itos == v.itos
    with pytest.raises(CheckpointError):
        Vocabulary("char", max_size=6).load_state_dict(v.state_dict())


# -- predict, then learn ---------------------------------------------------------------
@pytest.mark.parametrize(("k1", "k2", "batch_windows"), [(16, 24, 1), (8, 8, 3), (5, 12, 2)])
def test_lm_scores_every_token_before_learning_it(k1: int, k2: int, batch_windows: int
                                                  ) -> None:
    """Instrumented: each target reaching the learner was scored (and its score recorded)
    earlier, at the same stream position; every scored token is learned exactly once."""
    eng = TextEngine(TextEngineConfig(lm=LMConfig(hidden=16, embed_dim=8, k1=k1, k2=k2,
                                                  batch_windows=batch_windows)))
    lm = eng.lm
    assert lm is not None
    scored: dict[str, list[int]] = defaultdict(list)
    learned: dict[str, list[int]] = defaultdict(list)
    predict, train = lm._predict, lm._train_due
    steps = []

    def spy_predict(key: str, st: Any, ids: list[int], known: int) -> float:
        nll = predict(key, st, ids, known)
        scored[key].extend(ids)  # the score of these tokens is recorded
        return nll

    def spy_train() -> None:
        steps.append(len(lm.due))
        for w in lm.due:
            new = w.targets[w.n_context:]
            assert len(new) == k1 and len(w.inputs) <= k2
            assert w.learn_pos + k1 <= len(scored[w.key]), "learning a token not yet scored"
            assert scored[w.key][w.learn_pos:w.learn_pos + k1] == new
            assert w.inputs[1:] == w.targets[:-1]  # inputs are the targets shifted: no peeking
            learned[w.key].extend(range(w.learn_pos, w.learn_pos + k1))
        train()

    lm._predict = spy_predict  # type: ignore[method-assign]
    lm._train_due = spy_train  # type: ignore[method-assign]
    rng = random.Random(1)
    for i in range(200):
        key = f"s{i % 3}"
        eng.process([TextEvent(key, i, "".join(rng.choice("abc \n") for _ in
                                               range(rng.randint(1, 40))))])
    queued = defaultdict(list)
    for w in lm.due:
        queued[w.key].extend(range(w.learn_pos, w.learn_pos + k1))
    for key, toks in scored.items():
        assert sorted(learned[key] + queued[key]) == list(range(len(learned[key]) + len(
            queued[key])))  # each once, in order
        assert len(toks) - len(learned[key]) - len(queued[key]) < k1
    assert set(steps) == {batch_windows} and eng.stats.lm_updates == len(steps)


def test_classifier_scores_prediction_before_learning_late_label() -> None:
    eng = tiny_engine(lm=False)
    clf = eng.classifier
    assert clf is not None
    published: dict[str, dict[str, float]] = {}
    current: dict[str, Any] = {}
    predict, learn_label, train = clf.predict_message, clf.learn_label, clf._train

    def spy_predict(key: str, ts: int, text: str, msg_id: str | None = None,
                    features: Any = None) -> dict:
        out = predict(key, ts, text, msg_id, features)
        if msg_id is not None:
            published[msg_id] = out["probs"]  # the prediction is recorded
        return out

    def spy_learn_label(key: str, ts: int, msg_id: str, label: str) -> dict[str, Any]:
        assert msg_id in published, "label reached the learner before its prediction"
        assert dict(zip(clf.classes, clf.pending[msg_id].probs, strict=False)) == \
            published[msg_id]  # the prediction scored is the one published
        current.update(id=msg_id, n=clf.metrics.n, pending=clf.pending[msg_id])
        return learn_label(key, ts, msg_id, label)

    def spy_train(p: Any, y: int) -> None:
        assert clf.metrics.n == current["n"] + 1, "learning before scoring"
        assert p is current["pending"]
        current["trained"] = current.get("trained", 0) + 1
        train(p, y)

    clf.predict_message = spy_predict  # type: ignore[method-assign]
    clf.learn_label = spy_learn_label  # type: ignore[method-assign]
    clf._train = spy_train  # type: ignore[method-assign]
    late = 0
    for ev in mixed_stream(150):
        late += isinstance(ev, LabelEvent)
        eng.process([ev])
    assert late > 50
    assert current["trained"] == eng.stats.clf_labels_learned > 100


# -- language model on tiny Shakespeare ------------------------------------------------
@pytest.fixture(scope="module")
def shakespeare(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One online pass over a slice of tiny Shakespeare (one message per line)."""
    path = data_dir / "text" / "tinyshakespeare" / "input.txt"
    ckpt = tmp_path_factory.mktemp("text") / "shakespeare.ckpt"
    report = run_text_backtest([path], TextBacktestOptions(
        limit_chars=SHAKESPEARE_CHARS, lm=SMALL_LM, save_checkpoint=str(ckpt)))
    return {"report": report, "checkpoint": ckpt}


def test_lm_beats_online_bigram_on_last_tenth(shakespeare: dict[str, Any]) -> None:
    lm = shakespeare["report"]["lm"]
    ours, bigram = lm["bits_per_char_last_tenth"], lm["bigram_bits_per_char_last_tenth"]
    print(f"\nlast tenth of {lm['chars']} chars: LSTM {ours:.3f} bits/char, "
          f"online KN bigram {bigram:.3f} bits/char ({lm['chars_per_s']:.0f} chars/s)")
    assert lm["chars"] == SHAKESPEARE_CHARS
    assert ours < bigram - 0.3
    assert lm["bits_per_char"] < 4.0 and lm["updates_skipped"] == 0


def test_generation_from_checkpoint_is_seeded_and_sized(shakespeare: dict[str, Any],
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    ckpt = shakespeare["checkpoint"]
    lm = TextEngine.from_checkpoint(ckpt).lm
    assert lm is not None
    a = lm.generate("ROMEO:", length=120, temperature=0.8, top_k=10, seed=7)
    b = TextEngine.from_checkpoint(ckpt).lm.generate(  # type: ignore[union-attr]
        "ROMEO:", length=120, temperature=0.8, top_k=10, seed=7)
    c = lm.generate("ROMEO:", length=120, temperature=0.8, top_k=10, seed=8)
    assert a == b and a != c and len(a) == 120
    assert len(lm.generate("", length=0)) == 0
    assert cli_main(["generate", "--checkpoint", str(ckpt), "--prompt", "ROMEO:",
                     "--length", "120", "--temperature", "0.8", "--top-k", "10",
                     "--seed", "7"]) == 0
    assert capsys.readouterr().out == "ROMEO:" + a + "\n"


def test_generation_draws_only_tokens_the_model_has_learned() -> None:
    """An LM that has read little: characters read but not yet learned as a target, and
    the ids no text filled, are never drawn, whatever the temperature, top-k or top-p."""
    from streamseq.text.exceptions import TextModelError

    eng = TextEngine(TextEngineConfig(lm=LMConfig(hidden=16, embed_dim=8, k1=8, k2=8,
                                                  batch_windows=1)))
    lm = eng.lm
    assert lm is not None
    eng.process([TextEvent("a", 0, "xyz")])  # read, not learned: no window fell due
    with pytest.raises(TextModelError):
        lm.generate("", length=5)
    eng.process([TextEvent("a", 1, "ababa")])  # 8 tokens: the first window is learned
    eng.process([TextEvent("b", 2, "QRST")])  # read on another stream, not learned
    learned = {lm.vocab.itos[i] for i in range(len(lm.vocab)) if lm.learned_counts[i] > 0}
    assert learned == set("xyzab")
    for seed in range(20):
        for kw in ({"temperature": 3.0}, {"temperature": 1.0, "top_k": 50},
                   {"temperature": 2.0, "top_p": 0.99}, {"temperature": 0}):
            text = lm.generate("ab", length=30, seed=seed, **kw)  # type: ignore[arg-type]
            assert len(text) == 30 and set(text) <= learned, (kw, text)
    restored = TextEngine(eng.config)
    restored.load_state_dict(eng.state_dict())
    assert restored.lm.generate("ab", 40, top_p=0.9, seed=3) == lm.generate(  # type: ignore
        "ab", 40, top_p=0.9, seed=3)


# -- sentiment -------------------------------------------------------------------------
def test_sentiment_accuracy_well_above_majority(data_dir: Path) -> None:
    report = run_text_backtest(
        [data_dir / "text" / "sentiment_labelled_sentences"],
        TextBacktestOptions(limit_messages=400, label_delay=5,
                            classifier=ClassifierConfig(hidden=32, embed_dim=32, replay=4)))
    c = report["classifier"]
    print("\n" + format_report(report))
    assert c["n"] == 1200 and c["labels_expired"] == 0
    assert c["accuracy"] > c["majority_accuracy"] + 0.1
    assert c["accuracy"] > 0.6 and c["macro_f1"] > 0.6


def redundant_evidence_stream(n: int = 3000, seed: int = 0) -> list[tuple[np.ndarray, int]]:
    """Binary features where NB's independence assumption fails: a weak cue (60% of class
    0, 40% of class 1) always comes as ten copies, a strong cue (10% vs 90%) as one, and one
    noise feature of fifty per message."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        y = int(rng.integers(2))
        feats = [100 + int(rng.integers(50))]
        if rng.random() < (0.6 if y == 0 else 0.4):
            feats += list(range(10, 20))
        if rng.random() < (0.1 if y == 0 else 0.9):
            feats.append(1)
        out.append((np.array(sorted(feats)), y))
    return out


@pytest.mark.parametrize("temperature", [1.0, 1.5])
def test_naive_bayes_feature_weights_undo_double_counting(temperature: float) -> None:
    stream = redundant_evidence_stream()
    hits = {}
    for lr in (0.0, 0.3):
        nb = HashedNaiveBayes(256, weight_lr=lr, weight_temperature=temperature)
        right = 0
        for feats, y in stream:
            right += int(np.argmax(nb.log_proba(feats, 2))) == y  # predict, then learn
            nb.learn(feats, y)
        hits[lr] = right / len(stream)
        if lr == 0.0:
            assert (nb.weights == 1.0).all()  # plain NB
        else:  # the strong cue gains weight on each of the ten copies of the weak one
            assert nb.weights.min() >= 0.0 and nb.weights[1] > 1.3 * nb.weights[10:20].max()
            restored = HashedNaiveBayes(256, weight_lr=lr, weight_temperature=temperature)
            restored.load_state_dict(nb.state_dict())
            feats, y = stream[0]
            restored.learn(feats, y)
            nb.learn(feats, y)
            assert np.array_equal(restored.weights, nb.weights)
            assert np.array_equal(restored.log_proba(feats, 2), nb.log_proba(feats, 2))
    # the Bayes-optimal rule is right 90% of the time here; plain NB, counting the weak cue
    # ten times, calls most messages with both cues wrong (78%)
    assert hits[0.0] < 0.79 and hits[0.3] > hits[0.0] + 0.015


def test_naive_bayes_weight_step_is_adagrad_on_the_tempered_loss() -> None:
    """The weights' step against an oracle: finite differences of ``-log softmax(z / T)[y]``,
    ``z`` the expert's log-odds (its log-probabilities up to a constant), and AdaGrad's
    projected step from the accumulator before it."""
    lr, t = 0.3, 2.0
    nb = HashedNaiveBayes(64, weight_lr=lr, weight_temperature=t)
    for feats, y in redundant_evidence_stream(40, seed=1):
        nb.learn(feats % 64, y)
    feats, y = np.array([1, 10, 11, 12, 30]), 1  # weights with a history of steps

    def loss(w: np.ndarray, temp: float) -> float:
        saved = nb.weights
        nb.weights = w
        z = nb.log_proba(feats, 2) / temp
        nb.weights = saved
        return float(np.log(np.exp(z).sum()) - z[y])

    def oracle(temp: float) -> np.ndarray:
        g = np.zeros(len(feats))
        for i, f in enumerate(feats):
            up, down = nb.weights.copy(), nb.weights.copy()
            up[f] += 1e-6
            down[f] -= 1e-6
            g[i] = (loss(up, temp) - loss(down, temp)) / 2e-6
        g2 = nb.weight_g2[feats] + g * g
        return np.maximum(nb.weights[feats] - lr * g / np.sqrt(g2), 0.0)

    expected, untempered = oracle(t), oracle(1.0)
    assert np.abs(expected - untempered).max() > 1e-3  # the temperature matters here
    nb.learn(feats, y)
    assert np.allclose(nb.weights[feats], expected, atol=1e-6)


def test_label_fifty_messages_late_is_learned() -> None:
    eng = tiny_engine(lm=False, label_wait_messages=60, update_every=1)
    clf = eng.classifier
    assert clf is not None
    eng.process([TextEvent("r", 0, "warm up", "w", "neg")])
    eng.process([TextEvent("r", 1, "an excellent film", "m0")])
    assert clf.rnn is not None
    before = {k: v.clone() for k, v in clf.rnn.model.state_dict().items()}
    eng.process([TextEvent("r", 2 + i, f"filler {i}") for i in range(50)])
    assert "m0" in clf.pending
    updates = eng.stats.clf_updates
    (score,) = eng.process([LabelEvent("r", 100, "m0", "pos")])
    assert score["kind"] == "label" and score["delay_messages"] == 50
    assert eng.stats.clf_updates == updates + 1 and eng.stats.clf_labels_learned == 2
    assert any(not torch.equal(before[k], v) for k, v in clf.rnn.model.state_dict().items())
    assert "pos" in clf.classes and clf.metrics.n == 2


def test_recurrent_expert_steps_once_per_update_every_labels() -> None:
    eng = tiny_engine(lm=False, update_every=5)
    clf = eng.classifier
    assert clf is not None and clf.rnn is not None
    steps = []
    step = clf.rnn._step
    clf.rnn._step = lambda n: (steps.append(len(clf.rnn.batch)), step(n))  # type: ignore
    eng.process([TextEvent("r", i, f"text {i}", f"m{i}", "pos" if i % 3 else "neg")
                 for i in range(12)])
    assert steps == [5, 5] and len(clf.rnn.batch) == 2 and eng.stats.clf_updates == 12


def test_bounded_wait_drops_and_counts_then_rejects_the_late_label() -> None:
    eng = tiny_engine(lm=False, label_wait_messages=10, label_wait_ms=60_000)
    eng.process([TextEvent("r", 0, "first", "m0")])
    eng.process([TextEvent("r", 1 + i, f"filler {i}") for i in range(11)])
    assert eng.stats.clf_labels_expired == 1 and eng.stats.clf_pending == 0
    eng.process([TextEvent("r", 100, "second", "m1")])
    eng.process([TextEvent("r", 200_000, "much later")])  # 60 s of event time passed
    assert eng.stats.clf_labels_expired == 2
    with pytest.raises(EventError) as info:
        eng.process([LabelEvent("r", 200_001, "m1", "pos")])
    assert info.value.reason == "bad_label"


def test_label_for_unknown_id_is_rejected_without_side_effects() -> None:
    eng = tiny_engine()
    eng.process([TextEvent("r", 0, "hello there", "m1")])
    snap = eng.state_dict()
    with pytest.raises(EventError, match="bad_label"):
        eng.process([LabelEvent("r", 1, "nope", "pos")])
    after = eng.state_dict()
    assert after["stats"]["rejected"] == {"bad_label": 1}
    snap["stats"]["rejected"] = after["stats"]["rejected"]
    assert_same_state(after, snap)  # only the rejection counter moved
    batch = [TextEvent("r", 1, "more text", "m2"), LabelEvent("r", 2, "nope", "pos"),
             TextEvent("r", 3, "after", "m3")]
    with pytest.raises(EventError) as info:
        eng.process(batch)
    assert info.value.reason == "bad_label"
    assert info.value.index == 1 and len(info.value.outputs) == 1  # type: ignore[attr-defined]
    assert eng.stats.rejected["bad_label"] == 2
    rejected: list[tuple[str, object]] = []
    outs = eng.process(batch[2:], on_error=lambda e, ev: rejected.append((e.reason, ev)))
    assert [o["id"] for o in outs] == ["m3"] and not rejected
    for bad in (LabelEvent("other-key", 4, "m1", "pos"), TextEvent("r", 5, "dup", "m1")):
        with pytest.raises(EventError):
            eng.process([bad])
    assert eng.stats.rejected == {"bad_label": 3, "duplicate": 1}
    lm_only = tiny_engine(clf=False)
    with pytest.raises(EventError, match="bad_label"):
        lm_only.process([LabelEvent("r", 0, "m1", "pos")])


@pytest.mark.parametrize(("cell", "layers", "known"), [("lstm", 1, 9), ("lstm", 2, 40),
                                                      ("gru", 2, 9), ("gru", 1, 40)])
def test_compiled_scoring_matches_the_torch_module(cell: str, layers: int, known: int) -> None:
    """The numba scorer against the module's forward: per-message log-loss (ids from
    ``known`` up in the shared class), the final state and the states at the marks."""
    torch.manual_seed(0)
    m = TokenLanguageModel(40, embed_dim=8, hidden=24, layers=layers, cell=cell).eval()
    for p in m.parameters():  # away from the initial weights' small logits
        p.data.mul_(3.0)
    scorer = CompiledScorer(m)
    rng = random.Random(2)
    ids = [rng.randrange(3, 40) for _ in range(50)]
    state = m.init_state(1)
    nll, marks = scorer.score(state, [1, *ids[:-1]], ids, known, [1, 17, 49])
    with torch.no_grad():
        out, ref_state = m.features(torch.tensor([[1, *ids[:-1]]]), m.init_state(1))
        y = torch.tensor(ids)
        ref = torch.nn.functional.cross_entropy(m.known_logits(out[0], known),
                                                y.clamp(max=known), reduction="none")
        ref = ref + (y >= known) * m.escape_cost(known)
        assert math.isclose(nll, float(ref.sum()), rel_tol=1e-5)
        assert torch.allclose(state, ref_state, atol=1e-5)
        for at, mark in zip([1, 17, 49], marks, strict=True):
            _, ref_mark = m.features(torch.tensor([[1, *ids[:at - 1]]]), m.init_state(1))
            assert torch.allclose(mark, ref_mark, atol=1e-5)


def test_scorer_takes_weights_given_new_storage() -> None:
    """The module's weights live in the scorer's buffers; one given new storage (here a
    whole new tensor, as ``module.to`` would) is taken at the next refresh."""
    torch.manual_seed(0)
    m = TokenLanguageModel(30, embed_dim=8, hidden=16, layers=1, cell="lstm").eval()
    scorer = CompiledScorer(m)
    with torch.no_grad():
        m.head.weight.data = torch.randn(30, 16)
        m.embed.weight.data = torch.randn(30, 8)
    scorer.refresh()
    ids = [4, 9, 2, 7, 7, 3]
    nll, _ = scorer.score(m.init_state(1), [1, *ids[:-1]], ids, known=30, mark_at=[])
    with torch.no_grad():
        out, _ = m.features(torch.tensor([[1, *ids[:-1]]]), m.init_state(1))
        ref = torch.nn.functional.cross_entropy(m.head(out[0]), torch.tensor(ids),
                                                reduction="sum")
    assert math.isclose(nll, float(ref), rel_tol=1e-5)
    assert m.head.weight.data_ptr() == torch.from_numpy(scorer.theta).data_ptr() + 4 * (
        scorer.layout.head_offsets[0])


@pytest.mark.parametrize(("cell", "layers", "known", "dropout"), [
    ("lstm", 1, 30, 0.0), ("lstm", 2, 9, 0.3), ("gru", 2, 40, 0.0), ("gru", 1, 9, 0.3)])
def test_window_gradients_match_autograd(cell: str, layers: int, known: int, dropout: float
                                         ) -> None:
    """The learner's gradients (recorded steps, compiled backward, torch products) against
    autograd through the module, window by window, with the same dropout masks: ragged
    windows from their own states, context steps not learned, ids from ``known`` up in the
    shared class."""
    torch.manual_seed(0)
    m = TokenLanguageModel(40, embed_dim=8, hidden=24, layers=layers, cell=cell)
    for p in m.parameters():
        p.data.mul_(2.0)
    scorer = CompiledScorer(m)
    lay = scorer.layout
    rng = random.Random(1)
    lengths = [7, 12, 5]
    starts = np.cumsum([0, *lengths]).astype(np.int64)
    x = np.array([rng.randrange(3, min(known, 40)) for _ in range(starts[-1])], np.int64)
    y = torch.tensor([rng.randrange(3, 40) if rng.random() < 0.6 else -100 for _ in x])
    y = torch.where(y >= 0, y.clamp(max=known), y)  # targets from known up: the shared class
    state0 = (torch.randn(len(lengths), layers, lay.state_size) * 0.5).numpy()
    g = torch.Generator().manual_seed(3)
    masks = DropoutMasks.draw(len(x), lay, dropout, g) if dropout else None
    rec = np.empty((len(x), layers, 6 * lay.hidden), np.float32)
    scorer.record(x, starts, np.ones(len(lengths), np.bool_), state0, masks, rec)
    loss, ours = window_gradients(m, lay, scorer.theta,
                                  WindowBatch(x, y.numpy(), starts, state0, rec), known, masks)
    ref = torch.zeros(())
    for i in range(len(lengths)):
        a, b = int(starts[i]), int(starts[i + 1])
        out = m.embed(torch.from_numpy(x[a:b]))[None]
        if masks is not None:
            out = out * torch.from_numpy(masks.emb[a:b])
        for layer, rnn in enumerate(m.rnn.layers):
            if layer > 0 and masks is not None:
                out = out * torch.from_numpy(masks.mid[a:b, layer - 1])
            s0 = torch.from_numpy(state0[i, layer])[None, None]
            h_c = (s0[..., :24].contiguous(), s0[..., 24:].contiguous()) if cell == "lstm" \
                else s0
            out, _ = rnn(out, h_c)
        top = out[0] * torch.from_numpy(masks.top[a:b]) if masks is not None else out[0]
        ref = ref + torch.nn.functional.cross_entropy(m.known_logits(top, known), y[a:b],
                                                      ignore_index=-100, reduction="sum")
    (ref / int((y >= 0).sum())).backward()
    assert math.isclose(loss, float(ref.detach()) / int((y >= 0).sum()), rel_tol=1e-5)
    assert len(ours) == len(list(m.parameters()))
    for got, p in zip(ours, m.parameters(), strict=True):
        assert p.grad is not None
        assert torch.allclose(got, p.grad, rtol=1e-4, atol=1e-5 * float(p.grad.abs().max()))


def test_learner_reuses_the_scored_steps_of_one_stream() -> None:
    """One stream, windows of k1 = k2 tokens: each window's steps were all scored under the
    weights it is learned with (the message is cut where a window falls due), so the
    learner never runs a step again; the same weights as a learner that runs every step
    again (a fresh one restored at each message)."""
    cfg = TextEngineConfig(lm=LMConfig(hidden=16, embed_dim=8, k1=8, k2=8, batch_windows=2))
    eng = TextEngine(cfg)
    lm = eng.lm
    assert lm is not None
    reruns = []
    record = lm.scorer.record

    def spy(*args: Any) -> None:
        reruns.append(int(args[2].sum()))
        record(*args)

    lm.scorer.record = spy  # type: ignore[method-assign]
    rng = random.Random(4)
    events = [TextEvent("s", i, "".join(rng.choice("abcd \n") for _ in range(rng.randint(1, 30))))
              for i in range(80)]
    outs = eng.process(events)
    assert eng.stats.lm_updates > 10 and reruns == []
    again = TextEngine(cfg)
    outs_again = []
    for ev in events:  # each message by a learner restored from a checkpoint: no records
        fresh = TextEngine(cfg)
        fresh.load_state_dict(again.state_dict())
        outs_again += fresh.process([ev])
        again = fresh
    assert outs_again == outs
    assert_same_state(again.state_dict(), eng.state_dict())


def test_scorer_records_stay_within_the_budget_of_one_weights_version() -> None:
    """Records are dropped when the weights change: idle streams hold none of older
    weights (else every stream ever seen would keep its last steps)."""
    eng = TextEngine(TextEngineConfig(lm=LMConfig(hidden=8, embed_dim=4, k1=4, k2=4,
                                                  batch_windows=2)))
    events = []
    for i in range(300):
        events += [TextEvent(f"idle{i}", i, "abc"), TextEvent("busy", i, "hello there\n")]
    eng.process(events)
    lm = eng.lm
    assert lm is not None and eng.stats.lm_updates > 100
    held = sum(len(chunk) for st in lm.streams.values() for chunk in st.rec)
    assert held <= lm.rec_budget


def test_lm_evicts_excess_and_idle_streams() -> None:
    eng = TextEngine(TextEngineConfig(lm=LMConfig(hidden=8, embed_dim=4, max_keys=2,
                                                  key_ttl_ms=10_000)))
    eng.process([TextEvent("a", 0, "x"), TextEvent("b", 1, "y"), TextEvent("c", 2, "z")])
    assert eng.lm is not None and list(eng.lm.streams) == ["b", "c"]
    eng.process([TextEvent("c", 20_000, "w")])
    assert list(eng.lm.streams) == ["c"] and eng.stats.lm_keys_evicted == 2
    assert eng.stats.lm_keys == 1


def test_word_language_model_with_boundary_token() -> None:
    eng = TextEngine(TextEngineConfig(lm=LMConfig(tokens="word", max_vocab=40, hidden=32,
                                                  embed_dim=16, k1=5, k2=10, lr=1e-2,
                                                  boundary_token=True)))
    outs = eng.process([TextEvent("log", i, "user alice logged in") for i in range(60)])
    assert outs[0]["tokens"] == 5  # four words and the end of the message
    assert outs[-1]["nll_per_token"] < outs[0]["nll_per_token"] / 3
    assert eng.lm is not None
    assert len(eng.lm.generate("user", length=3, seed=0).split()) == 3


# -- determinism: restart and chunking -------------------------------------------------
def run_chunked(engine: TextEngine, events: list[Any], sizes: list[int]) -> list[dict]:
    outs: list[dict] = []
    i = 0
    while i < len(events):
        n = sizes[len(outs) % len(sizes)] if sizes else 1
        outs.extend(engine.process(events[i:i + n]))
        i += n
    return outs


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_restart_from_checkpoint_gives_the_same_outputs(tmp_path: Path, dropout: float
                                                        ) -> None:
    """Without dropout the uninterrupted learner reuses the scorer's records of the steps;
    the restored one (no records) runs them again: the same bits."""
    events = mixed_stream(160, seed=3)
    whole = tiny_engine(dropout=dropout)
    expected = whole.process(events)  # uninterrupted
    half = len(events) // 2
    first = tiny_engine(dropout=dropout)
    before = first.process(events[:half])
    first.save(tmp_path / "mid.ckpt")
    first.process(events[half:half + 7])  # the process goes on a bit, then dies unsaved
    restored = tiny_engine(dropout=dropout)
    restored.load(tmp_path / "mid.ckpt")
    after = restored.process(events[half:])
    assert before + after == expected
    assert_same_state(restored.state_dict(), whole.state_dict())
    assert restored.stats == whole.stats
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic write left no temporary file


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_outputs_do_not_depend_on_batching(dropout: float) -> None:
    events = mixed_stream(140, seed=5)
    one = tiny_engine(dropout=dropout)
    by_one = [o for ev in events for o in one.process([ev])]
    many = tiny_engine(dropout=dropout)
    by_many = run_chunked(many, events, [1, 17, 5, 64, 2])
    assert by_one == by_many
    assert_same_state(one.state_dict(), many.state_dict())


def test_checkpoint_refuses_another_architecture(tmp_path: Path) -> None:
    eng = tiny_engine()
    eng.process(mixed_stream(10))
    path = eng.save(tmp_path / "a.ckpt")
    other = TextEngine(TextEngineConfig(lm=LMConfig(hidden=32, embed_dim=8),
                                        classifier=ClassifierConfig(hidden=8, embed_dim=8)))
    with pytest.raises(CheckpointError, match="hidden=16 in the checkpoint but 32 here"):
        other.load(path)
    with pytest.raises(CheckpointError, match="has no lm"):
        tiny_engine(lm=False).load(path)
    state = torch.load(path, weights_only=True)
    state["version"] = 99
    with pytest.raises(CheckpointError, match="version 99"):
        tiny_engine().load_state_dict(state)
    (tmp_path / "torn.ckpt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError):
        tiny_engine().load(tmp_path / "torn.ckpt")


# -- readers and commands --------------------------------------------------------------
def test_readers_recognise_the_shared_text_layouts(data_dir: Path) -> None:
    text = data_dir / "text"
    assert is_text_input([text / "tinyshakespeare"])
    assert is_text_input([text / "rt_polarity", text / "sentiment_labelled_sentences"])
    assert not is_text_input([data_dir / "sensor" / "ett"])
    events = read_text_events([text / "rt_polarity"], TextBacktestOptions(seed=1))
    assert len(events) == 10_662 and all(isinstance(e, TextEvent) for e in events)
    labels = [e.label for e in events]  # type: ignore[union-attr]
    assert labels.count("pos") == labels.count("neg") == 5331
    assert labels[:40] != ["pos", "neg"] * 20 and len(set(labels[:20])) == 2
    assert any("é" in e.text for e in events)  # Latin-1 decoded
    again = read_text_events([text / "rt_polarity"], TextBacktestOptions(seed=1))
    assert again == events
    lines = read_text_events([text / "tinyshakespeare"], TextBacktestOptions(limit_chars=5000))
    assert "".join(e.text for e in lines) == (text / "tinyshakespeare" / "input.txt"
                                              ).read_text()[:5000]


def test_backtest_text_command(data_dir: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, js = tmp_path / "rt.ckpt", tmp_path / "rt.json"
    assert cli_main(["backtest-text", str(data_dir / "text" / "rt_polarity"),
                     "--limit-messages", "300", "--label-delay", "3", "--clf-hidden", "16",
                     "--save-checkpoint", str(ckpt), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "majority" in out and ckpt.exists()
    report = json.loads(js.read_text())
    assert report["classifier"]["n"] == 300 and report["label_events"] == 300
    assert TextEngine.from_checkpoint(ckpt).classifier is not None


def test_online_bigram_learns() -> None:
    text = "to be or not to be, that is the question. " * 30
    m = BigramCharModel()
    nll = [m.learn_text("k", text[i:i + 42]) for i in range(0, len(text), 42)]
    assert nll[-1] < nll[0] / 2
