"""Every threshold of the parity checks, with the measurements behind it, and the fixed inputs they are measured on."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..config import Config


@dataclass(frozen=True)
class Thresholds:
    # --- level 1 (same weights): independent of training size. All arithmetic is float32, whose
    # unit roundoff is 6e-8; different backends sum convolutions, matrix products and the GRU's
    # 63-step recurrence in different orders, so a few hundred roundoffs of drift is expected and a
    # wrong weight, layer or layout gives errors of order 1e-2 and up (see the perturbation test).
    summary_rel: float = 1e-5  # max |Δ summary| / max |summary| over the batch
    # The log-density adds the summary's drift, pushed through 2 coupling layers and the
    # standardisation's log-Jacobian; relative to max(1, max |log p|) so values near 0 do not blow up.
    log_prob_rel: float = 1e-4
    # Draws from the same z: max |Δθ| per parameter / that parameter's prior width. The flow's
    # inverse multiplies by exp(scale) per layer, so errors grow a little more than for log p;
    # 1e-3 of the prior width is far below any posterior width the model can resolve.
    draws_rel: float = 1e-3
    # One training step's gradients from the same weights on the same batch, per trainable
    # variable: |Δ∂L/∂w| / |∂L/∂w|. The backward pass of the whole flow and summary network adds
    # up many more roundoffs than the forward values above; a wrong backward rule (a kernel
    # layout, a missing term) gives errors of order one. Measured on the 2-core CPU over the 32
    # fixed traces: `default`'s trained torch and TensorFlow models under every other backend
    # (2026-11-26, results/parity/default-with-jax/parity.md), worst variable 1.8e-4 to 1.0e-3,
    # median 4e-5 to 1.1e-4; torch vs TensorFlow alone (2026-11-27, results/parity/default/parity.md),
    # worst 1.1e-4 and 2.6e-4; `ci`, all six directions of torch, TensorFlow and JAX (2026-11-26),
    # worst 7e-7 to 1.5e-4.
    gradient_rel: float = 1e-2
    # --- level 2 (independent training): depends on how much the model learned.
    # |r_A − r_B| per parameter. With N test traces, r's sampling error alone is (1−r²)/√N.
    # Measured seed-to-seed spread under one backend (`--baseline torch`, default config, 2-core
    # CPU, 2026-11-26, results/parity/baseline-default/parity.md): |Δr| < 0.0005 for E_L, V_th,
    # V_res and t_ref, 0.0006 for C_m, but 0.013 for g_L (r ≈ 0): for a weakly identified
    # parameter two trainings on one backend already come near 0.02. From the same initial weights, data and
    # batch order (training.initial_weights, parity's default), so that float32 round-off is the
    # only difference, torch (training steps compiled by inductor) vs TensorFlow gives 0.035 (C_m,
    # r 0.306 vs 0.270) and 0.088 (g_L) (2026-11-27, results/parity/default/parity.md). Round-off
    # grows over 3,500 steps into a different network, and r of a weakly identified parameter
    # moves with it by chance: seven `default` runs (three backends, two seeds, two starts;
    # 2026-11-26) gave r(C_m) 0.336-0.371 on their own test traces, in no order by backend.
    # 0.02 is the figure issue 5 asks for.
    r_abs_diff: float = 0.02
    # SBC rule. Per-parameter log-gamma tests at 5 % on 6 parameters and 2 backends make a
    # spurious discordance (one backend passes, the other fails) likely even for identical,
    # calibrated posteriors: P ≈ 1 − (1 − 2·0.05·0.95)^6 ≈ 0.45. So the rule implemented is: for
    # every parameter where either backend passes at 5 %, both must pass at the Bonferroni level
    # α = sbc_family_alpha / (2·6) (family-wise ≤ 5 % over all 12 tests). A genuinely worse
    # calibration under one backend still fails it; chance alone does so ≤ 5 % of the time.
    sbc_family_alpha: float = 0.05
    # Mean C2ST accuracy between the two backends' draws over ≥ c2st_min_traces test traces.
    # 0.5 = indistinguishable; with 2×n_draws samples per trace the chance spread of one accuracy
    # is about 0.5/√(2·n_draws) ≈ 0.02 at 1,000 draws, so 0.60 allows finite-sample noise and the
    # seed-to-seed variation of two trainings but not a systematically different posterior.
    # Measured: two torch trainings that differ only in their seed give mean C2ST accuracy 0.793
    # (per trace 0.62–0.93; 2026-11-26, results/parity/baseline-default/parity.md), so at default
    # size 0.60 is not reachable even within one backend; the posteriors of two trainings differ by
    # that much. Torch vs TensorFlow from the same initial weights gives 0.701 (2026-11-27,
    # results/parity/default/parity.md). That report's per-parameter separation shows where: the
    # posterior means differ by 0.66 posterior sds for V_res, 0.46 E_L, 0.44 t_ref, 0.41 V_th, but
    # 0.08 C_m and 0.04 g_L, whose KS distances (0.056, 0.041) are near that of identical
    # posteriors (0.039). The four near-point parameters are read almost exactly off a noise-free
    # trace (DESIGN.md §2); each flow's posterior sd there is its own approximation error (made
    # honest by the width calibration), so two trainings whose errors are not the same differ by a
    # fraction of an sd, which a classifier detects; for errors independent of each other it would
    # be √2 sd, C2ST ≈ Φ(√2/2) ≈ 0.76. 0.60 is the figure issue 5 asks for, kept until the owners
    # choose another.
    c2st_accuracy: float = 0.60
    c2st_min_traces: int = 20
    # --- level 3 (simulator CPU vs CUDA): float64 spike trains must be identical; float32 may
    # differ where V lands within a roundoff of V_th (a spike one sample earlier or later changes
    # the rest of the trace), which is rare: ≥ 99.5 % of traces keep their spike count, and
    # voltages agree to 1e-5 V (10 µV, ~100 float32 roundoffs at −70 mV) where spike trains agree.
    sim_f32_same_count: float = 0.995
    sim_f32_max_dv: float = 1e-5


THRESHOLDS: dict[str, Thresholds] = {
    # full-size runs (default, reference): the thresholds the project promises
    "full": Thresholds(),
    # smoke-size runs (the ci config: 3 epochs on 384 traces, 40 test traces × 100 draws). Level 1
    # is unchanged (it does not depend on training). Level 2 cannot test equivalence at this size:
    # two 3-epoch networks have measurably different, barely trained posteriors, and r from 40
    # traces has a sampling error of ~0.15 on its own. The smoke thresholds catch gross breakage
    # only — one backend not learning (r of V_res ≈ 0.85 vs 0), NaNs, a posterior in the wrong
    # place (C2ST ≈ 1) — and the machinery is exercised end to end; equivalence is asserted at full
    # size. Measured at ci size, torch, TensorFlow and JAX, each from its own initial weights
    # (2-core CPU, 2026-11-26, results/parity/ci-with-jax/parity.md): |Δr| up to 0.20 (g_L), C2ST
    # mean 0.55 (per trace 0.50–0.72; with only 100 vs 100 draws even identical posteriors average
    # ~0.53–0.55, because each fold's accuracy is folded to ≥ 0.5). The SBC rule is the full-size
    # one: it is already tolerant of chance.
    "smoke": dataclasses.replace(Thresholds(), r_abs_diff=0.5, c2st_accuracy=0.75),
}


def size_of(config: Config) -> str:
    """'full' or 'smoke': smoke for anything trained on < 5,000 traces or for < 2,000 optimizer steps."""
    n_train = config.data.n_traces - round(config.data.n_traces * config.data.validation_fraction)
    steps = config.training.epochs * -(-n_train // config.training.batch_size)
    return "smoke" if config.data.n_traces < 5000 or steps < 2000 else "full"


# Fixed inputs of level 1 (and of level 3's simulations); not thresholds: they fix what is compared
L1_N_TRACES = 32
L1_N_Z = 64  # base draws per trace
L1_SEED = 20251125
