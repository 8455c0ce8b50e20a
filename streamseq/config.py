"""Engine configuration: frozen dataclasses, validated once, serialisable to plain dicts.

The service configuration (Kafka, checkpoints, HTTP) lives in
:mod:`streamseq.service.config`; this module holds what the engine itself needs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

from streamseq.exceptions import ConfigError

__all__ = [
    "ModelConfig",
    "FeatureConfig",
    "LearnerConfig",
    "DriftConfig",
    "StateConfig",
    "EngineConfig",
]

CELLS = ("gru", "lstm")
TRANSFORMS = ("level", "logret", "log1p")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of :class:`~streamseq.models.RecurrentForecaster`.

    ``residual`` makes the head predict the change from the last observed (scaled) value of
    each level target, so an untrained model starts as persistence.
    """

    cell: str = "gru"
    hidden: int = 64
    layers: int = 1
    dropout: float = 0.0
    horizon: int = 1
    residual: bool = True

    def __post_init__(self) -> None:
        _check(self.cell in CELLS, f"cell must be one of {CELLS}, not {self.cell!r}")
        _check(self.hidden >= 1 and self.layers >= 1, "hidden and layers must be >= 1")
        _check(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")
        _check(self.horizon >= 1, "horizon must be >= 1")


@dataclass(frozen=True)
class FeatureConfig:
    """Per-key feature pipeline.

    Parameters
    ----------
    scaling
        ``online``: running mean/variance per key and value (updated with each observation
        before it is scaled, as river's ``StandardScaler``). ``fixed``: statistics of the
        first ``fixed_warmup`` events of the key (or set by :meth:`Engine.fit_scaler`), then
        frozen (the published ETT protocol).
    clip, target_clip
        Scaled values are clipped to +-``clip`` as recurrent inputs, and to the much wider
        +-``target_clip`` as training targets and as the base of the residual head (a
        non-stationary series may leave its warm-up range far behind: clipping its
        persistence base would make forecasts wrong by the excess).
    max_abs_value
        Readings beyond this magnitude are rejected (``out_of_range``): a finite 1e308
        would overflow the running variance and poison the key.
    missing
        ``carry``: a missing value repeats the key's last value and sets a missingness
        indicator; ``reject``: the event is rejected (reason ``missing_value``).
    transforms
        ``name -> level|logret|log1p``; unnamed price fields default to ``logret`` (prices)
        and ``log1p`` (size/volume), everything else to ``level``.
    """

    scaling: str = "online"
    fixed_warmup: int = 0
    missing: str = "carry"
    calendar: bool = True
    dt: bool = True
    clip: float = 8.0
    target_clip: float = 1e4
    max_abs_value: float = 1e12
    transforms: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(self.scaling in ("online", "fixed"), "scaling must be online or fixed")
        _check(self.max_abs_value > 0, "max_abs_value must be > 0")
        _check(self.missing in ("carry", "reject"), "missing must be carry or reject")
        _check(self.clip > 0 and self.target_clip >= self.clip, "need 0 < clip <= target_clip")
        for name, t in self.transforms.items():
            _check(t in TRANSFORMS, f"transform of {name!r} must be one of {TRANSFORMS}")


@dataclass(frozen=True)
class LearnerConfig:
    """Online learning by truncated BPTT.

    A key's window falls due every ``k1`` of its trainable positions; the window runs the
    recurrent net over the last ``k2`` positions from the stored hidden state and takes the
    loss on the last ``k1`` of them (each target is learned exactly once). One optimizer
    step is made each time ``batch_windows`` windows have fallen due in the shard, on the
    mean of their losses: update points are defined by the stream, not by polls.
    """

    learn: bool = True
    k1: int = 4
    k2: int = 16
    batch_windows: int = 16
    max_segment: int = 4096
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    clip_grad: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.k1 >= 1 and self.k2 >= self.k1, "need 1 <= k1 <= k2")
        _check(self.batch_windows >= 1 and self.max_segment >= 1, "batch sizes must be >= 1")
        _check(self.optimizer in ("adam", "adamw", "sgd"), "optimizer must be adam, adamw or sgd")
        _check(self.lr > 0, "lr must be > 0")


