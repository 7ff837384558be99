"""Amortised Bayesian inference of leaky integrate-and-fire parameters from voltage traces."""

__version__ = "0.1.0"
