"""compile_inference under torch: the flow's sampling recorded per batch shape as an aten program."""

from __future__ import annotations

import torch
from bayesflow.approximators.helpers.samplers import Sampler

from .._common import RecordedSampler


def compile_inference(approximator) -> None:
    """Run a BayesFlow approximator's flow sampling as traced aten programs, one per batch shape
    (``_TracedSampler``), once a shape has been sampled a few times (on the CPU, batches of up to
    4,096 draws, where Keras' Python is most of the time): the same draws, bit for bit on the
    CPU, without Keras' and BayesFlow's Python around each operation (one recording x 1,000
    draws: 13.1 ms instead of 57.8 ms on the 2-core CPU; bench/RESULTS.md, "Recorded sampling under
    torch and TensorFlow"). Replaces the approximator's ``sampler`` (not saved with the model) unless it is of a
    type other than BayesFlow's default. The summary network stays eager: it runs once per batch
    of recordings, not once per draw batch. (torch.compile would instead add a compilation per
    shape, far longer than a trace.)"""
    if type(getattr(approximator, "sampler", None)) is Sampler:
        approximator.sampler = _TracedSampler()


class _TracedSampler(RecordedSampler):
    """BayesFlow's Sampler with the flow's inverse pass recorded per batch shape (see
    ``_common.RecordedSampler``) as the aten program ``make_fx`` traces on real tensors (its
    result is the call's); replays run under ``no_grad``. The flow's weights are the same tensor
    objects in the trace, so weights loaded or trained later are what a replay uses."""

    def _record(self, inverse, z, conditions):
        from torch.fx.experimental.proxy_tensor import make_fx

        ran = {}

        def run(z, conditions):
            ran["samples"] = inverse(z, conditions)
            return ran["samples"]

        program = make_fx(run, tracing_mode="real")(z, conditions)
        return program, ran["samples"]

    def _run(self, program, z, conditions):
        with torch.no_grad():
            return program(z, conditions)

    def _eager(self, inverse, z, conditions):
        with torch.no_grad():
            return inverse(z, conditions)
