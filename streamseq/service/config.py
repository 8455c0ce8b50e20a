"""Service configuration: one frozen object built from defaults, a TOML/YAML file, the
environment (``STREAMSEQ_*``, read here and nowhere else) and command-line flags, in that
order of precedence, validated once at start-up. Secrets are masked when logged.

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

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from streamseq.config import EngineConfig
from streamseq.text.config import TextEngineConfig

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from streamseq.exceptions import ConfigError

__all__ = ["ServiceConfig", "TopicSpec", "load_config", "SECURITY_KEYS"]

SECURITY_KEYS = (
    "security_protocol", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password",
    "ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password", "ssl_crlfile",
    "ssl_check_hostname", "sasl_kerberos_service_name", "sasl_kerberos_domain_name",
)
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
class ServiceConfig:
    """Everything ``streamseq run`` needs. See the module docstring for the file layout."""

    bootstrap: str | None = None
    topics: tuple[TopicSpec, ...] = (TopicSpec("sensors", "sensor"), TopicSpec("prices", "price"))
    prediction_topic: str = "predictions"
    dead_letter_topic: str = "dead-letters"
    group: str = "streamseq"
    client_id: str = "streamseq"
    auto_offset_reset: str = "earliest"
    security: Mapping[str, Any] = field(default_factory=dict)
    checkpoint_store: str = "local"
    checkpoint_dir: str = "./streamseq-state"
    checkpoint_topic: str = "streamseq-checkpoints"
    checkpoint_keep: int = 3
    checkpoint_every_events: int = 50_000
    checkpoint_every_seconds: float = 30.0
    warm_start: str | None = None
    poll_timeout_ms: int = 200
    fetch_max_wait_ms: int = 50  # kafka-python's 500 ms default dominates latency at low rates
    max_poll_records: int = 2000
    producer_linger_ms: int = 5
    producer_batch_bytes: int = 262_144
    producer_compression: str = "none"
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 2_000
    max_poll_interval_ms: int = 300_000
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9400
    max_message_bytes: int = 1_000_000
    dead_letter_max_bytes: int = 64_000
    naive_tz: str | None = "UTC"
    max_future_ms: int = 86_400_000  # event times this far after the record's own: bad_time
    threads: int = 1
    engine: EngineConfig = field(default_factory=EngineConfig)
    text: TextEngineConfig | None = None  # text shards: None = the default language model

    def __post_init__(self) -> None:
        if self.auto_offset_reset not in ("earliest", "latest"):
            raise ConfigError("auto_offset_reset must be earliest or latest")
        if not self.topics:
            raise ConfigError("no input topics configured")
        names = [t.name for t in self.topics]
        if len(set(names)) != len(names):
            raise ConfigError(f"input topics repeat: {names}")
        for out in (self.prediction_topic, self.dead_letter_topic):
            if out in names:
                raise ConfigError(f"output topic {out!r} is also an input topic")
        unknown = set(self.security) - set(SECURITY_KEYS)
        if unknown:
            raise ConfigError(f"unknown security settings {sorted(unknown)}; known: "
                              f"{SECURITY_KEYS}")
        if self.producer_compression not in ("none", "gzip", "snappy", "lz4", "zstd"):
            raise ConfigError("producer_compression must be none, gzip, snappy, lz4 or zstd")
        if self.checkpoint_store not in ("local", "kafka"):
            raise ConfigError("checkpoint_store must be local or kafka")
        if self.checkpoint_every_events < 1 or self.checkpoint_every_seconds <= 0:
            raise ConfigError("checkpoint intervals must be positive")
        if not 0 < self.metrics_port < 65536 and self.metrics_port != 0:
            raise ConfigError("metrics_port must be a TCP port")

    def kind_of(self, topic: str) -> str:
        for t in self.topics:
            if t.name == topic:
                return t.kind
        raise KeyError(topic)

    def masked(self) -> dict[str, Any]:
        """The configuration as a dict with secrets replaced by ``***``."""
        d = asdict(self)
        d["security"] = {k: ("***" if k in SECRET_KEYS else v) for k, v in
                         self.security.items()}
        return d

    def __repr__(self) -> str:  # never print secrets by accident
        return f"ServiceConfig({json.dumps(self.masked(), default=str)})"


def _read_file(path: Path) -> dict[str, Any]:
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = tomllib.loads(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a table")
    return data


def _secret_files(security: dict[str, Any]) -> dict[str, Any]:
    """``<secret>_file`` settings: read the secret from that file (Kubernetes/Docker)."""
    out = {}
    for k, v in security.items():
        if k.endswith("_file") and k[:-5] in SECRET_KEYS:
            try:
                out[k[:-5]] = Path(v).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read {k} {v!r}: {exc}") from exc
        else:
            out[k] = v
    return out


def _coerce(name: str, raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        return raw.lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    return raw


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """``STREAMSEQ_<FIELD>`` for top-level fields, ``STREAMSEQ_SECURITY_<KEY>`` for
    security, ``STREAMSEQ_TOPICS=sensors:sensor,prices:price``."""
    out: dict[str, Any] = {}
    security: dict[str, Any] = {}
    defaults = ServiceConfig()
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX):].lower()
        if name.startswith("security_"):
            security[name[len("security_"):]] = raw
        elif name.startswith("engine_"):  # STREAMSEQ_ENGINE_LEARNER_LR=0.003
            _engine_env(out.setdefault("engine", {}), name[len("engine_"):], raw, key)
        elif name == "topics":
            out["topics"] = _parse_topics(raw)
        elif name in ("sensor_topic", "price_topic", "text_topic"):  # same as the repeatable flags
            kind = name.split("_")[0]
            out.setdefault("_kind_topics", []).extend(
                TopicSpec(t.strip(), kind) for t in raw.split(",") if t.strip())
        elif name in defaults.__dataclass_fields__ and name not in ("engine", "security"):
            out[name] = _coerce(name, raw, getattr(defaults, name))
    if security:
        out["security"] = security
    if "_kind_topics" in out:
        out["topics"] = tuple(out.pop("_kind_topics"))
    return out


def _engine_env(engine: dict[str, Any], name: str, raw: str, var: str) -> None:
    defaults = EngineConfig().to_dict()
    section, _, field_name = name.partition("_")
    if section not in defaults or not isinstance(defaults[section], dict) or (
            field_name not in defaults[section]):
        raise ConfigError(f"{var}: no engine setting {section}.{field_name}")
    default = defaults[section][field_name]
    value: Any = raw if default is None else _coerce(field_name, raw, default)
    if default is None and field_name == "idle_ttl_s":
        value = float(raw)
    engine.setdefault(section, {})[field_name] = value


def _parse_topics(raw: str | list[Any]) -> tuple[TopicSpec, ...]:
    """``"sensors:sensor,prices:price"`` or a list of tables/strings."""
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


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> ServiceConfig:
    """Defaults <- file <- environment <- ``overrides`` (flags), validated.

    Examples
    --------
    >>> c = load_config(env={"STREAMSEQ_BOOTSTRAP": "k:9092", "STREAMSEQ_METRICS_PORT": "9500",
    ...                      "STREAMSEQ_SECURITY_SASL_PLAIN_PASSWORD": "hunter2"})
    >>> c.bootstrap, c.metrics_port, c.masked()["security"]
    ('k:9092', 9500, {'sasl_plain_password': '***'})
    >>> "hunter2" in repr(c)
    False
    """
    env = os.environ if env is None else env
    merged: dict[str, Any] = {}
    engine: dict[str, Any] = {}
    if path is None and env.get(ENV_PREFIX + "CONFIG"):
        path = env[ENV_PREFIX + "CONFIG"]
    if path is not None:
        data = _read_file(Path(path))
        engine = data.pop("engine", {}) or {}
        merged.update(data)
    from_env = _from_env(env)
    engine = _deep_merge(engine, from_env.pop("engine", {}))
    merged.update(from_env)
    for k, v in (overrides or {}).items():
        if v is None:
            continue
        if k == "engine":
            engine = _deep_merge(engine, v)
        elif k == "security":
            merged["security"] = {**merged.get("security", {}), **v}
        else:
            merged[k] = v
    if "topics" in merged:
        merged["topics"] = _parse_topics(merged["topics"])
    merged["security"] = _secret_files(dict(merged.get("security", {})))
    known = set(ServiceConfig.__dataclass_fields__)
    unknown = set(merged) - known
    if unknown:
        raise ConfigError(f"unknown settings {sorted(unknown)}")
    text = merged.pop("text", None)
    try:
        base = EngineConfig.from_dict(_deep_merge(EngineConfig().to_dict(), engine))
        if text is not None and not isinstance(text, TextEngineConfig):
            text = TextEngineConfig.from_dict(dict(text))
        return replace(ServiceConfig(), **merged, engine=base, text=text)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc


def _deep_merge(a: dict[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(
            out.get(k), dict) else v
    return out