@dataclass(frozen=True)
class DriftConfig:
    """Drift detection on each key's scaled absolute one-step error: Page-Hinkley (river's
    ``drift.PageHinkley`` semantics; ``delta``, ``threshold``, ``alpha``,
    ``min_instances`` are its parameters), vectorised over keys. ``action`` on a
    detection: ``reset`` the key's recurrent state, or ``boost_lr`` for a while."""

    detector: str = "page_hinkley"
    delta: float = 0.005
    threshold: float = 50.0
    alpha: float = 1 - 0.0001
    min_instances: int = 30
    action: str = "none"
    boost_factor: float = 3.0
    boost_updates: int = 50

    def __post_init__(self) -> None:
        _check(self.detector != "adwin", "drift detector 'adwin' was replaced by "
                                         "'page_hinkley' (per-key arrays, engine v2)")
        _check(self.detector in ("page_hinkley", "none"),
               "drift detector must be page_hinkley or none")
        _check(self.threshold > 0 and 0 < self.alpha <= 1 and self.min_instances >= 1,
               "drift: need threshold > 0, 0 < alpha <= 1, min_instances >= 1")
        _check(self.action in ("none", "reset", "boost_lr"), "drift action: none|reset|boost_lr")


@dataclass(frozen=True)
class StateConfig:
    """Per-key state lifetime and event ordering.

    ``idle_ttl_s`` and ``max_keys`` evict keys (checked at update points, on event time);
    an event older than its key's last one by more than ``late_tolerance_ms`` is dropped as
    ``late``; an event with the same time and values as one of its key's last
    ``recent_events`` applied events, or with the id of one of its key's last
    ``recent_events`` identified events, is dropped as ``duplicate``. Events older than the
    key's newest but inside the tolerance are applied (not reordered) with dt = 0.
    """

    max_keys: int = 100_000
    idle_ttl_s: float | None = None
    late_tolerance_ms: int = 0
    recent_events: int = 4

    def __post_init__(self) -> None:
        _check(self.max_keys >= 1, "max_keys must be >= 1")
        _check(1 <= self.recent_events <= 64, "recent_events must be in 1..64")
        _check(self.late_tolerance_ms >= 0, "late_tolerance_ms must be >= 0")


@dataclass(frozen=True)
class EngineConfig:
    """Everything one engine shard needs. ``values`` fixes the value names (else the first
    event's names); ``targets`` picks the forecast columns (default all values)."""

    kind: str = "sensor"
    values: tuple[str, ...] | None = None
    targets: tuple[str, ...] | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    state: StateConfig = field(default_factory=StateConfig)

    def __post_init__(self) -> None:
        _check(self.kind in ("sensor", "price"), "kind must be sensor or price")
        if self.values is not None and self.targets is not None:
            missing = set(self.targets) - set(self.values)
            _check(not missing, f"targets {sorted(missing)} are not among values")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EngineConfig:
        return _build(cls, d)

    def replace(self, **changes: Any) -> EngineConfig:
        """A copy with top-level or dotted (``"learner.lr"``) fields changed."""
        d = self.to_dict()
        for name, value in changes.items():
            parts = name.replace("__", ".").split(".")
            node = d
            for p in parts[:-1]:
                node = node[p]
            if parts[-1] not in node:
                raise ConfigError(f"unknown engine setting {name!r}")
            node[parts[-1]] = value
        return EngineConfig.from_dict(d)


def _build(cls: type, d: dict[str, Any]) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = set(d) - set(known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} settings: {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in d.items():
        default = known[name].default_factory if known[name].default_factory is not None else None  # type: ignore[misc]
        sub = default() if callable(default) else None
        if is_dataclass(sub) and isinstance(value, dict):
            kwargs[name] = _build(type(sub), value)
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)
