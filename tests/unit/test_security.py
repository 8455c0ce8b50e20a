"""Security and safe defaults of the service (issue 7).

- SASL/SSL settings reach kafka-python unchanged; secrets come from the environment or
  ``*_password_file`` files (never a flag) and never show in ``repr(config)`` or the logs;
- /metrics, /healthz and /readyz bind to 127.0.0.1 unless configured otherwise;
- checkpoints are read with ``weights_only=True`` (a pickle that runs code is refused) and
  refused when their format version or architecture does not match.

The dead-letter size cap is checked end to end in tests/integration/test_hardening.py (an
oversized message's dead letter is truncated and marked ``streamseq.truncated``); the
container's non-root user in tests/unit/test_deploy_static.py::test_dockerfile.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from streamseq.config import EngineConfig, ModelConfig
from streamseq.engine import FORMAT_VERSION, Engine
from streamseq.events.schema import Event
from streamseq.exceptions import CheckpointError, ConfigError
from streamseq.service.commands import add_service_args, config_from_args
from streamseq.service.config import SECRET_KEYS, ServiceConfig, load_config
from streamseq.state.checkpoint import LocalCheckpointStore, dumps, load_file, loads

SECRET = "S3cr3t-Pa55w0rd-Xq9"
ROOT = Path(__file__).resolve().parents[2]


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_service_args(p)
    return p.parse_args(list(argv))


@pytest.fixture()
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "kafka-password"
    path.write_text(SECRET + "\n")
    return path


# ---------------------------------------------------------------------------- secrets
def test_password_file_flag_reads_the_secret_and_masks_it(secret_file: Path) -> None:
    cfg = config_from_args(_args(
        "--bootstrap", "k:9093", "--security-protocol", "SASL_SSL", "--sasl-mechanism",
        "SCRAM-SHA-512", "--sasl-username", "streamseq", "--sasl-password-file",
        str(secret_file), "--ssl-cafile", "/ca.pem"))
    assert cfg.security.sasl_plain_password == SECRET  # stripped of the newline
    assert cfg.security.sasl_plain_password_file is None  # resolved into the secret
    for text in (repr(cfg), str(cfg), f"{cfg!r}", str(cfg.masked())):
        assert SECRET not in text
    assert cfg.masked()["security"]["sasl_plain_password"] == "***"
    assert cfg.masked()["security"]["sasl_mechanism"] == "SCRAM-SHA-512"


def test_secrets_from_the_environment_are_masked() -> None:
    cfg = load_config(env={"STREAMSEQ_BOOTSTRAP": "k:9093",
                           "STREAMSEQ_SECURITY_SECURITY_PROTOCOL": "SSL",
                           "STREAMSEQ_SECURITY_SSL_PASSWORD": SECRET,
                           "STREAMSEQ_SECURITY_SASL_PLAIN_PASSWORD": SECRET})
    assert cfg.security.ssl_password == SECRET
    assert SECRET not in repr(cfg)
    assert set(SECRET_KEYS) <= {k for k, v in cfg.masked()["security"].items() if v == "***"}


def test_secret_files_in_a_config_file(tmp_path: Path, secret_file: Path) -> None:
    conf = tmp_path / "streamseq.toml"
    conf.write_text(f'bootstrap = "k:9093"\n[security]\nsecurity_protocol = "SSL"\n'
                    f'ssl_certfile = "/tls/client.pem"\nssl_keyfile = "/tls/client.key"\n'
                    f'ssl_password_file = "{secret_file}"\n')
    cfg = load_config(conf, env={})
    assert cfg.security.ssl_password == SECRET and SECRET not in repr(cfg)


@pytest.mark.parametrize("flag", ["--sasl-password", "--ssl-password", "--sasl-pass"])
def test_no_flag_takes_a_password(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A password on the command line would show in ``ps``: only files are accepted, and
    ``--sasl-password`` is not taken as an abbreviation of ``--sasl-password-file``."""
    from streamseq.cli import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["run", "--bootstrap", "k:1", flag, SECRET])
    assert info.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_unreadable_secret_file_is_a_config_error_without_the_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"STREAMSEQ_SECURITY_SASL_PLAIN_PASSWORD_FILE":
                         str(tmp_path / "missing")})
    assert "sasl_plain_password_file" in str(info.value)


