"""Exact reference posteriors by MCMC for a known current and Gaussian recording noise (emcee)."""

from __future__ import annotations

import math
import time

import emcee
import numpy as np
import torch

from .priors import HIGH, LOW, N_PARAMS, in_support, log_prior
from .simulator import simulate

PRIOR = "ordered"  # the only prior with a density (priors.PRIOR_KINDS)
START_SPREAD = 3.0  # starting walkers: the estimator's draws pushed this many times farther from their mean
MIN_CHAIN_TAUS = 50  # emcee's advice: chains at least 50 autocorrelation times long for a reliable tau
RHAT_MAX = 1.01  # split-R-hat across the independent runs, per parameter
# No walker's mean may lie farther than this many posterior sd from the pooled mean: a stationary
# walker's mean over 4,000 kept steps (tau ~ 30) is off by about 0.12 sd, the worst of 256 by 0.4.
WALKER_Z_MAX = 1.0
RUNS_C2ST_MAX = 0.55  # C2ST accuracy between two halves of the runs (the acceptance rule)
# A burn-in walker this far (log units) below the ensemble's median is lost (`rescue_lost`): near
# its mode a 6-parameter posterior's log density lies chi2_6 / 2 below the peak (median 2.7), so a
# walker of the stationary ensemble falls 15 below the median with probability 4e-6 (chi2_6 > 35.4).
LOST_LOG_POST = 15.0


def log_likelihood(theta, trace_v, current_a, dt_s: float, sd_v: float) -> np.ndarray:
    """log p(x | theta, I) = sum_t log N(x_t; V_t(theta, I), sd_v²), exactly, for each row of theta.

    theta: (W, 6) SI, inside the prior's support (the simulator refuses others); trace_v (T,) V;
    current_a (T,) A; dt_s the step the trace was recorded and simulated at; sd_v the noise sd in V.
    One batched float64 simulator call for all W rows. Returns (W,) float64."""
    theta = np.asarray(theta, dtype=np.float64)
    cur = torch.as_tensor(np.broadcast_to(np.asarray(current_a, dtype=np.float64), (len(theta), len(current_a))).copy())
    v = simulate(theta, cur, dt_s, dtype=torch.float64).numpy()
    resid = (np.asarray(trace_v, dtype=np.float64)[None, :] - v) / sd_v
    return -0.5 * np.sum(resid * resid, axis=1) - len(trace_v) * math.log(sd_v * math.sqrt(2.0 * math.pi))


def to_unit(theta) -> np.ndarray:
    """(..., 6) SI → the unit box (0-1 per parameter), where the sampler moves (the prior is
    uniform there too, so no Jacobian term)."""
    return (np.asarray(theta, dtype=np.float64) - LOW) / (HIGH - LOW)


def from_unit(u) -> np.ndarray:
    """(..., 6) unit box → SI."""
    return LOW + np.asarray(u, dtype=np.float64) * (HIGH - LOW)


class LogPosterior:
    """log p(theta | x, I) up to a constant, on unit-box coordinates (W, 6) → (W,), vectorised
    for emcee: -inf outside the "ordered" prior's support, where nothing is simulated."""

    def __init__(self, trace_v, current_a, dt_s: float, sd_v: float):
        self.trace_v, self.current_a, self.dt_s, self.sd_v = np.asarray(trace_v, np.float64), np.asarray(current_a, np.float64), dt_s, sd_v
        self.calls = 0

    def __call__(self, u: np.ndarray) -> np.ndarray:
        theta = from_unit(u)
        out = log_prior(theta, kind=PRIOR)
        inside = np.isfinite(out)
        if inside.any():
            out[inside] += log_likelihood(theta[inside], self.trace_v, self.current_a, self.dt_s, self.sd_v)
        self.calls += 1
        return out


def starting_walkers(draws_si, n_walkers: int, rng: np.random.Generator, spread: float = START_SPREAD) -> np.ndarray:
    """(n_walkers, 6) unit-box starting points: random rows of `draws_si` (S, 6) SI (e.g. the
    trained estimator's posterior draws) moved `spread` times farther from their mean, redrawn
    until inside the prior's support. Starting wider than the target is what lets independent runs
    show, by R-hat, that they forgot where they started (Gelman & Rubin 1992)."""
    u = to_unit(draws_si)
    mean = u.mean(axis=0)
    out = np.empty((0, N_PARAMS))
    for _ in range(1000):
        pick = u[rng.choice(len(u), size=min(len(u), 4 * n_walkers), replace=False)]  # distinct: equal walkers break the snooker move
        # plus a ten-thousandth of the prior's range: draws that coincide or lie on a line (a poorly
        # trained estimator's) would give emcee linearly dependent walkers
        cand = mean + spread * (pick - mean) + 1e-4 * rng.standard_normal(pick.shape)
        cand = cand[in_support(from_unit(cand), kind=PRIOR)]
        out = np.concatenate([out, cand])[:n_walkers]
        if len(out) == n_walkers:
            return out
    raise RuntimeError("could not place the starting walkers inside the prior's support")


