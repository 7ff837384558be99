"""The amortised posterior of one trace refined by importance sampling with the exact likelihood."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .errors import InputError
from .priors import in_support, sample_prior
from .reference_posterior import from_unit, log_likelihood, to_unit

# Written by hand: neither BayesFlow nor SciPy has adaptive importance sampling. The method is
# population Monte Carlo (Cappé et al. 2004) started from the flow, as DINGO-IS (Dax et al. 2023)
# corrects a neural posterior with the exact likelihood: round 0 draws from the trained flow and
# weights by p(x | θ, I) p(θ) / q(θ | x); then, and while the effective sample size is short of
# MIN_ESS, the next round draws from a Student-t fitted to the weighted draws (on the unit box)
# and weights by p(x | θ, I) p(θ) / t(θ). The answer: the last round's draws, resampled by weight.
MIN_ESS = 2000  # effective draws the last round must reach: C2ST against 1,000 exact draws then sees no resampling noise
N_PROPOSAL = 20_000  # Student-t draws per round (one float64 simulator call: ~0.1 s on the 2-core CPU)
# The flow's draws in round 0: its density costs ~0.6 ms a draw on the CPU (the summary network runs
# once per draw in BayesFlow's log_prob), and 4,000 locate the posterior for round 1.
N_FLOW = 4000
MAX_ROUNDS = 8
T_DOF = 5  # the Student-t's degrees of freedom: tails heavier than the posterior's, as importance sampling needs
INFLATE = 1.5  # its covariance is the weighted draws' times INFLATE²: wider than the target
# A trace whose residual at the most likely draw exceeds the noise sd by this factor is not explained
# by the model with the run's noise: under the model the ratio is 1 within about 1/sqrt(2T) (0.03 at
# T = 501 samples), so 1.2 is several sds out even for short windows, and small for a misfit.
RESIDUAL_RATIO_MAX = 1.2
# Where fewer of the flow's draws than this share fall inside the prior's support, the trace is far
# from the flow's training data and its draws (the few inside, resampled) do not locate the
# posterior: round 0 draws from the prior instead. Measured on the noisy_steps showcase's model:
# 97-99.9 % inside for traces of its set-up, 0.3-1.1 % for traces with 4x its noise.
MIN_ACCEPTANCE = 0.01
MIN_FIT = 50  # with fewer effective draws the Student-t is fitted to the MIN_FIT heaviest draws, equally weighted


@dataclass(frozen=True)
class Refined:
    """draws: (n, 6) SI, resampled from the last round; ess: that round's effective sample size
    out of n_proposal draws; rounds: rounds run, round 0 included (at least 2); converged: ess
    >= MIN_ESS; ess_flow: the effective sample size of the flow's n_flow draws (round 0, which only
    locates the posterior: the answer comes from later rounds), a measure
    of how close the amortised posterior is to the exact one, and 0 where the flow had fewer
    draws inside the prior's support than MIN_ACCEPTANCE, so that round 0 drew n_flow draws from
    the prior instead; residual_ratio: rms of
    (trace - simulated V) at the most likely draw over the noise sd: ~1 where the model and the
    noise level explain the trace, well above 1 where they do not."""

    draws: np.ndarray
    ess: float
    ess_flow: float
    n_flow: int
    n_proposal: int
    rounds: int
    converged: bool
    residual_ratio: float


def effective_sample_size(log_w: np.ndarray) -> float:
    """Kish's effective sample size (Σ w)² / Σ w² of log importance weights (-inf: weight 0)."""
    finite = np.isfinite(log_w)
    if not finite.any():
        return 0.0
    w = np.exp(log_w[finite] - log_w[finite].max())
    return float(w.sum() ** 2 / np.sum(w * w))


def _log_target(theta, trace_v, current_a, dt_s, sd_v) -> np.ndarray:
    """log p(x | θ, I) + log p(θ) up to a constant for each row of theta (n, 6) SI: the
    log-likelihood inside the "ordered" prior's support, -inf outside, where nothing is simulated.
    The prior is uniform on its support, so its density is a constant there, which self-normalised
    weights cancel: this holds for a widened box too (`priors.log_prior` knows the constant for the
    reference box only)."""
    inside = in_support(theta, kind="ordered")
    ll = np.full(len(theta), -np.inf)
    if inside.any():
        ll[inside] = log_likelihood(theta[inside], trace_v, current_a, dt_s, sd_v)
    return ll


