"""Text and label events: the records of a text stream, and their JSON decoding.

Wire format (JSON, one object per Kafka message, Kafka key = the stream key)::

    {"kind": "text", "key": "stream-1", "ts": 1704067200000, "text": "...", "id": "m1"}
    {"kind": "text", "key": "reviews", "ts": 1704067200000, "text": "...", "id": "m2",
     "label": "pos"}
    {"kind": "label", "key": "reviews", "ts": 1704067260000, "id": "m1", "label": "neg"}

``ts`` is epoch milliseconds or ISO 8601 (as for the numeric kinds). A ``text`` event may
carry its label inline; a ``label`` event attaches a label to an earlier ``text`` event of
the same key by ``id`` (labels usually arrive late). Every failure raises
:class:`~streamseq.events.EventError` with a reason from its closed set (``bad_text``,
``bad_label``, ``missing_key``, ``bad_time``, ...), so the service can dead-letter and count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from streamseq.events.decode import TIME_FIELDS, check_key, load_json_object, parse_time
from streamseq.events.errors import EventError

__all__ = [
    "TEXT_KINDS",
    "LabelEvent",
    "TextDecoder",
    "TextEvent",
    "TextStreamEvent",
    "check_text",
    "decode_text_json",
]

TEXT_KINDS = ("text", "label")


@dataclass(frozen=True, slots=True)
class TextEvent:
    """One message of a text stream.

    Attributes
    ----------
    key
        Stream id (the Kafka key): the language model keeps one hidden state per key.
    ts_ms
        Event time, epoch milliseconds (UTC).
    text
        The message; never empty.
    id
        Producer-side message id; needed for a label to arrive later.
    label
        The message's class, when it comes with the message.

    Examples
    --------
    >>> TextEvent("s1", 1000, "hello", id="m1").to_json_dict()
    {'kind': 'text', 'key': 's1', 'ts': 1000, 'text': 'hello', 'id': 'm1'}
    """

    key: str
    ts_ms: int
    text: str
    id: str | None = None
    label: str | None = None
    kind: ClassVar[str] = "text"

    def to_json_dict(self) -> dict[str, object]:
        """The canonical wire form that :func:`decode_text_json` reads back."""
        out: dict[str, object] = {"kind": "text", "key": self.key, "ts": self.ts_ms,
                                  "text": self.text}
        if self.id is not None:
            out["id"] = self.id
        if self.label is not None:
            out["label"] = self.label
        return out


@dataclass(frozen=True, slots=True)
class LabelEvent:
    """The label of an earlier :class:`TextEvent` of the same key, matched by ``id``.

    Examples
    --------
    >>> LabelEvent("s1", 2000, "m1", "pos").to_json_dict()
    {'kind': 'label', 'key': 's1', 'ts': 2000, 'id': 'm1', 'label': 'pos'}
    """

    key: str
    ts_ms: int
    id: str
    label: str
    kind: ClassVar[str] = "label"

    def to_json_dict(self) -> dict[str, object]:
        """The canonical wire form that :func:`decode_text_json` reads back."""
        return {"kind": "label", "key": self.key, "ts": self.ts_ms, "id": self.id,
                "label": self.label}


TextStreamEvent = TextEvent | LabelEvent


@dataclass(frozen=True)
class TextDecoder:
    """Turns JSON messages into validated :class:`TextEvent` / :class:`LabelEvent` objects.

    Parameters
    ----------
    kind
        Kind of a message that does not say (``"text"`` or ``"label"``).
    naive_tz
        Zone for ISO times without one; ``None`` rejects them.
    max_bytes
        Messages larger than this are rejected as ``too_large``.
    max_key_len
        Keys longer than this are rejected as ``bad_key``.
    max_text_chars
        Texts longer than this are rejected as ``too_large``.
    max_label_len
        Labels and ids longer than this are rejected as ``bad_label``.

    Examples
    --------
    >>> d = TextDecoder()
    >>> d.decode(b'{"kind": "text", "key": "s1", "ts": 5, "text": "hi", "id": 7}')
    TextEvent(key='s1', ts_ms=5, text='hi', id='7', label=None)
    >>> d.decode('{"kind": "label", "key": "s1", "ts": 9, "id": "7", "label": 1}')
    LabelEvent(key='s1', ts_ms=9, id='7', label='1')
    >>> d.decode(b'{"kind": "text", "key": "s1", "ts": 5, "text": ""}')
    Traceback (most recent call last):
    ...
    streamseq.events.errors.EventError: bad_text: text is empty
    >>> d.decode(b'{"kind": "label", "key": "s1", "ts": 5, "label": "pos"}')
    Traceback (most recent call last):
    ...
    streamseq.events.errors.EventError: bad_label: a label event needs the id of its message
    """

    kind: str = "text"
    naive_tz: str | None = "UTC"
    max_bytes: int = 1_000_000
    max_key_len: int = 256
    max_text_chars: int = 100_000
    max_label_len: int = 256

    def __post_init__(self) -> None:
        if self.kind not in TEXT_KINDS:
            raise ValueError(f"kind must be one of {TEXT_KINDS}, not {self.kind!r}")

    def decode_many(self, payloads: Sequence[bytes]) -> None:
        """Text messages are decoded one by one (:meth:`decode`)."""
        return None

    def decode(self, payload: bytes | str) -> TextEvent | LabelEvent:
        """Decode one JSON message. Raises :class:`EventError` on any bad input."""
        return self.from_mapping(load_json_object(payload, self.max_bytes))

    def from_mapping(self, doc: Mapping[str, object]) -> TextEvent | LabelEvent:
        """Validate a decoded JSON object."""
        kind = doc.get("kind", self.kind)
        if kind not in TEXT_KINDS:
            raise EventError("bad_kind", f"kind {kind!r} is not one of {TEXT_KINDS}")
        key = self._key(doc.get("key"))
        ts_raw = next((doc[f] for f in TIME_FIELDS if f in doc), None)
        if ts_raw is None:
            raise EventError("missing_time")
        ts_ms = parse_time(ts_raw, self.naive_tz)
        if kind == "label":
            msg_id = self._scalar(doc.get("id"), "id")
            if msg_id is None:
                raise EventError("bad_label", "a label event needs the id of its message")
            label = self._scalar(doc.get("label"), "label")
            if label is None:
                raise EventError("bad_label", "label is absent")
            return LabelEvent(key, ts_ms, msg_id, label)
        text = doc.get("text")
        if not isinstance(text, str):
            raise EventError("bad_text", "text is absent" if text is None
                             else f"text has type {type(text).__name__}")
        check_text(text, self.max_text_chars)
        raw_id = doc.get("id")
        msg_id = None
        if isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool):
            msg_id = self._scalar(raw_id, "id")
        label = self._scalar(doc.get("label"), "label") if "label" in doc else None
        return TextEvent(key, ts_ms, text, msg_id, label)

    def _key(self, raw: object) -> str:
        if raw is None:
            raise EventError("missing_key")
        return check_key(raw, self.max_key_len)

    def _scalar(self, raw: object, what: str) -> str | None:
        """A label or id: a non-empty string or an integer, as a string."""
        if raw is None:
            return None
        if isinstance(raw, bool) or not isinstance(raw, (str, int)):
            raise EventError("bad_label", f"{what} has type {type(raw).__name__}")
        value = str(raw)
        if not value.strip():
            raise EventError("bad_label", f"{what} is empty")
        if len(value) > self.max_label_len:
            raise EventError("bad_label", f"{what} is {len(value)} characters long")
        return value


def check_text(text: object, max_chars: int | None = None) -> str:
    """Raise ``bad_text`` unless ``text`` is a non-empty, UTF-8 encodable string.

    Examples
    --------
    >>> check_text("ok")
    'ok'
    >>> check_text("\\ud800")
    Traceback (most recent call last):
    ...
    streamseq.events.errors.EventError: bad_text: text holds an unpaired surrogate
    """
    if not isinstance(text, str):
        raise EventError("bad_text", f"text has type {type(text).__name__}")
    if not text:
        raise EventError("bad_text", "text is empty")
    if max_chars is not None and len(text) > max_chars:
        raise EventError("too_large", f"text is {len(text)} characters > {max_chars}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise EventError("bad_text", "text holds an unpaired surrogate") from None
    return text


_DEFAULT = TextDecoder()


def decode_text_json(payload: bytes | str) -> TextEvent | LabelEvent:
    """Decode with the default :class:`TextDecoder`.

    Examples
    --------
    >>> decode_text_json('{"kind": "text", "key": "k", "ts": "2024-01-01T00:00:00Z", "text": "a"}')
    TextEvent(key='k', ts_ms=1704067200000, text='a', id=None, label=None)
    """
    return _DEFAULT.decode(payload)
