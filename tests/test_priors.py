"""The prior: support, the ordering repair of DESIGN.md §2, reproducibility, distribution; the "ordered" prior and its density."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from lif_sbi.priors import (
    HIGH,
    INDEX,
    LOW,
    N_PARAMS,
    PARAM_NAMES,
    PARAMETERS,
    _repair,
    repair,
    check_theta,
    in_support,
    log_prior,
    onto_atoms,
    sample_prior,
    sample_prior_torch,
)

C, G, E, TH, R, TR = (INDEX[k] for k in ("C_m", "g_L", "E_L", "V_th", "V_res", "t_ref"))
MV = 1e-3


def literal_repair(row):
    """DESIGN.md §2, written out on Python floats for one draw (C_m, g_L, E_L, V_th, V_res, t_ref)."""
    row = [float(x) for x in row]
    # where V_res >= E_L, set V_res = E_L - 2 mV, then clip V_res into its own range
    if row[R] >= row[E]:
        row[R] = row[E] - 2e-3
    row[R] = min(max(row[R], -80e-3), -70e-3)
    # then where E_L >= V_th, set E_L = V_th - 5 mV, then clip E_L into its own range
    if row[E] >= row[TH]:
        row[E] = row[TH] - 5e-3
    row[E] = min(max(row[E], -80e-3), -65e-3)
    return row


def test_declared_parameters_match_design():
    assert PARAM_NAMES == ("C_m", "g_L", "E_L", "V_th", "V_res", "t_ref")
    np.testing.assert_allclose(LOW, [100e-12, 5e-9, -80e-3, -60e-3, -80e-3, 1e-3], rtol=1e-15)
    np.testing.assert_allclose(HIGH, [200e-12, 15e-9, -65e-3, -50e-3, -70e-3, 5e-3], rtol=1e-15)
    assert [p.display_unit for p in PARAMETERS] == ["pF", "nS", "mV", "mV", "mV", "ms"]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_support_and_ordering(backend):
    n = 200_000
    if backend == "numpy":
        theta = sample_prior(n, np.random.default_rng(1))
    else:
        theta = sample_prior_torch(n, torch.Generator().manual_seed(1)).numpy()
    assert theta.shape == (n, N_PARAMS) and theta.dtype == np.float64
    assert np.all(theta >= LOW) and np.all(theta <= HIGH)
    assert np.all(theta[:, R] < theta[:, E]) and np.all(theta[:, E] < theta[:, TH])
    check_theta(theta)  # the simulator's own validation accepts every draw


HAND_MADE = [
    # (E_L, V_th, V_res) in mV -> what the rule does
    (-75.0, -55.0, -78.0),  # ordered: untouched
    (-75.0, -55.0, -74.0),  # V_res >= E_L: V_res = E_L - 2 = -77
    (-72.0, -55.0, -72.0),  # V_res == E_L (>=): V_res = -74
    (-79.0, -55.0, -78.0),  # V_res = -81, clipped to -80
    (-80.0, -55.0, -71.0),  # V_res = -82, clipped to -80 (== E_L: the rule's own corner)
    (-66.0, -55.0, -71.0),  # ordered: untouched
    # E_L >= V_th never happens inside the box; the rule is still defined there:
    (-58.0, -60.0, -75.0),  # E_L = V_th - 5 = -65, inside E_L's range
    (-52.0, -55.0, -75.0),  # E_L = -60, clipped to -65
    (-50.0, -50.0, -75.0),  # E_L == V_th (>=): E_L = -55, clipped to -65
    (-56.0, -60.0, -54.0),  # both: V_res = -58 -> clipped -70, then E_L = -65
    (-90.0, -55.0, -95.0),  # E_L below its range: clipped to -80 (clip applies to every row)
]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("e_l,v_th,v_res", HAND_MADE)
def test_repair_rule_on_hand_made_draws(backend, e_l, v_th, v_res):
    row = np.array([150e-12, 10e-9, e_l * MV, v_th * MV, v_res * MV, 2.5e-3])
    expected = literal_repair(row)
    if backend == "numpy":
        got = _repair(row[None].copy(), np.where, np.clip)[0]
    else:
        clamp = lambda x, lo, hi: torch.clamp(x, float(lo), float(hi))  # noqa: E731 (as sample_prior_torch)
        got = _repair(torch.tensor(row[None]), torch.where, clamp)[0].numpy()
    assert got.tolist() == expected  # exact: same float operations
    assert got[C] == row[C] and got[G] == row[G] and got[TH] == row[TH] and got[TR] == row[TR]


def test_public_repair_is_the_rule_on_a_copy_of_any_leading_shape():
    """priors.repair applies the same rule (exactly) to (..., 6) arrays, on a copy."""
    rows = np.array([[150e-12, 10e-9, e * MV, t * MV, r * MV, 2.5e-3] for e, t, r in HAND_MADE])
    before = rows.copy()
    got = repair(rows.reshape(1, len(HAND_MADE), N_PARAMS))
    assert got.shape == (1, len(HAND_MADE), N_PARAMS)
    assert got[0].tolist() == [literal_repair(row) for row in rows]
    np.testing.assert_array_equal(rows, before)  # the input is left alone


def test_sample_prior_is_uniform_draws_then_the_literal_repair():
    """Public API: sample_prior(seed) equals uniform draws of the same generator + DESIGN.md's rule."""
    n = 3000
    raw = np.random.default_rng(7).uniform(LOW, HIGH, size=(n, N_PARAMS))
    theta = sample_prior(n, np.random.default_rng(7))
    expected = np.array([literal_repair(r) for r in raw])
    np.testing.assert_array_equal(theta, expected)
    repaired = theta[:, R] != raw[:, R]
    # P(V_res >= E_L) for E_L ~ U(-80, -65), V_res ~ U(-80, -70) mV is 1/3
    assert stats.binomtest(int(repaired.sum()), n, 1 / 3).pvalue > 1e-3
    assert np.all(theta[:, E] == raw[:, E])  # E_L >= V_th is impossible inside the box


