"""Level 2's equivalence test (lif_sbi/parity/equivalence.py) on synthetic posteriors whose truth is known: the same distribution, a shifted one, and the arithmetic of its resampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from lif_sbi.parity import LEVEL2, equivalence as eq
from lif_sbi.priors import HIGH, LOW, PARAM_NAMES


def test_qda_c2st_is_a_half_for_one_distribution_and_phi_of_half_the_shift_between_two():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 500, 6)), rng.normal(size=(200, 500, 6))
    assert abs(eq.c2st_qda(a, b, seed=1).mean() - 0.5) < 0.01
    b[:, :, 2] += 1.0  # one parameter, one sd: the best classifier's accuracy is Φ(1/2) = 0.69
    assert abs(eq.c2st_qda(a, b, seed=1).mean() - stats.norm.cdf(0.5)) < 0.015
    wide = rng.normal(size=(200, 500, 6)) * np.r_[1, 1, 1, 1, 1, 2.0]  # one parameter twice as wide
    assert eq.c2st_qda(a, wide, seed=1).mean() > 0.6


def test_vectorised_ks_is_scipys():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20, 300)), rng.normal(0.2, 1.3, size=(20, 200))
    np.testing.assert_allclose(eq.ks_rows(x, y), [stats.ks_2samp(x[i], y[i]).statistic for i in range(20)], atol=1e-12)


def _models(rng, k, n_traces, n_draws, shift=None, bias=0.0):
    """k models' draws (T, S, 6) of posteriors N(θ + error, sd²) per trace, sd 5 % of the prior
    width; error: per-trace noise (0.2 sd) plus a per-model bias (`bias` sd); `shift` = (j, s) moves
    parameter j by s sd."""
    theta = LOW + (HIGH - LOW) * np.random.default_rng(99).uniform(size=(n_traces, 6))
    sd = 0.05 * (HIGH - LOW)
    out = []
    for _ in range(k):
        err = rng.normal(0, bias, 6) + rng.normal(0, 0.2, (n_traces, 1, 6))
        d = theta[:, None] + (err + rng.normal(size=(n_traces, n_draws, 6))) * sd
        if shift is not None:
            d[:, :, shift[0]] += shift[1] * sd[shift[0]]
        out.append(d)
    return out, theta


def _table(shift=None, k=5, n_traces=400, bias=0.0, seed=0):
    rng = np.random.default_rng(seed)
    a, theta = _models(rng, k, n_traces, 100, bias=bias)
    b, _ = _models(rng, k, n_traces, 100, shift=shift, bias=bias)
    draws = {f"a{i}": d for i, d in enumerate(a)} | {f"b{i}": d for i, d in enumerate(b)}
    groups = {m: m[0] for m in draws}
    return eq.pair_table(draws, groups, theta, n_c2st=60)


@pytest.fixture(scope="module")
def same():
    return _table()


def test_models_of_one_posterior_are_equivalent(same):
    """Ten models of one posterior (each with its own per-trace errors), five labelled per backend:
    every discrepancy equivalent."""
    found = eq.verdicts(same, LEVEL2["full"].margins(), n_boot=500, alpha=0.05, seed=1)
    assert [v.discrepancy for v in found] == list(eq.DISCREPANCIES) and len(found) == 1 + 5 * 6
    bad = [(v.discrepancy, v.upper95, v.margin) for v in found if v.verdict != "equivalent"]
    assert not bad, bad


def test_a_shift_of_one_parameter_is_found_there_and_is_not_equivalent():
    """The second backend's V_th 0.5 posterior sd higher: 'different' by V_th's mean shift (and
    nothing of the other parameters' mean shifts); at 0.25 sd not equivalent."""
    found = {v.discrepancy: v for v in eq.verdicts(_table(shift=(3, 0.5)), LEVEL2["full"].margins(), n_boot=500, alpha=0.05, seed=1)}
    assert found["mean_shift:V_th"].verdict == "different" and abs(found["mean_shift:V_th"].cross_minus_within - 0.5) < 0.1
    assert all(found[f"mean_shift:{p}"].verdict == "equivalent" for p in PARAM_NAMES if p != "V_th")
    quarter = {v.discrepancy: v for v in eq.verdicts(_table(shift=(3, 0.25)), LEVEL2["full"].margins(), n_boot=500, alpha=0.05, seed=1)}
    assert quarter["mean_shift:V_th"].verdict != "equivalent"


def test_the_same_shift_added_to_the_draws_afterwards_is_found_too(same):
    """`shifted` and `pooled_sd`, as the power check uses them, move the second group as intended."""
    rng = np.random.default_rng(0)
    a, theta = _models(rng, 5, 200, 100)
    b, _ = _models(rng, 5, 200, 100)
    draws = {f"a{i}": d for i, d in enumerate(a)} | {f"b{i}": d for i, d in enumerate(b)}
    sd = eq.pooled_sd(draws, 3)
    moved = {m: (eq.shifted(d, 3, 0.5, sd) if m[0] == "b" else d) for m, d in draws.items()}
    t = eq.pair_table(moved, {m: m[0] for m in moved}, theta, n_c2st=60)
    found = {v.discrepancy: v for v in eq.verdicts(t, LEVEL2["full"].margins(), n_boot=500, alpha=0.05, seed=1)}
    assert found["mean_shift:V_th"].verdict == "different"


def test_permutation_over_five_models_per_backend_has_126_labellings(same):
    """C(10, 5) = 252 labellings, 126 distinct up to swapping the backends: the smallest p is 1/126."""
    splits = eq._labellings(10, ["a", "b"], [5, 5], 5000, 0)
    assert len(splits) == math.comb(10, 5) == 252
    values = eq.pair_values(same, np.arange(same.theta.shape[0]))
    huge = {k: 1e9 for k in values}
    p = eq.permutation_p(same, values, huge)
    assert all(v == 0 for v in p.values())
    observed = eq.contrast(same, values)
    p = eq.permutation_p(same, values, observed)
    assert all(1 / 126 - 1e-12 <= v <= 1 for v in p.values())


def test_contrast_counts_cross_and_within_pairs_and_never_a_model_with_itself(same):
    values = {"x": np.arange(len(same.pairs), dtype=float)}
    groups = np.array(same.groups)
    cross = groups[same.pairs[:, 0]] != groups[same.pairs[:, 1]]
    assert eq.contrast(same, values)["x"] == pytest.approx(values["x"][cross].mean() - values["x"][~cross].mean())
    twice = np.array([0, 0, 1, 5, 6])  # model 0 drawn twice: the pair (0, 0) is left out
    c = eq.contrast(same, values, twice)["x"]
    assert np.isfinite(c)
