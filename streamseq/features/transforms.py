"""Value transforms applied before scaling, and their inverse for published forecasts.

* ``level``: the value itself (sensors, bars' volume after log1p, ...).
* ``logret``: log return against the key's previous value (prices): the model forecasts
  returns, published forecasts are prices ``last * exp(cumulative returns)``.
* ``log1p``: ``log(1 + max(x, 0))`` (trade size, volume).
"""

from __future__ import annotations

import numpy as np

__all__ = ["default_transform", "forward_transform", "invert_forecast", "CODES"]

CODES = {"level": 0, "logret": 1, "log1p": 2}
_PRICE_NAMES = ("price", "open", "high", "low", "close")
_SIZE_NAMES = ("size", "volume")


def default_transform(kind: str, name: str) -> str:
    """Transform used when the configuration does not name one.

    >>> default_transform("price", "close"), default_transform("price", "bid_close")
    ('logret', 'logret')
    >>> default_transform("price", "volume"), default_transform("sensor", "close")
    ('log1p', 'level')
    """
    if kind != "price":
        return "level"
    low = name.lower()
    if low in _SIZE_NAMES or low.endswith(tuple("_" + s for s in _SIZE_NAMES)):
        return "log1p"
    if low in _PRICE_NAMES or low.endswith(tuple("_" + p for p in _PRICE_NAMES)):
        return "logret"
    return "level"


def forward_transform(codes: np.ndarray, x: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """Transform ``x [n, v]`` given each key's previous value ``prev`` (NaN if none).

    A log return without a valid previous value (or with a non-positive price) is 0.
    """
    out = x.copy()
    lr = codes == CODES["logret"]
    if lr.any():
        xp, pp = x[:, lr], prev[:, lr]
        valid = (xp > 0) & (pp > 0) & np.isfinite(pp)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[:, lr] = np.where(valid, np.log(np.where(valid, xp / pp, 1.0)), 0.0)
    l1 = codes == CODES["log1p"]
    if l1.any():
        out[:, l1] = np.log1p(np.maximum(x[:, l1], 0.0))
    return out


def invert_forecast(codes: np.ndarray, u_hat: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Forecasts in original units from transformed forecasts ``u_hat [n, h, t]``.

    ``last [n, t]`` is the key's current value of each target (the base of log returns).
    """
    out = u_hat.copy()
    lr = codes == CODES["logret"]
    if lr.any():
        cum = np.cumsum(u_hat[:, :, lr], axis=1)
        out[:, :, lr] = last[:, None, lr] * np.exp(np.clip(cum, -50, 50))
    l1 = codes == CODES["log1p"]
    if l1.any():
        out[:, :, l1] = np.expm1(u_hat[:, :, l1])
    return out
