"""Service configuration: one frozen object built from defaults, a TOML/YAML file, the
environment (``STREAMSEQ_*``, passed in by the caller) and command-line flags, in that
order of precedence, validated once at start-up. Secrets are masked when logged.

Every setting is a typed field of :class:`ServiceConfig` (the engine's under ``engine``,
the text shards' under ``text``, Kafka security under ``security``); flags and environment
variables are derived from the fields (:mod:`streamseq.config_base`): ``--hidden`` sets
``engine.model.hidden``, ``STREAMSEQ_ENGINE_LEARNER_LR`` sets ``engine.learner.lr``,
``STREAMSEQ_TEXT_LM_HIDDEN`` sets ``text.lm.hidden``.

File layout (TOML)::

    bootstrap = "kafka:9092"
    group = "streamseq"
    prediction_topic = "predictions"
    dead_letter_topic = "dead-letters"
    checkpoint_dir = "/var/lib/streamseq"
    metrics_port = 9400

    [[topics]]
    name = "sensors"
    kind = "sensor"

    [[topics]]
    name = "prices"
    kind = "price"

    [security]              # passed through to kafka-python
    security_protocol = "SASL_SSL"
    sasl_mechanism = "SCRAM-SHA-512"
    sasl_plain_username = "streamseq"
    sasl_plain_password_file = "/run/secrets/kafka-password"

    [engine.model]
    cell = "gru"
    hidden = 64
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from streamseq.config import EngineConfig
from streamseq.config_base import (
    ConfigBase,
    config_from_dict,
    deep_merge,
    env_overrides,
    flag,
)
from streamseq.text.config import TextEngineConfig

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from streamseq.exceptions import ConfigError

__all__ = ["ServiceConfig", "SecurityConfig", "TopicSpec", "load_config", "SECURITY_KEYS",
           "SECRET_KEYS", "ENV_PREFIX", "check_bootstrap"]

SECRET_KEYS = frozenset(("sasl_plain_password", "ssl_password"))
ENV_PREFIX = "STREAMSEQ_"


@dataclass(frozen=True)
class TopicSpec:
    """An input topic and the kind of event it carries."""

    name: str
    kind: str = "sensor"

    def __post_init__(self) -> None:
        if self.kind not in ("sensor", "price", "text"):
            raise ConfigError(f"topic {self.name!r}: kind must be sensor, price or text")
        if not self.name:
            raise ConfigError("topic name is empty")


@dataclass(frozen=True)
class SecurityConfig(ConfigBase):
    """Kafka security settings, passed to kafka-python unchanged (:meth:`kafka_kwargs`).

    Secrets come from the environment, the config file, or ``*_password_file`` settings
    (Kubernetes/Docker secrets), never from a flag: a flag would show in ``ps``.
    """

    security_protocol: str | None = field(default=None, metadata=flag(
        help="PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"))
    sasl_mechanism: str | None = field(default=None, metadata=flag(
        help="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"))
    sasl_plain_username: str | None = field(default=None, metadata=flag("--sasl-username"))
    sasl_plain_password: str | None = None
    sasl_plain_password_file: str | None = field(default=None, metadata=flag(
        "--sasl-password-file", "file holding the SASL password (never a flag: it would "
        "show in the process list)"))
    ssl_cafile: str | None = field(default=None, metadata=flag())
    ssl_certfile: str | None = field(default=None, metadata=flag())
    ssl_keyfile: str | None = field(default=None, metadata=flag())
    ssl_password: str | None = None
    ssl_password_file: str | None = None
    ssl_crlfile: str | None = None
    ssl_check_hostname: bool | None = None
    sasl_kerberos_service_name: str | None = None
    sasl_kerberos_domain_name: str | None = None

    def with_secret_files(self) -> SecurityConfig:
        """``*_password_file`` settings read into their secrets (ConfigError if unreadable)."""
        changes: dict[str, Any] = {}
        for secret in SECRET_KEYS:
            path = getattr(self, secret + "_file")
            if path is not None:
                try:
                    changes[secret] = Path(path).read_text().strip()
                except OSError as exc:
                    raise ConfigError(f"cannot read {secret}_file {path!r}: {exc}") from exc
                changes[secret + "_file"] = None
        return self.replace(**changes) if changes else self

    def kafka_kwargs(self) -> dict[str, Any]:
        """The settings given, as kafka-python keyword arguments."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None and not f.name.endswith("_file")}

    def masked(self) -> dict[str, Any]:
        return {k: ("***" if k in SECRET_KEYS else v) for k, v in self.kafka_kwargs().items()}


