"""Text streams: an online language model (surprise score, generation) and an online
message classifier, hosted by :class:`TextEngine` like the numeric engine hosts forecasters.

Examples
--------
>>> from streamseq.text import TextEngine, TextEngineConfig, LMConfig, TextEvent
>>> eng = TextEngine(TextEngineConfig(lm=LMConfig(hidden=16, embed_dim=8)))
>>> eng.process([TextEvent("log", 0, "GET /index.html 200")])[0]["tokens"]
19
"""

from __future__ import annotations

from streamseq.text.backtest import TextBacktestOptions, is_text_input, run_text_backtest
from streamseq.text.classifier import OnlineTextClassifier
from streamseq.text.config import ClassifierConfig, LMConfig, TextEngineConfig
from streamseq.text.engine import TextEngine
from streamseq.text.events import LabelEvent, TextDecoder, TextEvent, decode_text_json
from streamseq.text.lm import OnlineLanguageModel
from streamseq.text.stats import TextStats
from streamseq.text.vocab import Vocabulary

__all__ = [
    "ClassifierConfig",
    "LMConfig",
    "LabelEvent",
    "OnlineLanguageModel",
    "OnlineTextClassifier",
    "TextBacktestOptions",
    "TextDecoder",
    "TextEngine",
    "TextEngineConfig",
    "TextEvent",
    "TextStats",
    "Vocabulary",
    "decode_text_json",
    "is_text_input",
    "run_text_backtest",
]