def test_reproducible_draws():
    a = sample_prior(1000, 123)
    np.testing.assert_array_equal(a, sample_prior(1000, 123))
    np.testing.assert_array_equal(a, sample_prior(1000, np.random.default_rng(123)))
    assert not np.array_equal(a, sample_prior(1000, 124))
    t = sample_prior_torch(1000, torch.Generator().manual_seed(123))
    assert torch.equal(t, sample_prior_torch(1000, torch.Generator().manual_seed(123)))
    assert not torch.equal(t, sample_prior_torch(1000, torch.Generator().manual_seed(124)))
    t32 = sample_prior_torch(1000, torch.Generator().manual_seed(123), dtype=torch.float32)
    assert t32.dtype == torch.float32 and torch.equal(t32, t.to(torch.float32))


@pytest.mark.parametrize("name", ["C_m", "g_L", "V_th", "t_ref"])
def test_untouched_marginals_are_uniform(name):
    """KS test against U(low, high) for the parameters the repair never changes."""
    i = INDEX[name]
    for theta in (sample_prior(20_000, 5), sample_prior_torch(20_000, torch.Generator().manual_seed(5)).numpy()):
        p = stats.kstest(theta[:, i], stats.uniform(loc=LOW[i], scale=HIGH[i] - LOW[i]).cdf).pvalue
        assert p > 1e-3, f"{name}: KS p = {p:.2e}"


@pytest.mark.parametrize("name", PARAM_NAMES)
def test_numpy_and_torch_priors_agree(name):
    i = INDEX[name]
    a = sample_prior(20_000, 9)[:, i]
    b = sample_prior_torch(20_000, torch.Generator().manual_seed(9)).numpy()[:, i]
    assert stats.ks_2samp(a, b).pvalue > 1e-3


@pytest.mark.parametrize("n", [0, -3, 2.5, True, "10", None])
def test_bad_n(n):
    with pytest.raises(ValueError, match="n must be a positive integer"):
        sample_prior(n, 0)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        sample_prior_torch(n)