def rescue_lost(state: emcee.State, log_post, rng: np.random.Generator) -> tuple[emcee.State, int]:
    """Walkers whose log posterior lies more than LOST_LOG_POST below the ensemble's median are
    moved onto randomly chosen other walkers; returns the new state and how many were moved.

    Written by hand (emcee has no such step). A walker that started in another spike-timing cell
    (a spike one sample earlier or later) sits tens to thousands of log units below the posterior's
    cell, and differential-evolution proposals, built from differences of the other walkers, are
    too small to leave it: it would stay there for the whole run. No walker of the stationary
    ensemble is that far below the best (see LOST_LOG_POST), so moving them during burn-in changes
    nothing but the time to converge."""
    lp = np.asarray(state.log_prob)
    lost = np.flatnonzero(lp < np.median(lp) - LOST_LOG_POST)
    if len(lost) == 0:
        return state, 0
    good = np.flatnonzero(lp >= np.median(lp) - LOST_LOG_POST)
    coords = state.coords.copy()
    # onto a good walker, nudged by a thousandth of the ensemble's spread: exact copies would make
    # the snooker move divide by a zero distance
    spread = 1e-3 * coords[good].std(axis=0)
    new = coords[rng.choice(good, size=len(lost))] + spread * rng.standard_normal((len(lost), coords.shape[1]))
    coords[lost] = new
    lp = np.asarray(log_post(coords), dtype=np.float64)
    if not np.isfinite(lp[lost]).all():  # a nudge left the support: exact copies for those
        bad = lost[~np.isfinite(lp[lost])]
        coords[bad] = coords[rng.choice(good, size=len(bad))]
        lp = np.asarray(log_post(coords), dtype=np.float64)
    return emcee.State(coords, log_prob=lp, random_state=state.random_state), int(len(lost))


