"""Level 2 as an equivalence test: every pair of K-per-backend trainings compared on the same test traces, cross-backend discrepancy against within-backend (retraining) discrepancy."""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

import numpy as np

from ..priors import DISPLAY_SCALE, PARAM_NAMES

#: the kinds of discrepancy between two models (definitions in `pair_values`): the C2ST over all
#: six parameters, the others one per parameter ("mean_shift:C_m", ...)
KINDS = ("c2st", "mean_shift", "ks", "r", "sd_ratio", "sbc")
PER_PARAMETER = KINDS[1:]
DISCREPANCIES = ("c2st", *(f"{k}:{p}" for k in PER_PARAMETER for p in PARAM_NAMES))
RANK_BINS = 100  # the SBC ranks' histogram resolution (`pair_values`)
C2ST_FOLDS = 5


# ---------------------------------------------------------------------------------------------
# Per-trace figures of one pair of posteriors


def c2st_qda(a: np.ndarray, b: np.ndarray, seed: int, folds: int = C2ST_FOLDS) -> np.ndarray:
    """C2ST accuracy per trace between draws a, b (T, S, d): a quadratic discriminant (one Gaussian
    per sample) cross-validated over `folds` folds; 0.5 when the two cannot be told apart.
    Written by hand, batched over traces in NumPy: BayesFlow's MLP C2ST takes 20-50 s per trace on
    the 2-core CPU and scikit-learn's QDA ~20 ms, against 45 pairs x hundreds of traces here.
    QDA is the optimal classifier between Gaussians, so it sees shifts of the means and changes
    of the widths and correlations, the ways two near-Gaussian posteriors differ."""
    t, s, d = a.shape
    x = np.concatenate([a, b], axis=1).astype(np.float64)
    x = (x - x.mean(axis=1, keepdims=True)) / (x.std(axis=1, keepdims=True) + 1e-300)
    y = np.r_[np.zeros(s, bool), np.ones(s, bool)]
    fold = np.random.default_rng(seed).permutation(2 * s) % folds
    correct = np.zeros(t)
    for k in range(folds):
        train, test = fold != k, fold == k
        scores = []
        for label in (False, True):
            xs = x[:, train & (y == label)]
            mu = xs.mean(axis=1, keepdims=True)
            cov = np.einsum("tni,tnj->tij", xs - mu, xs - mu) / (xs.shape[1] - 1) + 1e-6 * np.eye(d)
            sign, logdet = np.linalg.slogdet(cov)
            diff = x[:, test] - mu
            maha = np.einsum("tni,tij,tnj->tn", diff, np.linalg.inv(cov), diff)
            scores.append(-0.5 * (maha + logdet[:, None]))
        correct += ((scores[1] > scores[0]) == y[test]).sum(axis=1)
    return correct / (2 * s)


