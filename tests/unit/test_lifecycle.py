"""The service's lifecycle pieces without a broker: waiting for one, health answers."""

from __future__ import annotations

import threading
import time

from kafka.errors import KafkaTimeoutError

from streamseq.service.clients import connect
from streamseq.service.health import Health


def test_waiting_for_the_broker_counts_as_alive() -> None:
    """A constructor that blocks (kafka-python waits for the cluster) and then fails: the
    waiting loop beats all along, so liveness never fails while the outage is waited out."""
    health = Health(stuck_after=0.3)
    tries: list[float] = []

    def make() -> str:
        tries.append(time.monotonic())
        time.sleep(0.4)  # longer than stuck_after
        if len(tries) < 2:
            raise KafkaTimeoutError()
        return "client"

    answers: list[bool] = []
    done = threading.Event()

    def probe() -> None:
        while not done.wait(0.05):
            answers.append(health.alive()[0])

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        client = connect(make, threading.Event(), "b:9092", lambda: None, beat=health.beat,
                         every=0.05)
    finally:
        done.set()
        prober.join()
    assert client == "client" and len(tries) == 2
    assert answers and all(answers)


def test_stop_ends_the_wait_at_once() -> None:
    stop = threading.Event()
    closed = threading.Event()

    class Slow:
        def close(self) -> None:
            closed.set()

    def make() -> Slow:
        time.sleep(0.5)
        return Slow()

    threading.Timer(0.1, stop.set).start()
    t0 = time.monotonic()
    assert connect(make, stop, "b:9092", lambda: None, every=0.02) is None
    assert time.monotonic() - t0 < 0.3
    assert closed.wait(2.0), "the client made after the stop was not closed"