def test_check_theta_messages():
    good = sample_prior(4, 0)
    check_theta(good)
    with pytest.raises(ValueError, match=r"shape \(N, 6\)"):
        check_theta(good[:, :5])
    with pytest.raises(ValueError, match="at least one"):
        check_theta(good[:0])
    bad = good.copy()
    bad[2, TR] = np.nan
    with pytest.raises(ValueError, match=r"theta\[2\] t_ref is nan; expected a finite value"):
        check_theta(bad)
    bad = good.copy()
    bad[1, G] = 20e-9
    with pytest.raises(ValueError, match=r"theta\[1\] g_L = 20 nS is outside the prior's support \[5, 15\] nS"):
        check_theta(bad)


def test_atoms_and_support():
    """The repair's point mass sits on V_res = -80 mV; onto_atoms moves draws beyond it onto it."""
    from lif_sbi.priors import ATOMS, HIGH, INDEX, LOW, in_support, onto_atoms, sample_prior

    theta = sample_prior(200_000, 11)
    assert in_support(theta).all()
    for i, bound in ATOMS:
        assert 0.08 < (theta[:, i] == bound).mean() < 0.16  # a real atom (about 12 %), not a coincidence
    x = theta[:4].copy()
    x[0, INDEX["V_res"]] = LOW[INDEX["V_res"]] - 1e-4
    x[1, INDEX["E_L"]] = HIGH[INDEX["E_L"]] + 1e-4
    x[2, INDEX["C_m"]] = HIGH[INDEX["C_m"]] * 1.01  # no atom there: stays out
    y = onto_atoms(x)
    assert y[0, INDEX["V_res"]] == LOW[INDEX["V_res"]] and y[1, INDEX["E_L"]] > HIGH[INDEX["E_L"]]
    assert list(in_support(y)) == [True, False, False, True]
    assert (theta[:, INDEX["E_L"]] < theta[:, INDEX["V_th"]] - 5e-3).all()  # the E_L repair never fires
    assert x[0, INDEX["V_res"]] < LOW[INDEX["V_res"]]  # a copy, input untouched


# ---------------------------------------------------------------------------------------------
# the "ordered" prior: the box restricted to V_res <= E_L - 2 mV, with a density

BOX_VOLUME = float(np.prod(HIGH - LOW))


def _ordered_draws(backend: str, n: int, seed: int) -> np.ndarray:
    if backend == "numpy":
        return sample_prior(n, np.random.default_rng(seed), kind="ordered")
    return sample_prior_torch(n, torch.Generator().manual_seed(seed), kind="ordered").numpy()


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_ordered_draws_are_in_the_box_and_ordered(backend):
    """Every "ordered" draw lies in the box with V_res <= E_L - 2 mV (so V_res < E_L < V_th), exactly n of them."""
    theta = _ordered_draws(backend, 50_000, 3)
    assert theta.shape == (50_000, N_PARAMS) and theta.dtype == np.float64
    assert np.all(theta >= LOW) and np.all(theta <= HIGH)
    assert np.all(theta[:, R] <= theta[:, E] - 2e-3)
    assert np.all(theta[:, E] < theta[:, TH])
    check_theta(theta)
    assert in_support(theta, kind="ordered").all() and in_support(theta).all()
    for n in (1, 2, 17):  # the rejection loop returns exactly n
        assert _ordered_draws(backend, n, 4).shape == (n, N_PARAMS)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("name", ["C_m", "g_L", "V_th", "t_ref"])
def test_ordered_prior_leaves_the_other_marginals_uniform(backend, name):
    """KS test: C_m, g_L, V_th and t_ref stay U(low, high) under the "ordered" restriction (fixed seed)."""
    i = INDEX[name]
    theta = _ordered_draws(backend, 20_000, 5)
    p = stats.kstest(theta[:, i], stats.uniform(loc=LOW[i], scale=HIGH[i] - LOW[i]).cdf).pvalue
    assert p > 1e-3, f"{name}: KS p = {p:.2e}"