def ks_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The two-sample Kolmogorov-Smirnov distance per row of x (R, n) and y (R, m), vectorised
    (SciPy's ks_2samp takes one pair at a time): the largest gap between the two ECDFs, read off
    the merged, sorted samples."""
    n, m = x.shape[1], y.shape[1]
    order = np.argsort(np.concatenate([x, y], axis=1), axis=1, kind="stable")
    steps = np.where(order < n, 1.0 / n, -1.0 / m)
    return np.abs(np.cumsum(steps, axis=1)).max(axis=1)


@dataclass
class Pairs:
    """Every pair of models' per-trace figures on the same T test traces (P pairs of M models).

    c2st (P, T); shift (P, T, 6): Δ posterior mean / pooled sd, signed; ks (P, T, 6); log_sd (P, T,
    6): log sd ratio; means (M, T, 6) posterior means; ranks (M, T, 6) SBC ranks in [0, 1]; theta
    (T, 6) the true parameters; groups (M,) each model's backend; pairs (P, 2) model indices."""

    labels: list[str]
    groups: list[str]
    pairs: np.ndarray
    c2st: np.ndarray
    shift: np.ndarray
    ks: np.ndarray
    log_sd: np.ndarray
    means: np.ndarray
    ranks: np.ndarray
    theta: np.ndarray


def pair_table(draws: dict[str, np.ndarray], groups: dict[str, str], theta: np.ndarray, *, n_c2st: int, seed: int = 0,
               cache: dict | None = None) -> Pairs:
    """The per-trace figures of every pair of models. draws: label → (T, S, 6) SI on the same test
    traces theta (T, 6) SI; groups: label → backend. The C2ST runs on the first `n_c2st` traces.
    `cache`: (label, label) → that pair's (c2st, shift, ks, log_sd), filled here and reused
    where it holds the pair (the power check passes the within-backend pairs, which a shift of a
    whole backend's draws does not change)."""
    labels = list(draws)
    d = {k: np.asarray(v, np.float64) * DISPLAY_SCALE for k, v in draws.items()}
    pairs = np.array(list(itertools.combinations(range(len(labels)), 2)))
    figures = []
    for n, (i, j) in enumerate(pairs):
        key = (labels[i], labels[j])
        if cache is not None and key in cache:
            figures.append(cache[key])
            continue
        figures.append(_pair_figures(d[labels[i]], d[labels[j]], n_c2st, seed + n))
        if cache is not None:
            cache[key] = figures[-1]
    c2st, shift, ks, log_sd = (list(x) for x in zip(*figures))
    truth = np.asarray(theta, np.float64) * DISPLAY_SCALE
    means = np.stack([d[k].mean(axis=1) for k in labels])
    ranks = np.stack([(d[k] < truth[:, None, :]).mean(axis=1) for k in labels])
    return Pairs(labels, [groups[k] for k in labels], pairs, np.array(c2st), np.array(shift), np.array(ks), np.array(log_sd),
                 means, ranks, truth)


def _pair_figures(a: np.ndarray, b: np.ndarray, n_c2st: int, seed: int) -> tuple:
    """One pair's per-trace (c2st (T',), shift, ks, log_sd (T, 6)) for draws a, b (T, S, 6)."""
    sd_a, sd_b = a.std(axis=1), b.std(axis=1)
    shift = (a.mean(axis=1) - b.mean(axis=1)) / np.sqrt(0.5 * (sd_a**2 + sd_b**2) + 1e-300)
    t, s, p = a.shape
    ks = ks_rows(a.transpose(0, 2, 1).reshape(t * p, s), b.transpose(0, 2, 1).reshape(t * p, -1)).reshape(t, p)
    return c2st_qda(a[:n_c2st], b[:n_c2st], seed), shift, ks, np.log((sd_a + 1e-300) / (sd_b + 1e-300))


def pair_values(t: Pairs, traces: np.ndarray) -> dict[str, np.ndarray]:
    """Each discrepancy of every pair (P,) over the test traces `traces` (indices, repeats allowed):

    - c2st: the mean C2ST accuracy (over those of `traces` within the C2ST's traces);
    per parameter:
    - mean_shift: |mean over traces of Δ posterior mean / pooled sd| (a systematic shift);
    - ks: the mean KS distance; sd_ratio: |mean log sd ratio| (systematically wider or narrower);
    - r: |Δ Pearson r| of posterior mean against truth;
    - sbc: the KS distance between the two models' SBC rank distributions (ranks binned to
      1/RANK_BINS)."""
    c2 = traces[traces < t.c2st.shape[1]]
    per = {"mean_shift": np.abs(t.shift[:, traces].mean(axis=1)),
           "ks": t.ks[:, traces].mean(axis=1),
           "sd_ratio": np.abs(t.log_sd[:, traces].mean(axis=1))}
    m, th = t.means[:, traces], t.theta[traces]
    mc, tc = m - m.mean(axis=1, keepdims=True), th - th.mean(axis=0)
    r = (mc * tc).sum(axis=1) / np.sqrt((mc**2).sum(axis=1) * (tc**2).sum(axis=0) + 1e-300)  # (M, 6)
    per["r"] = np.abs(r[t.pairs[:, 0]] - r[t.pairs[:, 1]])
    bins = np.minimum((t.ranks[:, traces] * RANK_BINS).astype(int), RANK_BINS)  # (M, T', 6)
    n_models, _, n_par = bins.shape
    slot = bins + (RANK_BINS + 1) * (np.arange(n_models)[:, None, None] * n_par + np.arange(n_par))
    hist = np.bincount(slot.ravel(), minlength=n_models * n_par * (RANK_BINS + 1)).reshape(n_models, n_par, RANK_BINS + 1)
    cdf = np.cumsum(hist, axis=-1) / len(traces)
    per["sbc"] = np.abs(cdf[t.pairs[:, 0]] - cdf[t.pairs[:, 1]]).max(axis=-1)
    out = {"c2st": t.c2st[:, c2].mean(axis=1)}
    for kind in PER_PARAMETER:
        out |= {f"{kind}:{p}": per[kind][:, j] for j, p in enumerate(PARAM_NAMES)}
    return out


# ---------------------------------------------------------------------------------------------
# Cross against within


def contrast(t: Pairs, values: dict[str, np.ndarray], models: np.ndarray | None = None) -> dict[str, float]:
    """Mean cross-backend minus mean within-backend discrepancy, per discrepancy. `models`: the
    models drawn (indices, repeats allowed; all once by default); a pair counts once per way of
    drawing it, and a model is never paired with itself."""
    groups = np.array(t.groups)
    models = np.arange(len(groups)) if models is None else models
    index = {(int(i), int(j)): p for p, (i, j) in enumerate(t.pairs)}
    cross, within = [], []
    for a, b in itertools.combinations(models, 2):
        if a == b:
            continue
        p = index[(min(a, b), max(a, b))]
        (cross if groups[a] != groups[b] else within).append(p)
    if not cross or not within:  # a bootstrap draw of one model repeated in every backend: no contrast
        return dict.fromkeys(values, float("nan"))
    return {k: float(v[cross].mean() - v[within].mean()) for k, v in values.items()}


def bootstrap(t: Pairs, n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """The contrast under a hierarchical bootstrap: the models of each backend drawn with
    replacement, and the test traces drawn with replacement, `n_boot` times. Returns (n_boot,)
    per discrepancy."""
    rng = np.random.default_rng(seed)
    groups = np.array(t.groups)
    members = [np.flatnonzero(groups == g) for g in dict.fromkeys(t.groups)]
    n_traces = t.theta.shape[0]
    out = {k: np.empty(n_boot) for k in DISCREPANCIES}
    for b in range(n_boot):
        traces = rng.integers(n_traces, size=n_traces)
        models = np.concatenate([rng.choice(m, size=len(m)) for m in members])
        for k, v in contrast(t, pair_values(t, traces), models).items():
            out[k][b] = v
    return out


def permutation_p(t: Pairs, values: dict[str, np.ndarray], observed: dict[str, float], max_splits: int = 5000,
                  seed: int = 0) -> dict[str, float]:
    """One-sided permutation p-value of the contrast over models: the backends' labels dealt to the
    models again in every way (or `max_splits` random ways where there are more), p = the share of
    labellings whose contrast is at least the observed one. Its smallest value is 1 over the
    number of distinct labellings: C(2K, K)/2 for two backends (0.008 at K = 5)."""
    labels = list(t.groups)
    names = list(dict.fromkeys(labels))
    sizes = [labels.count(g) for g in names]
    splits = _labellings(len(labels), names, sizes, max_splits, seed)
    counts = dict.fromkeys(values, 0)
    for split in splits:
        c = contrast(dataclasses.replace(t, groups=split), values)
        for k in values:
            counts[k] += c[k] >= observed[k] - 1e-12
    return {k: counts[k] / len(splits) for k in values}


def _labellings(n: int, names: list[str], sizes: list[int], max_splits: int, seed: int) -> list[list[str]]:
    if len(names) == 2 and math.comb(n, sizes[0]) <= max_splits:
        return [[names[0] if i in chosen else names[1] for i in range(n)] for chosen in map(set, itertools.combinations(range(n), sizes[0]))]
    rng = np.random.default_rng(seed)
    base = [g for g, s in zip(names, sizes) for _ in range(s)]
    return [list(rng.permutation(base)) for _ in range(max_splits)]


# ---------------------------------------------------------------------------------------------
# Verdicts


@dataclass
class Verdict:
    discrepancy: str
    cross_minus_within: float
    upper95: float  # one-sided 95 % upper bound (bootstrap)
    lower: float  # one-sided lower bound at the corrected level (bootstrap)
    margin: float
    permutation_p: float
    verdict: str  # "equivalent", "different" or "inconclusive"
    note: str


def verdicts(t: Pairs, margins: dict[str, float], *, n_boot: int, alpha: float, seed: int) -> list[Verdict]:
    """Per discrepancy (`DISCREPANCIES`; `margins` by kind): equivalent when the bootstrap's 95 %
    upper bound of cross − within is below its margin; different when its lower bound at α / (number of discrepancies) is above 0
    (one-sided, Bonferroni); else inconclusive, with the number of models per backend that would
    likely decide it (the bound's distance from the estimate shrinking as 1/√K)."""
    values = pair_values(t, np.arange(t.theta.shape[0]))
    observed = contrast(t, values)
    boot = {k: v[np.isfinite(v)] for k, v in bootstrap(t, n_boot, seed).items()}  # draws without a contrast left out
    perm = permutation_p(t, values, observed, seed=seed)
    level = alpha / len(DISCREPANCIES)
    k = min(t.groups.count(g) for g in set(t.groups))
    out = []
    for name in DISCREPANCIES:
        est, up, lo = observed[name], float(np.quantile(boot[name], 0.95)), float(np.quantile(boot[name], level))
        margin = margins[name.split(":")[0]]
        if up < margin:
            verdict, note = "equivalent", ("a difference is detected, smaller than the margin" if lo > 0 else "")
        elif lo > 0:
            verdict, note = "different", f"cross exceeds within by {est:.3g} (lower bound {lo:.3g})"
        else:
            verdict = "inconclusive"
            note = (f"about K = {math.ceil(k * ((up - est) / (margin - est)) ** 2)} models per backend would likely decide it"
                    if est < margin else "the estimate is above the margin; more models could show a difference")
            if k < 3:
                note += f"; with K = {k} the resampled models repeat often"
        out.append(Verdict(name, est, up, lo, margin, perm[name], verdict, note))
    return out


def shifted(draws: np.ndarray, parameter: int, shift_sd: float, sd: np.ndarray) -> np.ndarray:
    """Draws (T, S, 6) with one parameter moved by `shift_sd` times `sd` (T,) per trace (the power
    check's synthetic difference)."""
    out = np.array(draws, np.float64, copy=True)
    out[:, :, parameter] += shift_sd * sd[:, None]
    return out


def pooled_sd(draws: dict[str, np.ndarray], parameter: int) -> np.ndarray:
    """Per test trace, the posterior sd of one parameter pooled over models (T,) SI."""
    return np.sqrt(np.mean([np.asarray(d)[:, :, parameter].var(axis=1) for d in draws.values()], axis=0))


__all__ = ["DISCREPANCIES", "KINDS", "Pairs", "Verdict", "bootstrap", "c2st_qda", "contrast", "ks_rows", "pair_table",
           "pair_values", "permutation_p", "pooled_sd", "shifted", "verdicts"]
