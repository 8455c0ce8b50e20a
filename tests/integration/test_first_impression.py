"""What a new user sees first: ``streamseq demo`` and ``streamseq run`` while the broker is
not there yet print no ERROR lines (kafka-python logs each refused connection at ERROR; a
broker still starting is expected and waited out)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamseq.broker import broker_binary, free_port

pytestmark = pytest.mark.integration

ALARMING = re.compile(r"\bERROR\b|ECONNREFUSED|Traceback")


def _slow_broker(tmp_path: Path, delay: float = 2.0) -> Path:
    """A broker binary that opens its port ``delay`` seconds late (a slow start)."""
    wrapper = tmp_path / "slow-broker.sh"
    wrapper.write_text(f'#!/bin/sh\nsleep {delay}\nexec "{broker_binary()}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSEQ_")}
    return {**env, **extra}


def test_demo_with_a_slow_broker_start_prints_no_errors(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "streamseq", "demo", "--duration", "3",
           "--metrics-port", str(free_port()), "--state-dir", str(tmp_path / "state")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180,
                          env=_env(STREAMSEQ_BROKER_BIN=str(_slow_broker(tmp_path))))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "== streamseq demo summary ==" in proc.stdout, out[-3000:]
    alarming = [line for line in out.splitlines() if ALARMING.search(line)]
    assert not alarming, "\n".join(alarming[:10])


def test_run_waiting_for_an_absent_broker_prints_no_errors(tmp_path: Path) -> None:
    """Nothing listens on the bootstrap port: the service waits (documented), quietly."""
    cmd = [sys.executable, "-m", "streamseq", "run", "--bootstrap", f"127.0.0.1:{free_port()}",
           "--sensor-topic", "sensors", "--checkpoint-dir", str(tmp_path / "ckpt"),
           "--metrics-port", str(free_port())]
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_env(),
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        # kafka-python's first refused attempts come right after the HTTP endpoint is up
        while b"metrics and health on" not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        time.sleep(4.0)
        assert proc.poll() is None, log.read_text()  # still waiting for the broker
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    text = log.read_text(errors="replace")
    alarming = [line for line in text.splitlines() if ALARMING.search(line)]
    assert not alarming, "\n".join(alarming[:10])