def run_chain(log_post: LogPosterior, start_unit: np.ndarray, n_steps: int, seed: int) -> dict:
    """One emcee ensemble run of `n_steps` from `start_unit` (W, 6): differential-evolution moves
    (80 %) and their snooker variant (20 %), which suit a narrow, correlated target better than the
    stretch move. The first half is burn-in, with lost walkers moved (`rescue_lost`) at its middle
    and end. Returns the kept chain (n_steps - n_steps // 2, W, 6) in SI units, the integrated
    autocorrelation time per parameter (steps), the acceptance fraction, the walkers moved and seconds."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    sampler = emcee.EnsembleSampler(len(start_unit), N_PARAMS, log_post, vectorize=True,
                                    moves=[(emcee.moves.DEMove(), 0.8), (emcee.moves.DESnookerMove(), 0.2)])
    sampler.random_state = np.random.RandomState(seed).get_state()  # emcee draws its moves from this
    burn = n_steps // 2
    state, moved = emcee.State(start_unit), 0
    for part in (burn // 2, burn - burn // 2):
        state = sampler.run_mcmc(state, part, progress=False)
        state, k = rescue_lost(state, log_post, rng)
        moved += k
    sampler.reset()
    sampler.run_mcmc(state, n_steps - burn, progress=False)
    tau = sampler.get_autocorr_time(tol=0)
    return {"chain": from_unit(sampler.get_chain()), "tau": np.asarray(tau, dtype=np.float64), "walkers_moved": moved,
            "acceptance": float(np.mean(sampler.acceptance_fraction)), "seconds": time.perf_counter() - t0}


def split_rhat(chains: np.ndarray) -> np.ndarray:
    """Split-R-hat per parameter (Gelman et al., Bayesian Data Analysis 3rd ed., §11.4) of
    `chains` (m, n, 6): each chain cut in two halves, then between- against within-half variance.
    Written by hand: neither emcee nor SciPy computes it (ArviZ does, but is a heavy dependency)."""
    m, n, _ = chains.shape
    half = n // 2
    parts = np.concatenate([chains[:, :half], chains[:, half:2 * half]])  # (2m, half, 6)
    means = parts.mean(axis=1)
    within = parts.var(axis=1, ddof=1).mean(axis=0)
    between = half * means.var(axis=0, ddof=1)
    var_plus = (half - 1) / half * within + between / half
    return np.sqrt(var_plus / within)


def thin(chain: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """A kept chain (steps, W, 6) → its nearly independent draws (k, 6): every ceil(max tau)-th step
    of every walker."""
    step = max(1, int(math.ceil(float(np.max(tau)))))
    return chain[::step].reshape(-1, chain.shape[-1])


def reference_posterior(trace_v, current_a, dt_s: float, sd_v: float, start_draws_si, *, n_runs: int = 4,
                        n_walkers: int = 64, n_steps: int = 20000, n_draws: int = 1000, seed: int = 0, c2st=None) -> dict:
    """The exact posterior of one observation by `n_runs` independent emcee runs.

    trace_v, current_a: (T,) in V and A at dt_s; sd_v: the recording noise sd in V;
    start_draws_si (S, 6): draws to start from (see `starting_walkers`). `c2st(a, b) -> accuracy`
    compares two sets of draws (N, 6) SI; None skips the between-runs check.
    Returns draws (n_draws, 6) SI, pooled from all runs after thinning, and the convergence
    record: split-R-hat over the runs (each run's draws one chain), the farthest walker's mean in
    posterior sd, autocorrelation times, effective sample size per parameter, acceptance, the
    between-runs C2ST accuracy (first half of the runs against the second) and `accepted`: whether
    every check passes (R-hat ≤ RHAT_MAX, walkers ≤ WALKER_Z_MAX, chains ≥ MIN_CHAIN_TAUS tau,
    C2ST ≤ RUNS_C2ST_MAX, at least n_draws independent draws). Split-R-hat per walker is recorded
    too (`rhat_walkers`) but not tested: one walker's 4,000 steps are ~65 autocorrelation times
    per half, whose R-hat scatters around 1.01 by itself."""
    rng = np.random.default_rng(seed)
    log_post = LogPosterior(trace_v, current_a, dt_s, sd_v)
    runs = [run_chain(log_post, starting_walkers(start_draws_si, n_walkers, rng), n_steps, seed + 1 + k) for k in range(n_runs)]
    kept = n_steps - n_steps // 2
    tau = np.max([r["tau"] for r in runs], axis=0)
    # a run is one independent start: its draws, step by step, are one chain for R-hat
    rhat = split_rhat(np.stack([r["chain"].reshape(-1, N_PARAMS) for r in runs]))
    walker_rhat = split_rhat(np.concatenate([r["chain"].transpose(1, 0, 2) for r in runs]))
    every = np.concatenate([r["chain"].reshape(-1, N_PARAMS) for r in runs])
    walker_means = np.concatenate([r["chain"].mean(axis=0) for r in runs])  # (runs x W, 6)
    walker_z = float(np.max(np.abs(walker_means - every.mean(axis=0)) / every.std(axis=0)))
    ess = np.sum([kept * n_walkers / r["tau"] for r in runs], axis=0)
    thinned = [thin(r["chain"], r["tau"]) for r in runs]
    pooled = np.concatenate(thinned)
    draws = pooled[rng.choice(len(pooled), size=n_draws, replace=len(pooled) < n_draws)]
    between = None
    if c2st is not None and n_runs >= 2:
        a, b = np.concatenate(thinned[: n_runs // 2]), np.concatenate(thinned[n_runs // 2:])
        k = min(len(a), len(b), n_draws)
        between = float(c2st(a[rng.choice(len(a), k, replace=False)], b[rng.choice(len(b), k, replace=False)]))
    long_enough = bool(kept >= MIN_CHAIN_TAUS * np.max(tau))
    accepted = bool(np.all(rhat <= RHAT_MAX) and walker_z <= WALKER_Z_MAX and long_enough and len(pooled) >= n_draws
                    and (between is None or between <= RUNS_C2ST_MAX))
    return {"draws": draws, "rhat": rhat, "rhat_walkers": walker_rhat, "walker_z": walker_z, "tau": tau, "ess": ess, "independent_draws": len(pooled),
            "acceptance": float(np.mean([r["acceptance"] for r in runs])), "walkers_moved": int(sum(r["walkers_moved"] for r in runs)),
            "c2st_between_runs": between,
            "long_enough": long_enough, "accepted": accepted, "seconds": float(sum(r["seconds"] for r in runs)),
            "likelihood_calls": log_post.calls, "n_runs": n_runs, "n_walkers": n_walkers, "n_steps": n_steps}
