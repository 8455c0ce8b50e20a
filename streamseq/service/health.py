"""What ``/healthz`` and ``/readyz`` answer: the state of the processing loop and the broker.

- **alive** (``/healthz``, the liveness probe): the main loop has made progress within
  ``stuck_after`` seconds. Waiting for an unreachable broker, at start-up or later, is
  progress: the loop that waits beats too, so a pod that waits out an outage, as the README
  promises, is never restarted for it.
- **ready** (``/readyz``, the readiness probe): the broker is reachable and the consumer has
  joined its group (the group handed this replica its partitions). A replica whose
  assignment is empty, because the group has more consumers than partitions, is ready: it
  is a hot standby that takes partitions over at the next rebalance, and calling it unready
  would hold up rolling updates (``maxUnavailable: 0``) for no benefit. A rebalance later on
  does not make a replica unready (it is a pause of seconds, not a fault).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["Health"]


@dataclass
class Health:
    """Shared by the loop (which beats), the rebalance listener, the broker monitor and the
    HTTP server.

    Examples
    --------
    >>> h = Health(stuck_after=60.0)
    >>> h.alive()[0], h.ready()
    (True, (False, 'starting: connecting to the broker'))
    >>> h.started = True; h.broker_ok = True
    >>> h.ready()
    (False, 'joining the consumer group')
    >>> h.joined = True; h.ready()
    (True, 'ok: idle, no partition assigned (more consumers than partitions)')
    >>> h.shards = 2; h.ready()
    (True, 'ok: 2 partitions')
    """

    stuck_after: float
    started: bool = False  # clients connected, topics subscribed
    broker_ok: bool = False
    joined: bool = False  # the group has assigned this replica its partitions (maybe none)
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
            return False, "starting: connecting to the broker"
        if not self.broker_ok:
            return False, "broker unreachable"
        if not self.joined:
            return False, "joining the consumer group"
        if self.shards == 0:
            return True, "ok: idle, no partition assigned (more consumers than partitions)"
        return True, f"ok: {self.shards} partitions"
