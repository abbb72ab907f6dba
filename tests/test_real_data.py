"""Models on real public data (../shared/data): BG/NBD implemented from the paper recovers
planted parameters; on CDNOW our repeat-purchase model is at least as good as BG/NBD."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml.btyd import BGNBD, simulate
from ml.repeat import compare_on_cdnow, read_cdnow


def test_bgnbd_recovers_planted_parameters() -> None:
    rng = np.random.default_rng(0)
    T = rng.uniform(27, 39, 4000)
    x, t_x = simulate(4000, 0.243, 4.414, 0.793, 2.426, T, rng)
    m = BGNBD().fit(x, t_x, T)
    assert m.r == pytest.approx(0.243, rel=0.2)
    assert m.alpha == pytest.approx(4.414, rel=0.25)
    # a and b are weakly identified one by one; the mean drop-out probability is not
    assert m.a / (m.a + m.b) == pytest.approx(0.793 / (0.793 + 2.426), rel=0.2)
    # expected purchases grow with the horizon and P(alive) is a probability
    e = m.expected(10, x[:50], t_x[:50], T[:50]), m.expected(40, x[:50], t_x[:50], T[:50])
    assert (e[1] >= e[0]).all()
    assert ((m.p_alive(x, t_x, T) >= 0) & (m.p_alive(x, t_x, T) <= 1)).all()


def test_on_cdnow_our_model_is_at_least_as_good_as_bgnbd(real_data: Path) -> None:
    tx = read_cdnow(str(real_data / "CDNOW_master.txt"))
    r = compare_on_cdnow(tx)
    assert r["customers"] == 23570
    # BG/NBD on the full data lands near the paper's estimates on its 1/10 sample
    assert r["bgnbd_r"] == pytest.approx(0.243, rel=0.15)
    assert r["bgnbd_a"] == pytest.approx(0.793, rel=0.15)
    assert r["auc_ours"] >= r["auc_bgnbd"] - 0.002, r
    assert r["rmse_ours"] <= r["rmse_bgnbd"], r
    assert r["poisson_deviance_ours"] <= r["poisson_deviance_bgnbd"], r
    # MAE rewards forecasting below the mean, so it cannot rank mean forecasts: halving
    # BG/NBD's forecast lowers its MAE (the reason MAE is reported but not asserted)
    assert r["mae_bgnbd_halved"] < r["mae_bgnbd"], r
    actual = r["holdout_repeat_transactions"]
    assert abs(r["total_predicted_ours"] - actual) <= abs(r["total_predicted_bgnbd"] - actual), r
