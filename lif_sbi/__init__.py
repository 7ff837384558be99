"""Amortised Bayesian inference of leaky integrate-and-fire parameters from voltage traces."""

__version__ = "0.1.0"


def load(run_dir):
    """A finished run's posterior estimator (`lif_sbi.posterior.Posterior`): ``sample``, ``log_prob``,
    parameter names, units and bounds. Imports Keras on first call, not with the package."""
    from .posterior import load as _load

    return _load(run_dir)