def test_unknown_security_setting_is_refused_without_echoing_values() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"STREAMSEQ_SECURITY_SASL_PASSWORD": SECRET})
    assert SECRET not in str(info.value)


class _Stop(Exception):
    pass


def test_security_reaches_kafka_python_and_logs_stay_clean(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path,
        secret_file: Path) -> None:
    """The producer and consumer get every security setting; nothing logged shows the
    password (the start-up line logs the whole configuration)."""
    from streamseq.service import app, clients

    seen: dict[str, dict[str, Any]] = {}

    class FakeProducer:
        def __init__(self, **kw: Any) -> None:
            seen["producer"] = kw

        def close(self, timeout: float = 0) -> None:
            pass

    def fake_consumer(**kw: Any) -> Any:
        seen["consumer"] = kw
        raise _Stop

    monkeypatch.setattr(clients, "KafkaProducer", FakeProducer)
    monkeypatch.setattr(clients, "KafkaConsumer", fake_consumer)
    cfg = config_from_args(_args(
        "--bootstrap", "k:9093", "--security-protocol", "SASL_SSL", "--sasl-mechanism",
        "PLAIN", "--sasl-username", "svc", "--sasl-password-file", str(secret_file),
        "--ssl-cafile", "/ca.pem", "--ssl-certfile", "/c.pem", "--ssl-keyfile", "/c.key",
        "--metrics-port", "0", "--checkpoint-dir", str(tmp_path / "ckpt")))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(_Stop):
        app.Service(cfg).run()
    for role in ("producer", "consumer"):
        kw = seen[role]
        assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == "PLAIN"
        assert kw["sasl_plain_username"] == "svc" and kw["sasl_plain_password"] == SECRET
        assert (kw["ssl_cafile"], kw["ssl_certfile"], kw["ssl_keyfile"]) == (
            "/ca.pem", "/c.pem", "/c.key")
    assert "starting streamseq" in caplog.text
    assert SECRET not in caplog.text


def test_streamseq_run_never_logs_the_password(tmp_path: Path, secret_file: Path) -> None:
    """The real command at DEBUG (kafka-python's own logging included), no broker."""
    from streamseq.broker import free_port

    log_path = tmp_path / "run.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSEQ_")}
    env["STREAMSEQ_SECURITY_SSL_PASSWORD"] = SECRET
    cmd = [sys.executable, "-m", "streamseq", "--log-level", "DEBUG", "run",
           "--bootstrap", f"127.0.0.1:{free_port()}", "--sensor-topic", "s",
           "--security-protocol", "SASL_PLAINTEXT", "--sasl-mechanism", "PLAIN",
           "--sasl-username", "svc", "--sasl-password-file", str(secret_file),
           "--metrics-port", "0", "--checkpoint-dir", str(tmp_path / "ckpt")]
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and b"Attempting bootstrap" not in log_path.read_bytes():
            time.sleep(0.2)
        time.sleep(1.0)  # a few reconnect attempts
    finally:
        proc.kill()
        proc.wait(30)
    text = log_path.read_text(errors="replace")
    assert "starting streamseq" in text and '"sasl_plain_password": "***"' in text
    assert SECRET not in text


# ---------------------------------------------------------------------------- binding
def test_metrics_bind_to_loopback_by_default() -> None:
    assert ServiceConfig().metrics_host == "127.0.0.1"
    assert load_config(env={}).metrics_host == "127.0.0.1"
    assert config_from_args(_args()).metrics_host == "127.0.0.1"


def test_metrics_bind_address_is_configurable() -> None:
    assert config_from_args(_args("--metrics-host", "0.0.0.0")).metrics_host == "0.0.0.0"
    assert load_config(env={"STREAMSEQ_METRICS_HOST": "10.1.2.3"}).metrics_host == "10.1.2.3"


