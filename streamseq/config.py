"""Engine configuration: frozen dataclasses, validated once, serialisable to plain dicts.

The service configuration (Kafka, checkpoints, HTTP) lives in
:mod:`streamseq.service.config`; this module holds what the engine itself needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streamseq.config_base import ConfigBase, flag
from streamseq.exceptions import ConfigError

__all__ = [
    "ModelConfig",
    "FeatureConfig",
    "LearnerConfig",
    "DriftConfig",
    "StateConfig",
    "ForecastConfig",
    "EngineConfig",
]

CELLS = ("gru", "lstm")
EXPERTS = ("persistence", "smoother", "seasonal", "linear")
TRANSFORMS = ("level", "logret", "log1p")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class ModelConfig(ConfigBase):
    """Architecture of :class:`~streamseq.models.RecurrentForecaster`.

    ``residual`` makes the head predict the change from the last observed (scaled) value of
    each level target, so an untrained model starts as persistence.
    """

    cell: str = field(default="gru", metadata=flag(choices=CELLS))
    hidden: int = field(default=64, metadata=flag())
    layers: int = field(default=1, metadata=flag())
    dropout: float = field(default=0.0, metadata=flag())
    horizon: int = field(default=1, metadata=flag())
    residual: bool = True

    def __post_init__(self) -> None:
        _check(self.cell in CELLS, f"cell must be one of {CELLS}, not {self.cell!r}")
        _check(self.hidden >= 1 and self.layers >= 1, "hidden and layers must be >= 1")
        _check(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")
        _check(self.horizon >= 1, "horizon must be >= 1")


@dataclass(frozen=True)
class FeatureConfig(ConfigBase):
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

    scaling: str = field(default="online", metadata=flag(choices=("online", "fixed")))
    fixed_warmup: int = 0
    missing: str = field(default="carry", metadata=flag(choices=("carry", "reject")))
    calendar: bool = field(default=True, metadata=flag("--no-calendar"))
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
class LearnerConfig(ConfigBase):
    """Online learning by truncated BPTT.

    A key's window falls due every ``k1`` of its trainable positions; the window runs the
    recurrent net over the last ``k2`` positions from the stored hidden state and takes the
    loss on the last ``k1`` of them (each target is learned exactly once). One optimizer
    step is made each time ``batch_windows`` windows have fallen due in the shard, on the
    mean of their losses: update points are defined by the stream, not by polls.
    """

    learn: bool = field(default=True, metadata=flag("--no-learn", "forecast with fixed "
                                                                "weights"))
    k1: int = field(default=4, metadata=flag(help="a key's window falls due every k1 of "
                                                    "its events"))
    k2: int = field(default=4, metadata=flag(help="backprop length"))
    batch_windows: int = field(default=64, metadata=flag(
        help="optimizer step after this many due windows in the shard"))
    max_segment: int = 4096
    optimizer: str = field(default="adam", metadata=flag(choices=("adam", "adamw", "sgd")))
    lr: float = field(default=1e-3, metadata=flag())
    weight_decay: float = 0.0
    clip_grad: float = 1.0
    seed: int = field(default=0, metadata=flag())

    def __post_init__(self) -> None:
        _check(self.k1 >= 1 and self.k2 >= self.k1, "need 1 <= k1 <= k2")
        _check(self.batch_windows >= 1 and self.max_segment >= 1, "batch sizes must be >= 1")
        _check(self.optimizer in ("adam", "adamw", "sgd"), "optimizer must be adam, adamw or sgd")
        _check(self.lr > 0, "lr must be > 0")


@dataclass(frozen=True)
class DriftConfig(ConfigBase):
    """Drift detection on each key's scaled absolute one-step error: Page-Hinkley (river's
    ``drift.PageHinkley`` semantics; ``delta``, ``threshold``, ``alpha``,
    ``min_instances`` are its parameters), vectorised over keys. ``action`` on a
    detection: ``reset`` the key's recurrent state, or ``boost_lr`` for a while."""

    detector: str = "page_hinkley"
    delta: float = 0.005
    threshold: float = 50.0
    alpha: float = 1 - 0.0001
    min_instances: int = 30
    action: str = field(default="none", metadata=flag(
        "--drift-action", choices=("none", "reset", "boost_lr")))
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
class StateConfig(ConfigBase):
    """Per-key state lifetime and event ordering.

    ``idle_ttl_s`` and ``max_keys`` evict keys (checked at update points, on event time);
    an event older than its key's last one by more than ``late_tolerance_ms`` is dropped as
    ``late``; an event with the same time and values as one of its key's last
    ``recent_events`` applied events, or with the id of one of its key's last
    ``recent_events`` identified events, is dropped as ``duplicate``. Events older than the
    key's newest but inside the tolerance are applied (not reordered) with dt = 0.
    """

    max_keys: int = field(default=100_000, metadata=flag())
    idle_ttl_s: float | None = field(default=None, metadata=flag(
        "--idle-ttl", "evict keys idle this many seconds of event time"))
    late_tolerance_ms: int = field(default=0, metadata=flag(
        help="apply events up to this much older than their key's last one; drop older ones "
             "as late"))
    recent_events: int = 4

    def __post_init__(self) -> None:
        _check(self.max_keys >= 1, "max_keys must be >= 1")
        _check(1 <= self.recent_events <= 64, "recent_events must be in 1..64")
        _check(self.late_tolerance_ms >= 0, "late_tolerance_ms must be >= 0")