@pytest.mark.parametrize("name", ["E_L", "V_res"])
def test_ordered_prior_is_the_box_conditioned_on_the_order(name):
    """E_L and V_res under "ordered" follow the uniform box's draws kept where V_res <= E_L - 2 mV (KS, both backends)."""
    i = INDEX[name]
    box = np.random.default_rng(6).uniform(LOW, HIGH, size=(60_000, N_PARAMS))
    kept = box[box[:, R] <= box[:, E] - 2e-3][:, i]
    for backend in ("numpy", "torch"):
        p = stats.ks_2samp(_ordered_draws(backend, 20_000, 7)[:, i], kept).pvalue
        assert p > 1e-3, f"{backend} {name}: KS p = {p:.2e}"
    # V_res | E_L is uniform on [-80 mV, min(-70, E_L - 2) mV]: E_L's density rises with E_L up to -68 mV
    e = _ordered_draws("numpy", 20_000, 8)[:, E]
    assert np.mean(e < -75e-3) < np.mean(e > -70e-3)


def test_ordered_draws_are_reproducible_and_the_default_kind_is_the_reference():
    """Same seed, same "ordered" draws (NumPy and torch); kind defaults to "reference", unchanged."""
    a = sample_prior(500, 12, kind="ordered")
    np.testing.assert_array_equal(a, sample_prior(500, np.random.default_rng(12), kind="ordered"))
    assert not np.array_equal(a, sample_prior(500, 13, kind="ordered"))
    t = sample_prior_torch(500, torch.Generator().manual_seed(12), kind="ordered")
    assert torch.equal(t, sample_prior_torch(500, torch.Generator().manual_seed(12), kind="ordered"))
    t32 = sample_prior_torch(500, torch.Generator().manual_seed(12), kind="ordered", dtype=torch.float32)
    assert t32.dtype == torch.float32 and torch.equal(t32, t.to(torch.float32))
    np.testing.assert_array_equal(sample_prior(500, 12), sample_prior(500, 12, kind="reference"))
    assert torch.equal(sample_prior_torch(500, torch.Generator().manual_seed(12)),
                       sample_prior_torch(500, torch.Generator().manual_seed(12), kind="reference"))


def test_log_prior_is_constant_inside_and_minus_inf_outside():
    """log_prior(kind="ordered"): one finite value on every draw and the boundary V_res = E_L - 2 mV; -inf off the support."""
    theta = sample_prior(5000, 14, kind="ordered")
    lp = log_prior(theta)
    assert lp.shape == (5000,) and np.all(np.isfinite(lp)) and np.all(lp == lp[0])
    np.testing.assert_array_equal(log_prior(theta, kind="ordered"), lp)
    inside = lp[0]
    x = theta[:8].copy()
    x[0, E] = -75e-3
    x[0, R] = x[0, E] - 2e-3  # on the boundary: still inside (<=)
    x[1, E], x[1, R] = -75e-3, -76.5e-3  # in the box, V_res < E_L, but closer than 2 mV: outside
    x[2, C] = HIGH[C] * 1.001  # out of the box
    x[3, TR] = LOW[TR] * 0.999
    x[4, TH] = np.nan
    x[5, R], x[5, E] = -79e-3, -80e-3  # V_res > E_L
    got = log_prior(x)
    np.testing.assert_array_equal(got, [inside, -np.inf, -np.inf, -np.inf, -np.inf, -np.inf, inside, inside])
    # any leading shape
    assert log_prior(theta[:12].reshape(3, 4, N_PARAMS)).shape == (3, 4)
    assert np.ndim(log_prior(theta[0])) == 0 and log_prior(theta[0]) == inside