SECURITY_KEYS = tuple(f.name for f in fields(SecurityConfig) if not f.name.endswith("_file"))


@dataclass(frozen=True)
class ServiceConfig(ConfigBase):
    """Everything ``streamseq run`` needs. See the module docstring for the file layout."""

    bootstrap: str | None = field(default=None, metadata=flag(
        help="Kafka bootstrap servers, host:port[,host:port]"))
    topics: tuple[TopicSpec, ...] = (TopicSpec("sensors", "sensor"), TopicSpec("prices", "price"))
    prediction_topic: str = field(default="predictions", metadata=flag())
    dead_letter_topic: str = field(default="dead-letters", metadata=flag())
    anomaly_topic: str | None = field(default=None, metadata=flag(
        help="publish each value flagged as an anomaly (key, time, value, forecast, "
        "interval) to this topic (default: none)"))
    group: str = field(default="streamseq", metadata=flag(help="consumer group"))
    client_id: str = "streamseq"
    auto_offset_reset: str = field(default="earliest", metadata=flag(
        choices=("earliest", "latest")))
    security: SecurityConfig = field(default_factory=SecurityConfig)
    checkpoint_store: str = field(default="local", metadata=flag(
        help="where shard snapshots go", choices=("local", "kafka")))
    checkpoint_dir: str = field(default="./streamseq-state", metadata=flag(
        help="directory of the local checkpoint store"))
    checkpoint_topic: str = field(default="streamseq-checkpoints", metadata=flag(
        help="topic of the kafka checkpoint store"))
    checkpoint_keep: int = 3
    checkpoint_every_events: int = field(default=50_000, metadata=flag())
    checkpoint_every_seconds: float = field(default=30.0, metadata=flag())
    checkpoint_full_every: int = field(default=8, metadata=flag(
        help="a complete snapshot after this many deltas (snapshots "
             "of the keys changed since the previous one); 0: every snapshot complete"))
    on_corrupt_state: str = field(default="refuse", metadata=flag(
        help="when every snapshot of a partition is unreadable: refuse (stop, exit code 3; "
             "the default) or fresh (start it from a fresh or warm-start model at the "
             "committed offset, its learned state lost, counted and alerted)",
        choices=("refuse", "fresh")))
    warm_start: str | None = field(default=None, metadata=flag(
        help="checkpoint from `streamseq backtest --save-checkpoint` used by partitions "
             "without a snapshot"))
    # Client settings measured in bench/results/e2e.md and producer_settings.md. A poll
    # returns as soon as records are buffered (the timeout only bounds an idle wait); a
    # fetch waits up to fetch_max_wait_ms for data: on Apache Kafka it returns as soon as
    # there is any, on Tansu it waits about that long, so it sets the latency floor there
    # (kafka-python's 500 ms default: p50 ~130 ms at 1,000 events/s; 10 ms: ~9 ms), and
    # when idle it is one small request per partition leader every 10 ms.
    poll_timeout_ms: int = 200
    fetch_max_wait_ms: int = 10
    max_poll_records: int = field(default=2000, metadata=flag())
    producer_linger_ms: int = 2  # a poll's predictions are sent in one loop: no wait needed
    producer_batch_bytes: int = 1_048_576
    producer_compression: str = "none"  # loopback and LAN: compressing costs more CPU
    session_timeout_ms: int = field(default=10_000, metadata=flag())
    heartbeat_interval_ms: int = field(default=2_000, metadata=flag())
    max_poll_interval_ms: int = 300_000
    metrics_host: str = field(default="127.0.0.1", metadata=flag(
        help="address of /metrics, /healthz, /readyz"))
    metrics_port: int = field(default=9400, metadata=flag())
    max_message_bytes: int = 1_000_000
    dead_letter_max_bytes: int = 64_000
    naive_tz: str | None = "UTC"
    max_future_ms: int = 86_400_000  # event times this far after the record's own: bad_time
    threads: int = 1
    workers: str = field(default="1", metadata=flag(
        help="consumer processes of the group on this host, under one supervisor that serves "
             "their metrics and health on the metrics port: N, or auto (the usable cores); "
             "1 runs the service in this process"))
    engine: EngineConfig = field(default_factory=EngineConfig)
    text: TextEngineConfig | None = field(default=None, metadata=flag(
        "--text-classifier", "text shards host the online classifier too (labels inline or "
        "late)", const={"lm": {}, "classifier": {}}))

    def __post_init__(self) -> None:
        if self.auto_offset_reset not in ("earliest", "latest"):
            raise ConfigError("auto_offset_reset must be earliest or latest")
        if not self.topics:
            raise ConfigError("no input topics configured")
        names = [t.name for t in self.topics]
        if len(set(names)) != len(names):
            raise ConfigError(f"input topics repeat: {names}")
        for out in (self.prediction_topic, self.dead_letter_topic, self.anomaly_topic):
            if out is not None and out in names:
                raise ConfigError(f"output topic {out!r} is also an input topic")
        if self.producer_compression not in ("none", "gzip", "snappy", "lz4", "zstd"):
            raise ConfigError("producer_compression must be none, gzip, snappy, lz4 or zstd")
        if self.checkpoint_store not in ("local", "kafka"):
            raise ConfigError("checkpoint_store must be local or kafka")
        if self.on_corrupt_state not in ("refuse", "fresh"):
            raise ConfigError("on_corrupt_state must be refuse or fresh")
        if self.checkpoint_every_events < 1 or self.checkpoint_every_seconds <= 0:
            raise ConfigError("checkpoint intervals must be positive")
        if self.checkpoint_full_every < 0:
            raise ConfigError("checkpoint_full_every must be 0 or more")
        if not 0 < self.metrics_port < 65536 and self.metrics_port != 0:
            raise ConfigError("metrics_port must be a TCP port")
        if self.bootstrap:
            check_bootstrap(self.bootstrap)
        workers = str(self.workers).strip().lower()  # a config file may give a number
        if workers != "auto" and not (workers.isdigit() and int(workers) >= 1):
            raise ConfigError(f"workers must be a positive number or auto, not {self.workers!r}")
        object.__setattr__(self, "workers", workers)

    def kind_of(self, topic: str) -> str:
        for t in self.topics:
            if t.name == topic:
                return t.kind
        raise KeyError(topic)

    def masked(self) -> dict[str, Any]:
        """The configuration as a dict with secrets replaced by ``***``."""
        d = self.to_dict()
        d["security"] = self.security.masked()
        return d

    def __repr__(self) -> str:  # never print secrets by accident
        return f"ServiceConfig({json.dumps(self.masked(), default=str)})"