@dataclass(frozen=True)
class ForecastConfig(ConfigBase):
    """Per-key aggregation of experts, prediction intervals and anomaly flags
    (:mod:`streamseq.forecast`).

    Parameters
    ----------
    experts
        Experts mixed with the recurrent model: any of ``persistence``, ``smoother``,
        ``seasonal``, ``linear``. Empty: the published forecast is the bare model (the
        experts still run and are scored, intervals and anomaly flags still apply).
    smoother_alpha, smoother_beta, smoother_phi
        Level, trend and damping of the smoother expert (damped Holt).
    period
        Events per season for the seasonal expert and the linear expert's seasonal term:
        ``None`` detects each key's daily period from its event times (with evidence),
        ``0`` turns seasonality off.
    max_period
        Longest period kept (a ring of ``max_period + 1`` values per key and channel).
    ar_lags, ar_forgetting
        The linear expert: lags of the change, and the RLS forgetting factor.
    share
        Fixed-share rate of the mixture (prior probability of a switch per event).
    coverage, anomaly_coverage
        Nominal coverage of the published interval and of the anomaly interval.
    aci_rate, spread_rate
        Step of adaptive conformal inference, and the rate of the residual spread.
    weights
        Give each forecast's mixing weights (the prediction record's optional ``weights``).
    """

    experts: tuple[str, ...] = field(default=EXPERTS, metadata=flag(
        "--no-experts", "publish the bare recurrent model instead of its per-key mixture "
        "with the experts", const=()))
    smoother_alpha: float = 0.1
    smoother_beta: float = 0.05
    smoother_phi: float = 0.9
    period: int | None = field(default=None, metadata=flag(
        help="events per season (default: each key's daily period, detected with "
        "evidence; 0: none)"))
    max_period: int = 288
    ar_lags: int = 4
    ar_forgetting: float = 0.999
    share: float = 0.01
    coverage: float = field(default=0.9, metadata=flag(
        help="nominal coverage of the prediction interval (lo, hi)"))
    anomaly_coverage: float = field(default=0.99, metadata=flag(
        help="an arriving value outside this interval of its forecast is an anomaly"))
    aci_rate: float = 0.01
    spread_rate: float = 0.01
    weights: bool = field(default=False, metadata=flag(
        "--prediction-weights", "give the mixing weights in each prediction record"))

    def __post_init__(self) -> None:
        bad = set(self.experts) - set(EXPERTS)
        _check(not bad, f"unknown experts {sorted(bad)}; choose from {EXPERTS}")
        for name in ("smoother_alpha", "smoother_beta", "smoother_phi"):
            _check(0.0 < getattr(self, name) <= 1.0, f"{name} must be in (0, 1]")
        _check(self.period is None or self.period == 0 or self.period >= 2,
               "period must be None (detect), 0 (none) or >= 2 events")
        _check(self.max_period >= 0, "max_period must be >= 0")
        _check(self.period is None or self.period <= self.max_period,
               "period must not exceed max_period")
        _check(self.ar_lags >= 1, "ar_lags must be >= 1")
        _check(0.9 <= self.ar_forgetting <= 1.0, "ar_forgetting must be in [0.9, 1]")
        _check(0.0 < self.share < 1.0, "share must be in (0, 1)")
        _check(0.0 < self.coverage < 1.0 and 0.0 < self.anomaly_coverage < 1.0,
               "coverages must be in (0, 1)")
        _check(0.0 < self.aci_rate < 1.0 and 0.0 < self.spread_rate <= 1.0,
               "aci_rate must be in (0, 1), spread_rate in (0, 1]")


@dataclass(frozen=True)
class EngineConfig(ConfigBase):
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
    forecast: ForecastConfig = field(default_factory=ForecastConfig)

    def __post_init__(self) -> None:
        _check(self.kind in ("sensor", "price"), "kind must be sensor or price")
        if self.values is not None and self.targets is not None:
            missing = set(self.targets) - set(self.values)
            _check(not missing, f"targets {sorted(missing)} are not among values")
