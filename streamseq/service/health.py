"""What ``/healthz`` and ``/readyz`` answer: the state of the processing loop and the broker."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["Health"]


@dataclass
class Health:
    """Shared by the loop (which beats), the broker monitor and the HTTP server.

    ``alive`` fails when the loop has not beaten for ``stuck_after`` seconds; ``ready``
    needs the clients started and the broker reachable.

    Examples
    --------
    >>> h = Health(stuck_after=60.0)
    >>> h.alive()[0], h.ready()
    (True, (False, 'starting'))
    >>> h.started = True; h.broker_ok = True; h.shards = 2
    >>> h.ready()
    (True, 'ok: 2 partitions')
    """

    stuck_after: float
    started: bool = False
    broker_ok: bool = False
    shards: int = 0
    last_beat: float = field(default_factory=time.monotonic)

    def beat(self) -> None:
        self.last_beat = time.monotonic()

    def alive(self) -> tuple[bool, str]:
        stuck = time.monotonic() - self.last_beat
        if stuck > self.stuck_after:
            return False, f"loop stuck for {stuck:.0f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if not self.started:
            return False, "starting"
        if not self.broker_ok:
            return False, "broker unreachable"
        return True, f"ok: {self.shards} partitions"
