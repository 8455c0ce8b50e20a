"""Where generated and replayed events go: stdout (dry run) or a Kafka topic, paced.

Every generator in :mod:`simulators` yields :data:`Message` tuples ``(key, payload, ts_ms)``:
the Kafka key as text, the wire payload (compact JSON bytes, see ``docs/CONTRACTS.md``) and
the event time in epoch milliseconds. This module sends such a stream somewhere:

* :func:`dry_run` writes the payloads as JSON lines (``--dry-run``);
* :func:`produce` sends them with a ``KafkaProducer(acks="all")``, keyed by the event key;
* both go through :func:`run`, which applies the pacing (:class:`Pacer`: ``--rate`` events/s,
  ``--speed`` event-time factor), the limits (``--count``, ``--duration``), the progress line
  on stderr, and a clean stop on Ctrl+C / SIGTERM (the sink is flushed, the count returned).

Examples
--------
>>> import io
>>> out = io.BytesIO()
>>> msgs = [("a", b'{"key":"a","ts":1,"values":{"x":1.0}}', 1),
...         ("b", b'{"key":"b","ts":2,"values":{"x":2.0}}', 2)]
>>> dry_run(msgs, stream=out, count=1)
1
>>> out.getvalue()
b'{"key":"a","ts":1,"values":{"x":1.0}}\\n'
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import IO, Protocol

__all__ = [
    "Message",
    "dumps",
    "Pacer",
    "Sink",
    "StreamSink",
    "KafkaSink",
    "Progress",
    "run",
    "dry_run",
    "produce",
]

log = logging.getLogger(__name__)

Message = tuple[str, bytes, int]
"""``(key, payload, ts_ms)``: Kafka key as text, wire payload, event time (epoch ms)."""

_SLEEP_SLICE = 0.2  # seconds: long waits are cut so Ctrl+C and --duration stay responsive
_BURST = 0.05  # seconds of rate budget a slow consumer may catch up on at once


def dumps(doc: object) -> str:
    """Compact, deterministic JSON (``NaN`` literals allowed: faults use them).

    Examples
    --------
    >>> dumps({"kind": "sensor", "ts": 1, "values": {"t": 1.5, "h": None}})
    '{"kind":"sensor","ts":1,"values":{"t":1.5,"h":null}}'
    """
    return json.dumps(doc, separators=(",", ":"), allow_nan=True)


class Pacer:
    """Decides how long to wait before each message.

    Parameters
    ----------
    rate
        At most this many messages per second (``None``: no limit). A sink that falls behind
        may catch up by at most 50 ms worth of messages at once.
    speed
        Event-time factor: a message whose event time is ``d`` seconds after the first
        message's is sent ``d / speed`` seconds after it. ``0`` ignores event time.
    max_gap
        With ``speed``, never wait longer than this many seconds for one message (long gaps
        in the event times, such as nights and weekends, are shortened to this).
    clock
        Monotonic clock in seconds (injectable for tests).

    Examples
    --------
    >>> now = [0.0]
    >>> p = Pacer(rate=10, clock=lambda: now[0])
    >>> [round(p.delay(0), 3) for _ in range(3)]
    [0.0, 0.1, 0.2]
    >>> p = Pacer(speed=2.0, clock=lambda: now[0])
    >>> p.delay(1_000), p.delay(3_000), p.delay(2_000)
    (0.0, 1.0, 0.5)
    """

    def __init__(self, rate: float | None = None, speed: float = 0.0,
                 max_gap: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be > 0, not {rate}")
        if speed < 0:
            raise ValueError(f"speed must be >= 0, not {speed}")
        self.rate = rate
        self.speed = speed
        self.max_gap = max_gap
        self._clock = clock
        self._next: float | None = None  # rate: earliest send time of the next message
        self._origin: tuple[float, int] | None = None  # speed: (wall time, event time) anchor

    @property
    def active(self) -> bool:
        return self.rate is not None or self.speed > 0

    def delay(self, ts_ms: int) -> float:
        """Seconds to wait before sending the message with event time ``ts_ms`` (>= 0)."""
        now = self._clock()
        target = now
        if self.rate is not None:
            if self._next is None:
                self._next = now
            elif self._next < now - _BURST:
                self._next = now - _BURST
            target = max(target, self._next)
        if self.speed > 0:
            if self._origin is None:
                self._origin = (now, ts_ms)
            wall0, ts0 = self._origin
            due = wall0 + (ts_ms - ts0) / 1000.0 / self.speed
            if self.max_gap is not None and due - now > self.max_gap:
                self._origin = (wall0 - (due - now - self.max_gap), ts0)
                due = now + self.max_gap
            target = max(target, due)
        if self.rate is not None:
            self._next = target + 1.0 / self.rate
        return max(0.0, target - now)


class Sink(Protocol):
    """Where messages go. ``delivered`` counts messages known to have arrived."""

    delivered: int

    def send(self, key: str, payload: bytes, ts_ms: int) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class StreamSink:
    """Writes each payload as one line to a binary stream (stdout by default).

    Parameters
    ----------
    stream
        A binary stream, or a text stream with a ``buffer`` (``sys.stdout``); ``None`` means
        ``sys.stdout`` at construction time.
    """

    def __init__(self, stream: IO[bytes] | IO[str] | None = None) -> None:
        target = sys.stdout if stream is None else stream
        buffer = getattr(target, "buffer", None)
        self._text: IO[str] | None = None
        if buffer is not None:
            with contextlib.suppress(Exception):
                target.flush()  # keep earlier text output before ours
            self._out: IO[bytes] = buffer
        elif isinstance(target, io.TextIOBase):
            self._text = target  # type: ignore[assignment]
            self._out = None  # type: ignore[assignment]
        else:
            self._out = target  # type: ignore[assignment]
        self.delivered = 0

    def send(self, key: str, payload: bytes, ts_ms: int) -> None:
        if self._text is not None:
            self._text.write(payload.decode("utf-8", "backslashreplace") + "\n")
        else:
            self._out.write(payload + b"\n")
        self.delivered += 1

    def flush(self) -> None:
        (self._text or self._out).flush()

    def close(self) -> None:
        self.flush()


class KafkaSink:
    """Sends messages to one topic with a kafka-python ``KafkaProducer``.

    The Kafka key is the event key (UTF-8), so a key's events stay in one partition and in
    order. ``acks="all"``; ``delivered`` counts acknowledged messages, ``failed`` the others.

    Parameters
    ----------
    bootstrap
        ``host:port[,host:port...]``.
    topic
        Destination topic.
    linger_ms
        Producer batching delay.
    event_timestamps
        Use the event time as the Kafka record timestamp. Off by default: a broker with
        time-based retention deletes records stamped years ago right away.
    flush_timeout
        Seconds :meth:`flush` waits for outstanding acknowledgements.
    **config
        Further ``KafkaProducer`` settings.
    """

    def __init__(self, bootstrap: str, topic: str, *, linger_ms: int = 20,
                 event_timestamps: bool = False, flush_timeout: float = 60.0,
                 **config: object) -> None:
        from kafka import KafkaProducer

        settings: dict[str, object] = {"acks": "all", "linger_ms": linger_ms,
                                       "client_id": "streamseq-simulator"}
        settings.update(config)
        self.topic = topic
        self.event_timestamps = event_timestamps
        self.flush_timeout = flush_timeout
        self.delivered = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._producer = KafkaProducer(bootstrap_servers=bootstrap, **settings)

    def _ok(self, _metadata: object) -> None:
        with self._lock:
            self.delivered += 1

    def _error(self, exc: BaseException) -> None:
        with self._lock:
            self.failed += 1
            first = self.failed <= 5
        if first:
            log.error("delivery to %s failed: %s", self.topic, exc)

    def send(self, key: str, payload: bytes, ts_ms: int) -> None:
        future = self._producer.send(self.topic, value=payload, key=key.encode("utf-8"),
                                     timestamp_ms=ts_ms if self.event_timestamps else None)
        future.add_callback(self._ok)
        future.add_errback(self._error)

    def flush(self) -> None:
        self._producer.flush(timeout=self.flush_timeout)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._producer.close(timeout=self.flush_timeout)
        if self.failed:
            log.error("%d messages to %s were not acknowledged", self.failed, self.topic)


class Progress:
    """A progress line on stderr, redrawn at most every ``interval`` seconds.

    On a terminal the line is redrawn in place; otherwise one line is written per
    ``interval``. :meth:`final` always writes the final count.
    """

    def __init__(self, label: str = "sent", enabled: bool | None = None,
                 stream: IO[str] | None = None, interval: float | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = tty if enabled is None else enabled
        self.tty = tty
        self.label = label
        self.interval = interval if interval is not None else (0.25 if tty else 5.0)
        self.started = time.monotonic()
        self._last = self.started
        self._drawn = False

    def update(self, n: int, ts_ms: int) -> None:
        if not self.enabled or n & 255:
            return
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        line = (f"{self.label}: {n:,} events  {n / max(now - self.started, 1e-9):,.0f}/s  "
                f"event time {_iso(ts_ms)}")
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            self._drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def final(self, sent: int, delivered: int | None = None) -> None:
        elapsed = time.monotonic() - self.started
        extra = "" if delivered is None or delivered == sent else f" ({delivered:,} acknowledged)"
        text = (f"{self.label}: {sent:,} events{extra} in {elapsed:.2f} s "
                f"({sent / max(elapsed, 1e-9):,.0f}/s)")
        self.stream.write(("\r\x1b[K" if self._drawn else "") + text + "\n")
        self.stream.flush()


def _iso(ts_ms: int) -> str:
    try:
        return datetime.fromtimestamp(ts_ms / 1000.0, tz=timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return str(ts_ms)


class _StopFlag:
    """SIGINT/SIGTERM set a flag (main thread only); a second Ctrl+C raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.set = False
        self._saved: dict[int, object] = {}

    def _handle(self, signum: int, _frame: object) -> None:
        if self.set and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.set = True
        log.info("signal %d: stopping after a flush (Ctrl+C again to abort)", signum)

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(ValueError, OSError):  # exotic embedders
                    self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


