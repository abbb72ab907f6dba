"""BG/NBD (Fader, Hardie & Lee 2005, "Counting Your Customers the Easy Way"): the field's
standard baseline for repeat purchasing, implemented from the paper's equations.

Inputs per customer, in one time unit (weeks here): ``x`` repeat transactions in the
calibration period, ``t_x`` time of the last one since the first purchase, ``T`` time from the
first purchase to the end of the calibration period.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import betaln, gammaln, hyp2f1


def log_likelihood(params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Per-customer log-likelihood (paper eq. 6)."""
    r, alpha, a, b = params
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = betaln(a, b + x) - betaln(a, b)
    a3 = -(r + x) * np.log(alpha + T)
    with np.errstate(divide="ignore", invalid="ignore"):
        a4 = np.where(
            x > 0,
            np.log(a) - np.log(np.maximum(b + x - 1, 1e-12)) - (r + x) * np.log(alpha + t_x),
            -np.inf,
        )
    return a1 + a2 + np.logaddexp(a3, a4)


def _params(logp: np.ndarray) -> np.ndarray:
    """The parameters from their logs, at most 1e6: where customers are not seen to drop out,
    the likelihood keeps growing with ``b`` and ``expected`` loses every digit to cancellation
    (b of 1e12 gave negative orders); at 1e6 drop-out is as good as nil and ~10 digits stay."""
    return np.exp(np.minimum(logp, np.log(1e6)))