def test_health_server_listens_where_it_is_told() -> None:
    from prometheus_client import CollectorRegistry

    from streamseq.service.http import HealthServer

    server = HealthServer(CollectorRegistry(), "127.0.0.1", 0, lambda: (True, "ok"),
                          lambda: (True, "ok")).start()
    try:
        assert server.httpd.server_address[0] == "127.0.0.1"
    finally:
        server.stop()


# ---------------------------------------------------------------------------- checkpoints
class _Evil:
    """Unpickling this would create a file: arbitrary code in a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.touch, (self.marker,))


def _pickled(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"format": "streamseq-shard/1", "payload": _Evil(marker)}, buf)
    return buf.getvalue()


def test_checkpoint_that_runs_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    data = _pickled(marker)
    with pytest.raises(CheckpointError):
        loads(data)
    (tmp_path / "warm.ckpt").write_bytes(data)
    with pytest.raises(CheckpointError):
        load_file(tmp_path / "warm.ckpt")
    assert not marker.exists()


def test_store_skips_a_snapshot_that_runs_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    store = LocalCheckpointStore(tmp_path / "ckpt")
    store.save("sensors-0", {"offset": 7})
    store.save("sensors-0", {"offset": 8})
    store._files("sensors-0")[0].write_bytes(_pickled(marker))
    assert store.load("sensors-0") == {"offset": 7}
    assert not marker.exists()


def _trained(model: ModelConfig | None = None) -> Engine:
    eng = Engine(EngineConfig(model=model or ModelConfig(hidden=8)))
    eng.process([Event("sensor", "a", 60_000 * i, {"x": float(i % 4)}) for i in range(20)])
    return eng


def test_engine_state_round_trips_through_weights_only() -> None:
    eng = _trained()
    state = loads(dumps(eng.state_dict()))
    clone = Engine(eng.config)
    clone.load_state_dict(state)
    assert clone.stats.accepted == 20 and clone.keys_held == 1


@pytest.mark.parametrize("change", [
    {"model": ModelConfig(hidden=16)}, {"model": ModelConfig(hidden=8, cell="lstm")},
    {"model": ModelConfig(hidden=8, layers=2)}, {"model": ModelConfig(hidden=8, horizon=3)}])
def test_engine_refuses_another_architecture(change: dict[str, Any]) -> None:
    state = _trained().state_dict()
    with pytest.raises(CheckpointError, match="architecture"):
        Engine(EngineConfig(**change)).load_state_dict(state)


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 0, None, "1"])
def test_engine_refuses_another_format_version(version: Any) -> None:
    state = _trained().state_dict()
    state["format_version"] = version
    with pytest.raises(CheckpointError, match="format"):
        Engine(EngineConfig(model=ModelConfig(hidden=8))).load_state_dict(state)


def test_engine_refuses_other_value_names() -> None:
    state = _trained().state_dict()
    eng = Engine(EngineConfig(model=ModelConfig(hidden=8), values=("y",)))
    with pytest.raises(CheckpointError, match="value names"):
        eng.load_state_dict(state)


@pytest.mark.parametrize("snapshot, message", [
    ({"format": "streamseq-shard/0", "offset": 3}, "has format"),
    ({"format": "streamseq-shard/1", "offset": 3, "engine": "hidden=8"}, "does not fit")])
def test_service_refuses_an_incompatible_snapshot(tmp_path: Path, snapshot: dict[str, Any],
                                                  message: str) -> None:
    from kafka import TopicPartition

    from streamseq.service.shards import ServiceError, ShardFactory

    if snapshot.get("engine") == "hidden=8":
        snapshot["engine"] = _trained().state_dict()
    cfg = load_config(env={}, overrides={"bootstrap": "k:9092", "checkpoint_dir":
                                         str(tmp_path), "metrics_port": 0})
    store = LocalCheckpointStore(tmp_path)
    store.save("sensors-0", snapshot)
    with pytest.raises(ServiceError, match=message):
        ShardFactory(cfg).restore(TopicPartition("sensors", 0), store)