def run(messages: Iterable[Message], sink: Sink, *, rate: float | None = None,
        speed: float = 0.0, count: int | None = None, duration: float | None = None,
        max_gap: float | None = None, progress: Progress | None = None) -> int:
    """Send ``messages`` to ``sink`` with pacing and limits; returns the number sent.

    Stops at the end of ``messages``, after ``count`` messages, after ``duration`` seconds,
    on SIGINT/SIGTERM (the first signal stops cleanly, a second Ctrl+C aborts), or when
    stdout is closed (``BrokenPipeError``). The sink is flushed in every case. No more than
    ``count`` messages are drawn from ``messages``.
    """
    if count is not None and count <= 0:
        return 0
    pacer = Pacer(rate=rate, speed=speed, max_gap=max_gap)
    paced = pacer.active
    t0 = time.monotonic()
    deadline = None if duration is None else t0 + duration
    n = 0
    with _StopFlag() as stop:
        try:
            for key, payload, ts_ms in messages:
                if paced:
                    wait = pacer.delay(ts_ms)
                    if wait > 0 and not _sleep(wait, stop, deadline):
                        break
                if stop.set or (deadline is not None and time.monotonic() >= deadline):
                    break
                sink.send(key, payload, ts_ms)
                n += 1
                if progress is not None:
                    progress.update(n, ts_ms)
                if n == count:
                    break
        except KeyboardInterrupt:
            log.warning("interrupted after %d messages; flushing", n)
        except BrokenPipeError:
            log.info("output closed after %d messages", n)
            _silence_stdout()
            return n
        finally:
            with contextlib.suppress(BrokenPipeError):
                sink.flush()
    return n