def _fit_t(theta, log_w) -> stats._multivariate.multivariate_t_frozen:
    """A Student-t on the unit box fitted to weighted draws theta (n, 6) SI (see MIN_FIT, INFLATE)."""
    u = to_unit(theta)
    w = np.exp(log_w - log_w.max())
    w[~np.isfinite(log_w)] = 0.0
    if effective_sample_size(log_w) < MIN_FIT:
        w = np.zeros(len(u))
        w[np.argsort(np.where(np.isfinite(log_w), log_w, -np.inf))[-MIN_FIT:]] = 1.0
    w /= w.sum()
    mean = w @ u
    cov = (u - mean).T @ ((u - mean) * w[:, None]) * INFLATE**2
    cov += np.eye(6) * 1e-12  # a draw repeated MIN_FIT times must not give a singular matrix
    return stats.multivariate_t(loc=mean, shape=cov, df=T_DOF)


def check_exact(observe_current: bool, sd_v: float, prior: str) -> None:
    """InputError unless a run's set-up has an exact likelihood: the current observed, Gaussian noise
    of sd_v > 0 V on the trace, and the "ordered" prior (the reference prior has no density)."""
    if not observe_current or not sd_v or prior != "ordered":
        raise InputError("refining needs a run whose set-up has an exact likelihood: model.observe_current = true, "
                         f"noise.sd_v > 0 and prior.kind = \"ordered\" (this run: observe_current = {str(bool(observe_current)).lower()}, "
                         f"sd_v = {sd_v:g}, prior = {prior!r})")


def refine(posterior, trace_v, current_a, *, n: int = 1000, n_flow: int = N_FLOW, n_proposal: int = N_PROPOSAL,
           min_ess: float = MIN_ESS, max_rounds: int = MAX_ROUNDS, seed: int = 0) -> Refined:
    """The posterior of one trace under `posterior`'s own set-up (a lif_sbi.Posterior), exact up
    to importance-sampling error: see the comment above. trace_v (T,) V and current_a (T,) A on the
    run's grid. Needs a set-up with an exact likelihood: the current observed, Gaussian noise
    (noise.sd_v > 0) and the "ordered" prior (the reference prior has no density)."""
    check_exact(posterior.observes_current, posterior.noise_sd_v, posterior.prior)
    trace_v = np.asarray(trace_v, dtype=np.float64).reshape(-1)
    current_a = np.asarray(current_a, dtype=np.float64).reshape(-1)
    dt_s, sd_v = posterior.dt_s, posterior.noise_sd_v
    rng = np.random.default_rng(seed)

    with warnings.catch_warnings():  # draws outside the prior, filled by resampling: round 0 only locates the posterior
        warnings.simplefilter("ignore")
        theta, acceptance = posterior.sample(trace_v, n_flow, current=current_a[None], seed=seed, return_acceptance=True)
    if acceptance[0] >= MIN_ACCEPTANCE:
        theta = theta[0]
        ll = _log_target(theta, trace_v, current_a, dt_s, sd_v)
        log_w = ll - posterior.log_prob(theta, trace_v, current=current_a[None])
        ess_flow = ess = effective_sample_size(log_w)
    else:  # the flow puts (almost) nothing inside the prior: a trace far from its training data; start from the prior
        theta = sample_prior(n_flow, rng, kind="ordered")
        log_w = _log_target(theta, trace_v, current_a, dt_s, sd_v)  # the prior is the proposal: its density cancels
        ess, ess_flow = effective_sample_size(log_w), 0.0
    rounds = 1
    while (rounds == 1 or ess < min_ess) and rounds < max_rounds:  # the answer always comes from a Student-t round
        proposal = _fit_t(theta, log_w)
        u = proposal.rvs(size=n_proposal, random_state=rng)
        theta = from_unit(u)
        ll = _log_target(theta, trace_v, current_a, dt_s, sd_v)
        log_w = ll - proposal.logpdf(u)  # the unit box's Jacobian is a constant: it cancels
        ess = effective_sample_size(log_w)
        rounds += 1
    w = np.exp(log_w - log_w.max())
    w[~np.isfinite(log_w)] = 0.0
    picks = rng.choice(len(theta), size=n, replace=True, p=w / w.sum())
    rms = math.sqrt(-2.0 * (ll.max() + len(trace_v) * math.log(sd_v * math.sqrt(2.0 * math.pi))) / len(trace_v))
    return Refined(draws=theta[picks], ess=ess, ess_flow=ess_flow, n_flow=n_flow, n_proposal=len(theta), rounds=rounds,
                   converged=ess >= min_ess, residual_ratio=rms)