def test_log_prior_normaliser_matches_the_support_share_of_the_box():
    """Monte Carlo: the share of uniform box draws with V_res <= E_L - 2 mV equals exp(-log_prior) / box volume (8/15)."""
    m = 400_000
    box = np.random.default_rng(15).uniform(LOW, HIGH, size=(m, N_PARAMS))
    lp = log_prior(box)
    share = np.isfinite(lp).mean()
    inside = lp[np.isfinite(lp)][0]
    expected = np.exp(-inside) / BOX_VOLUME  # support volume / box volume
    se = np.sqrt(expected * (1 - expected) / m)
    assert abs(share - expected) < 4 * se, f"MC share {share:.5f} vs {expected:.5f} (se {se:.1e})"
    # E_L ~ U(-80, -65), V_res ~ U(-80, -70) mV: P(V_res <= E_L - 2) = (-67 - E[V_res]) / 15 = 8/15
    np.testing.assert_allclose(expected, 8 / 15, rtol=1e-12)
    # the density integrates to 1 over the box: E_box[exp(log_prior)] * box volume
    integral = np.mean(np.exp(lp + np.log(BOX_VOLUME)))
    assert abs(integral - 1.0) < 4 * se / expected


def test_log_prior_of_the_reference_prior_and_unknown_kinds_raise():
    """log_prior(kind="reference") raises ValueError (no density); unknown kinds name the allowed ones everywhere."""
    theta = sample_prior(3, 16)
    with pytest.raises(ValueError, match="the reference prior has no density"):
        log_prior(theta, kind="reference")
    for call in (lambda: log_prior(theta, kind="box"), lambda: sample_prior(3, 0, kind="box"),
                 lambda: sample_prior_torch(3, kind="box"), lambda: in_support(theta, kind="box"),
                 lambda: onto_atoms(theta, kind="box")):
        with pytest.raises(ValueError, match="prior kind must be one of reference, ordered; got 'box'"):
            call()


def test_in_support_and_onto_atoms_with_the_ordered_kind():
    """in_support(kind="ordered") also asks V_res <= E_L - 2 mV; onto_atoms(kind="ordered") moves nothing (no atoms)."""
    theta = sample_prior(4, 17, kind="ordered")
    x = theta.copy()
    x[0, R], x[0, E] = -75e-3, -74e-3  # V_res < E_L (the reference support), but not by 2 mV
    x[1, R] = LOW[R] - 1e-4  # below the reference prior's atom at -80 mV
    assert list(in_support(x)) == [True, False, True, True]
    assert list(in_support(x, kind="ordered")) == [False, False, True, True]
    y = onto_atoms(x, kind="ordered")
    np.testing.assert_array_equal(y, x)  # nothing moved ...
    assert y is not x  # ... on a copy
    assert onto_atoms(x, kind="reference")[1, R] == LOW[R]  # the reference prior's atom does move it
    assert list(in_support(onto_atoms(x, kind="ordered"), kind="ordered")) == [False, False, True, True]


def test_a_widened_box_is_the_process_prior_and_its_draws_are_ordered():
    """priors.set_box: the configured bounds replace the reference's everywhere (LOW, HIGH, the
    parameters, the V_res atom); draws stay ordered V_res < E_L < V_th where the ranges overlap."""
    from lif_sbi import priors

    reference = priors.sample_prior(2000, 0)
    wide = {"E_L": (-80.0, -35.0), "V_th": (-60.0, -20.0), "V_res": (-80.0, -35.0), "g_L": (0.5, 15.0)}
    priors.set_box(wide)
    try:
        assert priors.box_overrides() == wide
        assert priors.PARAMETERS[priors.INDEX["E_L"]].high == pytest.approx(-0.035) and priors.HIGH[2] == pytest.approx(-0.035)
        for kind in priors.PRIOR_KINDS:
            theta = priors.sample_prior(20000, 1, kind=kind)
            assert priors.in_support(theta, kind=kind).all()
            assert theta[:, 2].max() > -0.040 and theta[:, 1].min() < 1e-9  # the wider ranges are used
        priors.check_theta(priors.sample_prior(20000, 2))
    finally:
        priors.set_box()
    assert priors.box_overrides() == {} and priors.ATOMS == [(priors.INDEX["V_res"], -0.08)]
    np.testing.assert_array_equal(priors.sample_prior(2000, 0), reference)  # the reference prior, as before