def _sleep(seconds: float, stop: _StopFlag, deadline: float | None) -> bool:
    """Sleep in slices; ``False`` if stopped or past the deadline meanwhile."""
    end = time.monotonic() + seconds
    while True:
        now = time.monotonic()
        if stop.set or (deadline is not None and now >= deadline):
            return False
        if now >= end:
            return True
        limit = end if deadline is None else min(end, deadline)
        time.sleep(max(0.0, min(_SLEEP_SLICE, limit - now)))


def _silence_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so the interpreter exits quietly."""
    import os

    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def dry_run(messages: Iterable[Message], stream: IO[bytes] | IO[str] | None = None, *,
            rate: float | None = None, speed: float = 0.0, count: int | None = None,
            duration: float | None = None, max_gap: float | None = None,
            progress: Progress | None = None) -> int:
    """Write the payloads as JSON lines to ``stream`` (stdout); returns the number written."""
    sink = StreamSink(stream)
    n = run(messages, sink, rate=rate, speed=speed, count=count, duration=duration,
            max_gap=max_gap, progress=progress)
    if progress is not None:
        progress.final(n)
    return n


def produce(messages: Iterable[Message], bootstrap: str, topic: str, *,
            rate: float | None = None, count: int | None = None,
            duration: float | None = None, speed: float = 0.0, max_gap: float | None = None,
            linger_ms: int = 20, event_timestamps: bool = False,
            progress: Progress | None = None, **producer_config: object) -> int:
    """Send ``messages`` to ``topic``; returns the number of acknowledged messages.

    Parameters
    ----------
    messages
        ``(key, payload, ts_ms)`` tuples, e.g. ``SensorSimulator(...).messages()``.
    bootstrap, topic
        Where to produce.
    rate, count, duration, speed, max_gap
        Pacing and limits, see :func:`run` and :class:`Pacer`.
    linger_ms, event_timestamps, **producer_config
        Producer settings, see :class:`KafkaSink`.
    progress
        Progress line on stderr (``None``: none).

    Examples
    --------
    ::

        from simulators.sensors import SensorSimulator
        n = produce(SensorSimulator(n_sensors=4, seed=1).messages(), "127.0.0.1:9092",
                    "sensors", count=10_000, rate=2_000)
    """
    sink = KafkaSink(bootstrap, topic, linger_ms=linger_ms, event_timestamps=event_timestamps,
                     **producer_config)
    try:
        n = run(messages, sink, rate=rate, speed=speed, count=count, duration=duration,
                max_gap=max_gap, progress=progress)
    finally:
        sink.close()
    if progress is not None:
        progress.final(n, sink.delivered)
    return sink.delivered