def check_bootstrap(bootstrap: str) -> None:
    """Raise :class:`ConfigError` unless ``bootstrap`` is ``HOST:PORT[,HOST:PORT...]`` with
    ports 1-65535 (an IPv6 host in brackets).

    Examples
    --------
    >>> check_bootstrap("kafka-0:9092,[::1]:9093")
    >>> check_bootstrap("127.0.0.1:abc")
    Traceback (most recent call last):
    ...
    streamseq.exceptions.ConfigError: bootstrap '127.0.0.1:abc': port 'abc' is not a number (HOST:PORT, e.g. kafka:9092)
    >>> check_bootstrap("kafka:99999")
    Traceback (most recent call last):
    ...
    streamseq.exceptions.ConfigError: bootstrap 'kafka:99999': port 99999 is out of range (1-65535)
    """
    for server in bootstrap.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or not host.strip("[]") or not port:
            raise ConfigError(f"bootstrap {server!r} is not HOST:PORT (e.g. kafka:9092)")
        if not port.isdigit():
            raise ConfigError(f"bootstrap {server!r}: port {port!r} is not a number "
                              "(HOST:PORT, e.g. kafka:9092)")
        if not 0 < int(port) < 65536:
            raise ConfigError(f"bootstrap {server!r}: port {int(port)} is out of range "
                              "(1-65535)")


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = tomllib.loads(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a table")
    return data


def parse_topics(raw: str | list[Any] | tuple[Any, ...]) -> tuple[TopicSpec, ...]:
    """``"sensors:sensor,prices:price"`` or a list of tables/strings/TopicSpecs.

    >>> parse_topics("sensors:sensor,prices:price")[1]
    TopicSpec(name='prices', kind='price')
    """
    items = raw.split(",") if isinstance(raw, str) else raw
    specs = []
    for item in items:
        if isinstance(item, TopicSpec):
            specs.append(item)
        elif isinstance(item, dict):
            specs.append(TopicSpec(str(item["name"]), str(item.get("kind", "sensor"))))
        else:
            name, _, kind = str(item).strip().partition(":")
            specs.append(TopicSpec(name, kind or "sensor"))
    return tuple(specs)


def _topics_from_env(env: Mapping[str, str]) -> tuple[TopicSpec, ...] | None:
    """``STREAMSEQ_TOPICS=sensors:sensor,prices:price``, or per kind
    ``STREAMSEQ_SENSOR_TOPIC=a,b`` (like the repeatable flags)."""
    if env.get(ENV_PREFIX + "TOPICS"):
        return parse_topics(env[ENV_PREFIX + "TOPICS"])
    specs = [TopicSpec(t.strip(), kind) for kind in ("sensor", "price", "text")
             for t in env.get(f"{ENV_PREFIX}{kind.upper()}_TOPIC", "").split(",") if t.strip()]
    return tuple(specs) or None


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> ServiceConfig:
    """Defaults <- file <- environment <- ``overrides`` (flags, a nested dict), validated.

    ``env`` is the environment to read (``STREAMSEQ_*``): pass ``os.environ`` explicitly;
    ``None`` reads none.

    Examples
    --------
    >>> c = load_config(env={"STREAMSEQ_BOOTSTRAP": "k:9092", "STREAMSEQ_METRICS_PORT": "9500",
    ...                      "STREAMSEQ_SECURITY_SASL_PLAIN_PASSWORD": "hunter2",
    ...                      "STREAMSEQ_ENGINE_LEARNER_LR": "0.01"})
    >>> c.bootstrap, c.metrics_port, c.engine.learner.lr, c.masked()["security"]
    ('k:9092', 9500, 0.01, {'sasl_plain_password': '***'})
    >>> "hunter2" in repr(c)
    False
    """
    env = env or {}
    merged: dict[str, Any] = {}
    if path is None and env.get(ENV_PREFIX + "CONFIG"):
        path = env[ENV_PREFIX + "CONFIG"]
    if path is not None:
        merged = _read_file(Path(path))
    merged = deep_merge(merged, env_overrides(ServiceConfig, env, ENV_PREFIX,
                                              strict=("engine", "security", "text")))
    topics = _topics_from_env(env)
    if topics is not None:
        merged["topics"] = topics
    merged = deep_merge(merged, {k: v for k, v in (overrides or {}).items() if v is not None})
    if "topics" in merged:
        merged["topics"] = parse_topics(merged["topics"])
    config = config_from_dict(ServiceConfig, merged)
    return dataclasses.replace(config, security=config.security.with_secret_files())