@dataclass
class BGNBD:
    r: float = 1.0
    alpha: float = 1.0
    a: float = 1.0
    b: float = 1.0

    def log_likelihood(
        self, params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray
    ) -> np.ndarray:
        return log_likelihood(params, x, t_x, T)

    def fit(self, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> Self:
        x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))

        def nll(logp: np.ndarray) -> float:
            return -float(self.log_likelihood(_params(logp), x, t_x, T).sum())

        best = None
        for start in ([0.0, 0.0, 0.0, 0.0], [np.log(0.5), np.log(5.0), 0.0, np.log(2.0)]):
            res = minimize(nll, np.array(start), method="Nelder-Mead",
                           options={"maxiter": 5000, "xatol": 1e-6, "fatol": 1e-6})  # fmt: skip
            if best is None or res.fun < best.fun:
                best = res
        assert best is not None
        self.r, self.alpha, self.a, self.b = (float(v) for v in _params(best.x))
        return self

    def expected(self, t: float, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
        """Expected transactions in (T, T + t] for each customer (paper eq. 10)."""
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
        hyp = hyp2f1(r + x, b + x, a + b + x - 1, t / (alpha + T + t))
        top = (a + b + x - 1) / (a - 1) * (1 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp)
        bottom = 1 + (x > 0) * a / np.maximum(b + x - 1, 1e-12) * ((alpha + T) / (alpha + t_x)) ** (
            r + x
        )
        return top / bottom

    def p_alive(self, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
        return 1 / (
            1
            + (x > 0) * a / np.maximum(b + x - 1, 1e-12) * ((alpha + T) / (alpha + t_x)) ** (r + x)
        )


def simulate(n: int, r: float, alpha: float, a: float, b: float, T: np.ndarray,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(x, t_x) of customers following the BG/NBD story with the given parameters."""
    lam = rng.gamma(r, 1 / alpha, size=n)
    p = rng.beta(a, b, size=n)
    x = np.zeros(n)
    t_x = np.zeros(n)
    for i in range(n):
        t = 0.0
        while True:
            t += rng.exponential(1 / lam[i])
            if t > T[i]:
                break
            x[i] += 1
            t_x[i] = t
            if rng.random() < p[i]:
                break
    return x, t_x


def simulate_log(n: int, days: int, drop: float, rng: np.random.Generator,
                 start: str = "2026-01-01") -> pd.DataFrame:  # fmt: skip
    """A transaction log (customer_id, date, value) of ``n`` buyers over ``days``: first orders
    uniform over the first half, gamma-distributed daily rates (shape 0.6, mean 0.03), each
    order's value gamma-distributed (mean 60), and after each order a drop-out chance ``drop``
    (0: nobody drops out, the NBD's story)."""
    rows = []
    for i in range(n):
        day, rate = rng.uniform(0, days / 2), rng.gamma(0.6, 1 / 20)
        while day < days:
            rows.append((f"c{i}", pd.Timestamp(start) + pd.Timedelta(days=int(day)),
                         rng.gamma(2, 30)))  # fmt: skip
            day += rng.exponential(1 / rate) if drop == 0 or rng.random() > drop else days
    return pd.DataFrame(rows, columns=["customer_id", "date", "value"])


def gamma_gamma_log_likelihood(params: np.ndarray, x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Per-customer log-likelihood of the mean spend ``m`` of ``x`` > 0 transactions (Fader,
    Hardie & Lee 2005, "RFM and CLV", the Gamma-Gamma spend model)."""
    p, q, v = params
    head = gammaln(p * x + q) - gammaln(p * x) - gammaln(q) + q * np.log(v)
    return head + (p * x - 1) * np.log(m) + p * x * np.log(x) - (p * x + q) * np.log(x * m + v)


@dataclass
class GammaGamma:
    """Spend per transaction: each customer's mean spend is gamma-distributed around a
    gamma-distributed personal mean, independent of how often they buy."""

    p: float = 1.0
    q: float = 2.0
    v: float = 1.0

    def fit(self, x: np.ndarray, m: np.ndarray) -> GammaGamma:
        """``x`` transactions with mean spend ``m`` per customer; customers with x = 0 or no
        positive spend carry no information and are left out."""
        x, m = np.asarray(x, dtype=float), np.asarray(m, dtype=float)
        keep = (x > 0) & (m > 0)
        x, m = x[keep], m[keep]

        def nll(logp: np.ndarray) -> float:
            return -float(gamma_gamma_log_likelihood(np.exp(logp), x, m).sum())

        start = np.log([1.0, 2.0, float(np.mean(m))])
        res = minimize(nll, start, method="Nelder-Mead",
                       options={"maxiter": 5000, "xatol": 1e-7, "fatol": 1e-7})  # fmt: skip
        self.p, self.q, self.v = (float(v) for v in np.exp(res.x))
        return self

    def expected_spend(self, x: np.ndarray, m: np.ndarray) -> np.ndarray:
        """Expected spend per future transaction: the population mean shrunk towards the
        customer's own mean as their transactions grow (x = 0: the population mean)."""
        p, q, v = self.p, self.q, self.v
        x = np.asarray(x, dtype=float)
        m = np.where(x > 0, np.asarray(m, dtype=float), 0.0)
        return (p * v + p * x * m) / (p * x + q - 1)


def mbg_log_likelihood(
    params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray
) -> np.ndarray:
    """Per-customer log-likelihood of MBG/NBD (Batislam, Denizel & Filiztekin 2007): BG/NBD
    where a customer may also drop out right after the first purchase."""
    r, alpha, a, b = params
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = betaln(a, b + x + 1) - betaln(a, b)
    a3 = -(r + x) * np.log(alpha + T)
    a4 = np.log(a) - np.log(b + x) + (r + x) * (np.log(alpha + T) - np.log(alpha + t_x))
    return a1 + a2 + a3 + np.logaddexp(0.0, a4)


@dataclass
class MBGNBD(BGNBD):
    """MBG/NBD: a customer with no repeat purchase can be gone too (BG/NBD says alive)."""

    def log_likelihood(
        self, params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray
    ) -> np.ndarray:
        return mbg_log_likelihood(params, x, t_x, T)

    def _dead_odds(self, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        return a / (b + x) * ((alpha + T) / (alpha + t_x)) ** (r + x)

    def expected(self, t: float, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
        hyp = hyp2f1(r + x, b + x + 1, a + b + x, t / (alpha + T + t))
        top = (a + b + x) / (a - 1) * (1 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp)
        return top / (1 + self._dead_odds(x, t_x, T))

    def p_alive(self, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
        x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
        return 1 / (1 + self._dead_odds(x, t_x, T))
