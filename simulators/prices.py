"""Seeded synthetic price streams: trade ticks or OHLCV bars for correlated symbols.

The latent log price of each symbol moves on a fine time grid (``tick_step`` seconds for
ticks, ``bar_seconds / bar_substeps`` for bars)::

    r[t] = (mu[regime] - sigma2[t] / 2) dt + sigma[t] sqrt(dt) z[t] + jump[t]
    sigma2[t] = vol^2 * regime_mult^2 * activity(t) * h[t]
    h[t] = (1 - a - b) + h[t-1] * (a z[t-1]^2 + b)            (GARCH(1,1), mean 1)

* ``z`` is standard normal, correlated across symbols by the Cholesky factor of a matrix
  with ``correlation`` off the diagonal;
* ``h`` gives volatility clustering: persistence ``a + b`` halves shocks every
  ``vol_half_life`` seconds, and ``a`` is half the value at which the fourth moment of
  returns would diverge, so clusters are pronounced but finite;
* ``regime`` is a market-wide two-state Markov chain (calm / stressed, mean stays
  ``calm_days`` / ``stressed_days``); stressed multiplies volatility by ``stressed_vol`` and
  drifts at ``stressed_drift`` per year;
* jumps arrive ``jump_rate`` times a day per symbol with log size ``N(0, jump_size)``;
* ``activity(t)`` is an intraday U shape inside the trading session (UTC hours,
  weekdays) and ``off_hours`` outside it, normalised to mean 1 over a week.

Trades arrive as a Cox process: intensity ``tick_rate * activity * sqrt(h) * exp(x)`` with
``x`` an Ornstein-Uhlenbeck log-intensity (std ``burstiness``, time scale
``burst_seconds``): bursty, clustered arrivals, busier when volatile. Each trade has a
distinct millisecond per symbol, a price on the ``tick_size`` grid around the latent
price (bid/ask bounce of half a tick) and a size in round or odd lots. Bars aggregate
the latent path (open, high, low, close) and the trades' volume; periods without trades
produce no bar, as in real bar feeds.

Truth records (:mod:`simulators.truth`): per event the latent ``signal`` (``price`` for
ticks, ``close`` for bars), the annualised volatility ``vol`` and the ``regime``; an
``anomaly`` record per jump and a ``regime`` record (per symbol) per regime switch.

Examples
--------
>>> sim = PriceSimulator(n_symbols=2, seed=1, steps=300)
>>> msgs = list(sim.messages())
>>> len(msgs) > 0, sorted({k for k, _, _ in msgs})
(True, ['SYM0', 'SYM1'])
>>> msgs[0][1][:43]
b'{"kind":"price","symbol":"SYM0","ts":170406'
>>> bars = PriceSimulator(n_symbols=1, seed=1, bars=True, bar_seconds=3600, steps=24)
>>> from streamseq.events import EventDecoder
>>> sorted(EventDecoder(kind="price").decode(next(iter(bars.messages()))[1]).values)
['close', 'high', 'low', 'open', 'volume']
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import math
from collections.abc import Iterator, Sequence
from decimal import Decimal

import numpy as np

from simulators.output import Message
from simulators.truth import TruthWriter
from streamseq.events import parse_time

__all__ = ["PriceSimulator", "activity"]

log = logging.getLogger(__name__)

_YEAR = 365.25 * 86_400.0
_STREAMS = ("params", "shocks", "jumps", "regime", "arrivals", "ticks")
_REGIMES = ("calm", "stressed")


def activity(t_sec: np.ndarray, session: tuple[float, float] = (13.5, 20.0),
             off_hours: float = 0.1, weekends: bool = False) -> np.ndarray:
    """Un-normalised trading activity at epoch seconds ``t_sec``.

    Inside the session (UTC hours ``[open, close)``, Monday to Friday unless ``weekends``)
    activity is a U shape, 3 at the open and close and 1 at mid-session; outside it is
    ``off_hours``.

    Examples
    --------
    >>> t0 = 1704067200  # Monday 2024-01-01 00:00 UTC
    >>> hours = np.array([13.5, 16.75, 1.0, 5 * 24 + 15.0])  # Saturday 15:00 is off hours
    >>> activity(t0 + hours * 3600)
    array([3. , 1. , 0.1, 0.1])
    """
    t = np.asarray(t_sec, dtype=np.float64)
    hour = (t % 86_400.0) / 3600.0
    day = np.floor(t / 86_400.0)
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    open_h, close_h = session
    inside = (hour >= open_h) & (hour < close_h)
    if not weekends:
        inside &= weekday < 5
    x = (hour - open_h) / max(close_h - open_h, 1e-9)
    return np.where(inside, 1.0 + 2.0 * (2.0 * x - 1.0) ** 2, off_hours)


def _linear_recursion(a: np.ndarray | float, c: np.ndarray, x0: np.ndarray,
                      chunk: int = 64) -> np.ndarray:
    """``x[t] = a[t] + c[t] * x[t-1]`` along axis 0 (``x[-1] = x0``), vectorised in chunks.

    Uses ``x[t] = P[t] * (x0 + sum_{s<=t} a[s] / P[s])`` with ``P`` the running product of
    ``c`` (clipped to >= 1e-4), restarted every ``chunk`` steps to stay in range.

    Examples
    --------
    >>> _linear_recursion(1.0, np.full((4, 1), 0.5), np.zeros(1)).ravel().tolist()
    [1.0, 1.5, 1.75, 1.875]
    """
    c = np.maximum(c, 1e-4)
    a_arr = np.broadcast_to(a, c.shape)
    out = np.empty_like(c)
    prev = np.asarray(x0, dtype=np.float64)
    for s in range(0, c.shape[0], chunk):
        cc = c[s:s + chunk]
        p = np.cumprod(cc, axis=0)
        x = p * (prev + np.cumsum(a_arr[s:s + chunk] / p, axis=0))
        out[s:s + chunk] = x
        prev = x[-1]
    return out


def _decimals(step: float) -> int:
    return max(0, -int(Decimal(repr(step)).normalize().as_tuple().exponent))


class PriceSimulator:
    """Correlated GBM-with-jumps prices with GARCH volatility, regimes and bursty trades.

    Parameters
    ----------
    n_symbols
        Number of symbols (``SYM0``, ``SYM1``, ...), or their names.
    symbols
        Symbol names (overrides ``n_symbols``).
    seed
        Seed; same seed and parameters give the same bytes.
    start
        Simulated clock start (ISO 8601 or epoch ms).
    bars
        Emit OHLCV bars of ``bar_seconds`` instead of trade ticks.
    bar_seconds, bar_substeps
        Bar length and the number of latent steps inside one bar.
    tick_step
        Latent step (seconds) in tick mode; trades get distinct milliseconds inside it.
    tick_rate
        Mean trades per second per symbol (over a week, activity included).
    price
        Typical start price; each symbol starts at ``price * lognormal(0, 0.5)``.
    vol, drift
        Annualised volatility and drift (calm regime).
    vol_half_life
        Seconds for a volatility shock to halve (GARCH persistence).
    correlation
        Pairwise correlation of the symbols' shocks.
    jump_rate, jump_size
        Jumps per day per symbol, and the standard deviation of their log size.
    stressed_vol, stressed_drift, calm_days, stressed_days
        The regime chain: volatility multiplier and annual drift when stressed, and the
        mean stay in each regime in days of simulated time.
    session, off_hours, weekends
        Trading session in UTC hours, activity outside it, whether weekends trade.
    burstiness, burst_seconds
        Std and time scale of the log arrival intensity.
    tick_size
        Price grid.
    steps
        Number of latent steps (ticks) or bars to simulate; ``None`` runs forever.
    """

    def __init__(self, n_symbols: int | Sequence[str] = 4, symbols: Sequence[str] | None = None, *,
                 seed: int = 0, start: str | int = "2024-01-01T00:00:00Z", bars: bool = False,
                 bar_seconds: float = 60.0, bar_substeps: int = 12, tick_step: float = 1.0,
                 tick_rate: float = 2.0, price: float = 100.0, vol: float = 0.3,
                 drift: float = 0.05, vol_half_life: float = 1800.0,
                 correlation: float = 0.5, jump_rate: float = 1.0, jump_size: float = 0.02,
                 stressed_vol: float = 2.5, stressed_drift: float = -0.5,
                 calm_days: float = 5.0, stressed_days: float = 1.0,
                 session: tuple[float, float] = (13.5, 20.0), off_hours: float = 0.1,
                 weekends: bool = False, burstiness: float = 1.0,
                 burst_seconds: float = 60.0, tick_size: float = 0.01,
                 steps: int | None = None, block_events: int = 4096) -> None:
        if not isinstance(n_symbols, int):
            n_symbols, symbols = len(n_symbols), n_symbols
        self.symbols = list(symbols) if symbols else [f"SYM{i}" for i in range(n_symbols)]
        m = len(self.symbols)
        if m < 1 or len(set(self.symbols)) != m:
            raise ValueError(f"symbols must be distinct and non-empty, got {self.symbols}")
        if not -1.0 / max(m - 1, 1) < correlation < 1.0 and m > 1:
            raise ValueError(f"correlation {correlation} is not valid for {m} symbols")
        if tick_rate <= 0 or vol < 0 or tick_size <= 0:
            raise ValueError("tick_rate and tick_size must be > 0, vol >= 0")
        self.seed = seed
        self.start_ms = parse_time(start)
        self.bars = bars
        self.bar_ms = int(round(bar_seconds * 1000))
        self.substeps = bar_substeps if bars else 1
        self.dt = bar_seconds / bar_substeps if bars else tick_step
        self.dt_ms = self.bar_ms // self.substeps if bars else int(round(tick_step * 1000))
        if self.dt_ms < 1 or (bars and self.bar_ms % self.substeps):
            raise ValueError("the latent step must be a whole number of milliseconds")
        self.tick_rate = tick_rate
        self.steps = steps
        self.session, self.off_hours, self.weekends = session, off_hours, weekends
        grid = self.start_ms / 1000.0 + np.arange(0.0, 7 * 86_400.0, 60.0)
        self._act_norm = float(activity(grid, session, off_hours, weekends).mean())
        self.tick_size = tick_size
        self.price_decimals = _decimals(tick_size)

        p = 0.5 ** (self.dt / vol_half_life)
        self.garch_a = 0.5 * math.sqrt((1.0 - p * p) / 2.0)
        self.garch_b = p - self.garch_a
        self.vol = vol
        self.sd_step = vol * math.sqrt(self.dt / _YEAR)
        self.mu_step = np.array([drift, stressed_drift]) * self.dt / _YEAR
        self.vol_mult = np.array([1.0, stressed_vol])
        self.stay_steps = np.array([calm_days, stressed_days]) * 86_400.0 / self.dt
        self.jump_p = min(1.0, jump_rate * self.dt / 86_400.0)
        self.jump_size = jump_size
        corr = np.full((m, m), correlation) + np.eye(m) * (1.0 - correlation)
        self.chol = np.linalg.cholesky(corr)
        self.ou_phi = math.exp(-self.dt / burst_seconds)
        self.burstiness = burstiness

        rng = self._rng("params")
        self.logp0 = np.log(price) + 0.5 * rng.standard_normal(m)
        if bars:
            self.block_steps = int(np.clip(block_events // m, 1, 10_000)) * self.substeps
        else:
            per_step = m * tick_rate * self.dt
            self.block_steps = int(np.clip(block_events / per_step, 16, 65_536))

    def _rng(self, stream: str) -> np.random.Generator:
        tag = 100 + _STREAMS.index(stream)
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, tag])))

    # -- public ---------------------------------------------------------------------------
    def messages(self, truth: TruthWriter | None = None) -> Iterator[Message]:
        """Yield ``(symbol, payload, ts_ms)`` in event-time order; truth goes to ``truth``."""
        prefixes = [f'{{"kind":"price","symbol":{json.dumps(s)},"ts":' for s in self.symbols]
        pending: list[tuple[int, int, dict[str, object]]] = []
        tiebreak = itertools.count()
        for block in self._blocks():
            if truth is not None:
                for rec in block["records"]:
                    ts_rec = int(rec["ts"])  # type: ignore[call-overload]
                    heapq.heappush(pending, (ts_rec, next(tiebreak), rec))
            sym = block["sym"]
            ts = block["ts"]
            if self.bars:
                o, h, lo, c, vol = block["ohlcv"]
                rows = zip(sym, ts, o, h, lo, c, vol, strict=True)
                payloads = (f'{prefixes[s]}{t},"open":{a!r},"high":{b!r},"low":{d!r},'
                            f'"close":{e!r},"volume":{v}}}' for s, t, a, b, d, e, v in rows)
            else:
                price, size = block["price"], block["size"]
                payloads = (f'{prefixes[s]}{t},"price":{p!r},"size":{z}}}'
                            for s, t, p, z in zip(sym, ts, price, size, strict=True))
            if truth is None:
                for s, t, payload in zip(sym, ts, payloads, strict=True):
                    yield self.symbols[s], payload.encode(), t
                continue
            field = "close" if self.bars else "price"
            for s, t, payload, sig, v, r in zip(sym, ts, payloads, block["signal"],
                                                block["vol"], block["regime"], strict=True):
                while pending and pending[0][0] <= t:
                    truth.write(heapq.heappop(pending)[2])
                truth.write({"type": "event", "key": self.symbols[s], "ts": t,
                             "signal": {field: sig}, "vol": v, "regime": _REGIMES[r]})
                yield self.symbols[s], payload.encode(), t
        if truth is not None:
            while pending:
                truth.write(heapq.heappop(pending)[2])

    # -- generation -----------------------------------------------------------------------
    def _blocks(self) -> Iterator[dict[str, object]]:
        m = len(self.symbols)
        rng_z, rng_j, rng_r = self._rng("shocks"), self._rng("jumps"), self._rng("regime")
        rng_n, rng_t = self._rng("arrivals"), self._rng("ticks")
        logp = self.logp0.copy()
        h_prev = np.ones(m)
        z_prev = np.zeros(m)
        x_prev = np.zeros(m)
        regime = 0
        next_switch = float(rng_r.exponential(self.stay_steps[0]))
        ou_sd = self.burstiness * math.sqrt(1.0 - self.ou_phi ** 2)
        j0 = 0
        limit = None if self.steps is None else self.steps * self.substeps
        while limit is None or j0 < limit:
            ns = self.block_steps if limit is None else min(self.block_steps, limit - j0)
            j = np.arange(j0, j0 + ns, dtype=np.int64)
            step_ms = self.start_ms + j * self.dt_ms  # start of each latent step
            act = activity(step_ms / 1000.0 + self.dt / 2, self.session, self.off_hours,
                           self.weekends) / self._act_norm
            records: list[dict[str, object]] = []

            # regime chain, event driven (switches are rare)
            reg = np.empty(ns, dtype=np.int64)
            pos = 0
            while pos < ns:
                upto = min(ns, max(pos, int(math.ceil(next_switch)) - j0))
                reg[pos:upto] = regime
                pos = upto
                if pos < ns:
                    regime = 1 - regime
                    next_switch += max(1.0, float(rng_r.exponential(self.stay_steps[regime])))
                    t_sw = int(step_ms[pos])
                    records.extend({"type": "regime", "regime": _REGIMES[regime], "key": s,
                                    "ts": t_sw} for s in self.symbols)

            z = rng_z.standard_normal((ns, m)) @ self.chol.T
            z_lag = np.vstack([z_prev[None, :], z[:-1]])
            h = _linear_recursion(1.0 - self.garch_a - self.garch_b,
                                  self.garch_a * z_lag ** 2 + self.garch_b, h_prev)
            h_prev, z_prev = h[-1].copy(), z[-1].copy()
            var_scale = (self.vol_mult[reg] ** 2 * act)[:, None] * h
            sd = self.sd_step * np.sqrt(var_scale)
            r = self.mu_step[reg][:, None] - 0.5 * sd ** 2 + sd * z
            jumps = rng_j.random((ns, m)) < self.jump_p
            if jumps.any():
                where = np.argwhere(jumps)
                sizes = rng_j.normal(0.0, self.jump_size, len(where))
                r[jumps] += sizes
                for (b, s), size in zip(where.tolist(), sizes.tolist(), strict=True):
                    records.append({"type": "anomaly", "anomaly": "jump",
                                    "key": self.symbols[s],
                                    "ts": int(step_ms[b]) + self.dt_ms - 1,
                                    "log_size": round(size, 6)})
            path = logp + np.cumsum(r, axis=0)  # log price at the end of each step
            start_path = np.vstack([logp[None, :], path[:-1]])
            logp = path[-1].copy()

            eps = rng_n.standard_normal((ns, m)) * ou_sd
            x = _linear_recursion(eps, np.full((ns, m), self.ou_phi), x_prev)
            x_prev = x[-1].copy()
            lam = (self.tick_rate * act[:, None] * np.sqrt(h)
                   * np.exp(x - 0.5 * self.burstiness ** 2))
            counts = rng_n.poisson(lam * self.dt)
            ann_vol = np.round(self.vol * np.sqrt(var_scale), 6)

            if self.bars:
                yield self._bars(j0, ns, step_ms, start_path, path, counts, ann_vol, reg,
                                 rng_t, records)
            else:
                yield self._ticks(step_ms, start_path, path, counts, ann_vol, reg, rng_t,
                                  records)
            j0 += ns

    def _ticks(self, step_ms: np.ndarray, start_path: np.ndarray, path: np.ndarray,
               counts: np.ndarray, ann_vol: np.ndarray, reg: np.ndarray,
               rng: np.random.Generator, records: list[dict[str, object]]) -> dict[str, object]:
        counts = np.minimum(counts, self.dt_ms)  # one trade per millisecond per symbol at most
        flat = counts.ravel()
        total = int(flat.sum())
        cell = np.repeat(np.arange(flat.size), flat)  # (step, symbol) cell of each trade
        step, sym = np.divmod(cell, counts.shape[1])
        u = rng.random(total)
        order = np.lexsort((u, cell))  # by cell, then by position inside the step
        u = u[order]
        starts = np.repeat(np.cumsum(flat) - flat, flat)
        rank = np.arange(total) - starts
        n_in = flat[cell]
        # distinct, increasing milliseconds inside the step
        offset = np.floor(u * (self.dt_ms - n_in + 1)).astype(np.int64) + rank
        ts = step_ms[step] + offset
        frac = (offset + 1) / self.dt_ms
        logp = start_path[step, sym] + frac * (path[step, sym] - start_path[step, sym])
        mid = np.exp(logp)
        bounce = np.where(rng.random(total) < 0.5, -0.5, 0.5) * self.tick_size
        price = np.round(np.round((mid + bounce) / self.tick_size) * self.tick_size,
                         self.price_decimals)
        price = np.maximum(price, self.tick_size)
        lots = rng.random(total)
        size = np.where(lots < 0.2, rng.integers(1, 100, total),
                        100 * rng.geometric(0.45, total))
        final = np.lexsort((sym, ts))  # global event-time order, symbols in a fixed order
        return {"sym": sym[final].tolist(), "ts": ts[final].tolist(),
                "price": price[final].tolist(), "size": size[final].tolist(),
                "signal": np.round(mid[final], 6).tolist(),
                "vol": ann_vol[step, sym][final].tolist(), "regime": reg[step][final].tolist(),
                "records": records}

    def _bars(self, j0: int, ns: int, step_ms: np.ndarray, start_path: np.ndarray,
              path: np.ndarray, counts: np.ndarray, ann_vol: np.ndarray, reg: np.ndarray,
              rng: np.random.Generator, records: list[dict[str, object]]) -> dict[str, object]:
        k, m = self.substeps, len(self.symbols)
        nbar = ns // k
        px = np.exp(path).reshape(nbar, k, m)
        open_ = np.exp(start_path[::k])
        close = px[:, -1]
        high = np.maximum(px.max(axis=1), open_)
        low = np.minimum(px.min(axis=1), open_)
        trades = counts.reshape(nbar, k, m).sum(axis=1)
        volume = np.where(trades > 0, 100 * rng.poisson(2.5 * trades) + rng.integers(1, 100,
                                                                                     (nbar, m)),
                          0)

        def tick(a: np.ndarray) -> np.ndarray:
            return np.maximum(np.round(np.round(a / self.tick_size) * self.tick_size,
                                       self.price_decimals), self.tick_size)

        bar, sym = np.nonzero(trades > 0)  # row-major: by bar, then symbol: time order
        ts = step_ms[::k][bar]
        return {"sym": sym.tolist(), "ts": ts.tolist(),
                "ohlcv": (tick(open_)[bar, sym].tolist(), tick(high)[bar, sym].tolist(),
                          tick(low)[bar, sym].tolist(), tick(close)[bar, sym].tolist(),
                          volume[bar, sym].tolist()),
                "signal": np.round(close[bar, sym], 6).tolist(),
                "vol": ann_vol[k - 1::k][bar, sym].tolist(),
                "regime": reg[k - 1::k][bar].tolist(), "records": records}
