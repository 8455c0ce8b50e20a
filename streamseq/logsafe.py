"""Log lines that untrusted input cannot forge: control characters are escaped.

A message may carry strings from the outside (a key, a topic's bytes in an error, a broker's
answer). :class:`EscapingFormatter` (installed by the CLI, the one place that configures
logging) shows every control character of a message as an escape (``\\n``, ``\\x00``,
``\\u202e``), so one record stays one line and a bidirectional override cannot reorder what a
terminal shows. Tracebacks are left as they are (their newlines are ours).
"""

from __future__ import annotations

import logging
import re

__all__ = ["escape", "EscapingFormatter"]

_UNSAFE = re.compile("[\\x00-\\x1f\\x7f-\\x9f\\u061c\\u200e\\u200f\\u2028\\u2029"
                     "\\u202a-\\u202e\\u2066-\\u2069\\ud800-\\udfff]")


def _escaped(m: re.Match[str]) -> str:
    ch = m.group()
    if ch in "\n\r\t":
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` with control, separator and bidirectional characters escaped.

    Examples
    --------
    >>> escape("key=a\\nFAKE ERROR forged line")
    'key=a\\\\nFAKE ERROR forged line'
    >>> escape("nul\\x00 bidi\\u202e ok \\u6e29\\u5ea6")
    'nul\\\\x00 bidi\\\\u202e ok \\u6e29\\u5ea6'
    """
    return _UNSAFE.sub(_escaped, text)


class EscapingFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose messages are :func:`escape`-d."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging API
        record.message = escape(record.message)
        return super().formatMessage(record)
