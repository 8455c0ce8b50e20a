"""``streamseq backtest-text`` and ``streamseq generate``.

::

    streamseq backtest-text ../shared/data/text/tinyshakespeare --limit-chars 200000 \\
        --save-checkpoint runs/shakespeare.ckpt
    streamseq generate --checkpoint runs/shakespeare.ckpt --prompt "ROMEO:" --length 200 \\
        --temperature 0.8 --top-k 20 --top-p 0.95 --seed 1
    streamseq backtest-text ../shared/data/text/sentiment_labelled_sentences --label-delay 50
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch

from streamseq.exceptions import DataError, UsageError
from streamseq.text.backtest import TextBacktestOptions, format_report, run_text_backtest
from streamseq.text.config import ClassifierConfig, LMConfig
from streamseq.text.engine import TextEngine

__all__ = ["register", "options_from_args"]


def _chunk(value: str) -> str | int:
    if value == "line":
        return value
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("--chunk is 'line' or a number of characters") from None
    if n < 1:
        raise argparse.ArgumentTypeError("--chunk must be >= 1")
    return n


def register(subparsers: Any) -> None:
    """Add ``backtest-text`` and ``generate`` to the ``streamseq`` command."""
    b = subparsers.add_parser(
        "backtest-text", help="replay text files through the online LM / classifier",
        description="Replay text files (one text, sentence<TAB>label, NAME.pos/NAME.neg, "
                    "JSONL text events) through the text engine, predict-then-learn, and "
                    "print prequential metrics (bits/char vs an online bigram model; "
                    "accuracy, macro F1, log-loss vs the majority class).")
    b.add_argument("paths", nargs="+", help="files or folders")
    g = b.add_argument_group("stream")
    g.add_argument("--chunk", type=_chunk, default="line",
                   help="message = one line (default) or N characters of a one-text file")
    g.add_argument("--limit-chars", type=int, help="characters read per one-text file")
    g.add_argument("--limit-messages", type=int, help="messages read per source")
    g.add_argument("--label-delay", type=int, default=0,
                   help="labels arrive N messages after their message (default 0: with it)")
    g.add_argument("--seed", type=int, default=0, help="interleaving seed")
    g.add_argument("--tasks", help="lm, classifier or lm,classifier (default: from the input)")
    g.add_argument("--batch", type=int, default=256, help="events per engine call")
    g.add_argument("--no-baselines", action="store_true", help="skip the bigram / majority")
    g.add_argument("--learn-classes", action="store_true",
                   help="do not tell the classifier the data's label set; learn it online")
    m = b.add_argument_group("language model")
    d = LMConfig()
    m.add_argument("--tokens", choices=["char", "word"], default=d.tokens)
    m.add_argument("--max-vocab", type=int, default=None,
                   help=f"vocabulary cap (default {d.max_vocab} for chars, 30000 for words)")
    m.add_argument("--cell", choices=["lstm", "gru"], default=d.cell)
    m.add_argument("--embed-dim", type=int, default=d.embed_dim)
    m.add_argument("--hidden", type=int, default=d.hidden)
    m.add_argument("--layers", type=int, default=d.layers)
    m.add_argument("--dropout", type=float, default=d.dropout)
    m.add_argument("--k1", type=int, default=d.k1, help="tokens between optimizer steps")
    m.add_argument("--k2", type=int, default=None, help="backprop length (default: k1)")
    m.add_argument("--batch-windows", type=int, default=d.batch_windows,
                   help="TBPTT windows (of any streams) per optimizer step")
    m.add_argument("--lr", type=float, default=d.lr)
    m.add_argument("--boundary-token", action="store_true",
                   help="append an end-of-message token to each message")
    c = b.add_argument_group("classifier")
    dc = ClassifierConfig()
    c.add_argument("--clf-experts", default=",".join(dc.experts),
                   help="experts pooled by the classifier, from word_nb, char_nb, rnn "
                        f"(default {','.join(dc.experts)}; rnn adds the recurrent network "
                        "configured below: slower)")
    c.add_argument("--clf-tokens", choices=["word", "char"], default=dc.tokens)
    c.add_argument("--clf-cell", choices=["lstm", "gru"], default=dc.cell)
    c.add_argument("--clf-hidden", type=int, default=dc.hidden)
    c.add_argument("--clf-embed-dim", type=int, default=dc.embed_dim)
    c.add_argument("--clf-layers", type=int, default=dc.layers)
    c.add_argument("--unidirectional", action="store_true", help="read messages forward only")
    c.add_argument("--pool", choices=["last", "mean", "max", "meanmax"], default=dc.pool)
    c.add_argument("--clf-dropout", type=float, default=dc.dropout)
    c.add_argument("--clf-lr", type=float, default=dc.lr)
    c.add_argument("--clf-embed-lr", type=float, default=dc.embed_lr,
                   help="learning rate of the word embeddings (sparse Adam)")
    c.add_argument("--replay", type=int, default=dc.replay,
                   help="earlier labelled messages replayed with each label's update")
    c.add_argument("--label-wait-messages", type=int, default=dc.label_wait_messages)
    c.add_argument("--label-wait-ms", type=int, default=None)
    o = b.add_argument_group("output")
    o.add_argument("--load-checkpoint", help="start from this checkpoint (and its config)")
    o.add_argument("--save-checkpoint", help="write the final state here (atomically)")
    o.add_argument("--json", dest="json_out", help="also write the report as JSON here")
    o.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: batch-1 RNN steps gain nothing from "
                        "more, and lose a lot when the machine is busy)")
    b.set_defaults(func=_backtest_text)

    gen = subparsers.add_parser("generate", help="sample text from a text-engine checkpoint",
                                description="Sample text from the language model of a "
                                            "checkpoint written by backtest-text or the service.")
    gen.add_argument("--checkpoint", required=True)
    gen.add_argument("--prompt", default="", help="text the sample continues")
    gen.add_argument("--length", type=int, default=200, help="tokens to sample")
    gen.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    gen.add_argument("--top-k", type=int, default=None, help="sample among the K most likely")
    gen.add_argument("--top-p", type=float, default=None,
                     help="sample within the smallest set of most likely tokens whose "
                          "probability reaches P (nucleus sampling)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--key", help="continue from this stream's hidden state")
    gen.add_argument("--no-echo", action="store_true", help="print the continuation only")
    gen.set_defaults(func=_generate)


def options_from_args(args: argparse.Namespace) -> TextBacktestOptions:
    """:class:`TextBacktestOptions` from the parsed ``backtest-text`` arguments."""
    max_vocab = args.max_vocab or (256 if args.tokens == "char" else 30_000)
    lm = LMConfig(tokens=args.tokens, max_vocab=max_vocab, cell=args.cell,
                  embed_dim=args.embed_dim, hidden=args.hidden, layers=args.layers,
                  dropout=args.dropout, k1=args.k1, k2=args.k2 or args.k1,
                  batch_windows=args.batch_windows, lr=args.lr,
                  boundary_token=args.boundary_token)
    experts = tuple(e.strip() for e in args.clf_experts.split(",") if e.strip())
    clf = ClassifierConfig(experts=experts, tokens=args.clf_tokens, cell=args.clf_cell, hidden=args.clf_hidden,
                           embed_dim=args.clf_embed_dim, layers=args.clf_layers,
                           bidirectional=not args.unidirectional, pool=args.pool,
                           dropout=args.clf_dropout, lr=args.clf_lr,
                           embed_lr=args.clf_embed_lr, replay=args.replay,
                           label_wait_messages=args.label_wait_messages,
                           label_wait_ms=args.label_wait_ms)
    tasks = None
    if args.tasks:
        tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
        unknown = set(tasks) - {"lm", "classifier"}
        if unknown:
            raise UsageError(f"unknown tasks {sorted(unknown)}: use lm and/or classifier")
    return TextBacktestOptions(
        chunk=args.chunk, limit_chars=args.limit_chars, limit_messages=args.limit_messages,
        label_delay=args.label_delay, seed=args.seed, tasks=tasks, lm=lm, classifier=clf,
        batch=args.batch, baselines=not args.no_baselines,
        known_labels=not args.learn_classes,
        load_checkpoint=args.load_checkpoint, save_checkpoint=args.save_checkpoint)


def _backtest_text(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run_text_backtest(args.paths, options_from_args(args))
    print(format_report(report))
    if args.save_checkpoint:
        print(f"\ncheckpoint written to {args.save_checkpoint}")
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2, default=str)
    return 0


def _generate(args: argparse.Namespace) -> int:
    engine = TextEngine.from_checkpoint(args.checkpoint)
    if engine.lm is None:
        raise DataError(f"{args.checkpoint} holds no language model")
    text = engine.lm.generate(args.prompt, args.length, args.temperature, args.top_k,
                              args.seed, key=args.key, top_p=args.top_p)
    sep = " " if engine.lm.vocab.mode == "word" and args.prompt and text else ""
    sys.stdout.write(text if args.no_echo else args.prompt + sep + text)
    sys.stdout.write("\n")
    return 0
