"""Run configurations: frozen dataclasses validated on construction, loaded from configs/*.toml."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

_PACKAGE_DIR = Path(__file__).resolve().parent
#: the source checkout the package runs from (the folder holding pyproject.toml), or None where it
#: is installed from a wheel
CHECKOUT = _PACKAGE_DIR.parent if (_PACKAGE_DIR.parent / "pyproject.toml").is_file() else None
#: the named configurations: the checkout's configs/, installed as package data lif_sbi/configs/
CONFIG_DIR = _PACKAGE_DIR / "configs" if (_PACKAGE_DIR / "configs").is_dir() else _PACKAGE_DIR.parent / "configs"
#: where run folders are made: $LIF_SBI_RESULTS, else results/ in the checkout (installed: in the current folder)
RESULTS_DIR = Path(os.environ.get("LIF_SBI_RESULTS") or (CHECKOUT or Path()) / "results")
#: where simulated datasets (and JAX's compiled programs) are cached: $LIF_SBI_CACHE, else cache/ beside results/
CACHE_DIR = Path(os.environ.get("LIF_SBI_CACHE") or (CHECKOUT or Path()) / "cache")
# The summary networks a configuration may name; lif_sbi.networks maps each to its class (and
# checks the two lists agree). Declared here so that validating a configuration needs no Keras.
SUMMARY_KINDS: tuple[str, ...] = ("reference", "conv_gru", "conv_pool")
LR_SCHEDULES: tuple[str, ...] = ("plateau", "cosine")
# The coupling subnets: "mlp" = BayesFlow's MLP; "fused" = lif_sbi.subnets.CouplingMLP, the same
# function as one Keras layer (faster under eager PyTorch).
FLOW_SUBNETS: tuple[str, ...] = ("mlp", "fused")
# Where the training traces are simulated (lif_sbi.simulator.resolve_device): "auto" = CUDA where
# torch sees a GPU, else the CPU.
DATA_DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
DATA_MODES: tuple[str, ...] = ("offline", "online")


#: the file, beside model.keras, holding the weights a run started from (`training.initial_weights`)
INITIAL_WEIGHTS = "initial.weights.npz"
MIN_LOGIT_MARGIN = 1e-5  # model.logit_margin's least value (see there)


class ConfigError(ValueError):
    """A configuration problem, reported to people as one line."""


def _require(ok: bool, key: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r} is not allowed: expected {allowed}")


@dataclass(frozen=True)
class DataConfig:
    n_traces: int = 10_000  # simulated (theta, trace) pairs for training + validation
    validation_fraction: float = 0.2  # share of n_traces held out for validation
    seed: int = 42  # seed of the simulations, the train/validation split and each epoch's batch order
    cache: bool = True  # keep the simulated dataset under cache/, keyed by what determines it
    # Where the traces are simulated: "auto" (CUDA where torch sees a GPU, else the CPU), "cpu" or
    # "cuda". Parameters and stimuli are drawn on the CPU either way, so only float32 rounding of
    # the traces depends on it. A run saves the resolved choice ("cpu" or "cuda") in its config.toml.
    device: str = "auto"
    # "offline": every epoch visits the same n_traces * (1 - validation_fraction) training traces;
    # "online": every training step draws a freshly simulated batch (lif_sbi.online), an epoch being
    # as many traces; the validation traces are the same fixed set in both modes.
    mode: str = "offline"

    def __post_init__(self):
        _require(isinstance(self.n_traces, int) and self.n_traces >= 10, "data.n_traces", "an integer >= 10", self.n_traces)
        _require(
            isinstance(self.validation_fraction, float) and 0.0 < self.validation_fraction < 1.0,
            "data.validation_fraction",
            "a number strictly between 0 and 1 (a share of data.n_traces, not a percentage)",
            self.validation_fraction,
        )
        n_val = round(self.n_traces * self.validation_fraction)
        _require(
            1 <= n_val < self.n_traces,
            "data.validation_fraction",
            "a share that leaves at least one trace in both the training and validation sets",
            self.validation_fraction,
        )
        _require(isinstance(self.seed, int) and self.seed >= 0, "data.seed", "a non-negative integer", self.seed)
        _require(self.device in DATA_DEVICES, "data.device", f"one of {', '.join(DATA_DEVICES)}", self.device)
        _require(self.mode in DATA_MODES, "data.mode", f"one of {', '.join(DATA_MODES)}", self.mode)


# The stimulus protocols (lif_sbi.stimulus.PROTOCOLS; declared here so that validating a
# configuration needs no torch) and the prior kinds (lif_sbi.priors.PRIOR_KINDS).
STIMULUS_PROTOCOLS: tuple[str, ...] = ("coloured", "step", "ramp", "file")
PRIOR_KINDS: tuple[str, ...] = ("reference", "ordered")


@dataclass(frozen=True)
class StimulusConfig:
    """The injected current and the time grid (lif_sbi.stimulus). The defaults are the reference
    study's: the coloured current, 50 ms at 0.1 ms (501 samples)."""

    # One or more of STIMULUS_PROTOCOLS; with several, each trace draws one with equal probability.
    # "coloured": a (1 + 0.25 sin(2π 10 Hz t) + 0.15 c(t)), the reference's; "step": a on
    # [onset, onset + width), 0 elsewhere; "ramp": rising from 0 at the onset to a at onset + width;
    # "file": a user's command waveform (`file`) times a factor drawn from [file_scale_low, file_scale_high].
    protocols: tuple[str, ...] = ("coloured",)
    duration_s: float = 0.05  # the window, s; samples t_i = i dt_s, i = 0 ... duration_s / dt_s
    dt_s: float = 1e-4  # the sampling and integration step, s
    amplitude_low_a: float = 0.3e-9  # a ~ U(low, high), A: the coloured mean, a step's height, a ramp's end
    amplitude_high_a: float = 3e-9
    onset_low_s: float = 0.01  # step and ramp onset ~ U(low, high), s
    onset_high_s: float = 0.01
    width_low_s: float = 0.03  # step and ramp duration ~ U(low, high), s
    width_high_s: float = 0.03
    # "file": an ABF recording (its command channel, sweep `file_sweep`) or .npy/.csv/.txt with one
    # value per sample in A at `file_dt_s` (0: dt_s); the window starts `file_start_s` into it.
    file: str = ""
    file_sweep: int = 0
    file_dt_s: float = 0.0
    file_start_s: float = 0.0
    file_scale_low: float = 1.0
    file_scale_high: float = 1.0

    def __post_init__(self):
        _require(isinstance(self.protocols, tuple) and len(self.protocols) >= 1 and all(p in STIMULUS_PROTOCOLS for p in self.protocols)
                 and len(set(self.protocols)) == len(self.protocols), "stimulus.protocols",
                 f"a list of distinct names from {', '.join(STIMULUS_PROTOCOLS)}", list(self.protocols) if isinstance(self.protocols, tuple) else self.protocols)
        _require(isinstance(self.dt_s, float) and 1e-6 <= self.dt_s <= 1e-2, "stimulus.dt_s", "a step in [1e-6, 1e-2] s", self.dt_s)
        _require(isinstance(self.duration_s, float) and 10 * self.dt_s <= self.duration_s <= 100.0, "stimulus.duration_s",
                 "a window of at least 10 steps and at most 100 s", self.duration_s)
        steps = self.duration_s / self.dt_s
        _require(abs(steps - round(steps)) <= 1e-6 * steps, "stimulus.duration_s",
                 f"a whole number of stimulus.dt_s = {self.dt_s!r} s steps", self.duration_s)
        for name in ("amplitude", "onset", "width", "file_scale"):
            unit = "_a" if name == "amplitude" else "" if name == "file_scale" else "_s"
            lo, hi = getattr(self, f"{name}_low{unit}"), getattr(self, f"{name}_high{unit}")
            _require(isinstance(lo, float) and isinstance(hi, float) and lo <= hi, f"stimulus.{name}_low{unit}",
                     f"a number <= stimulus.{name}_high{unit} ({hi!r})", lo)
        _require(self.onset_low_s >= 0 and self.width_low_s > 0, "stimulus.onset_low_s / width_low_s",
                 "onsets >= 0 s and widths > 0 s", (self.onset_low_s, self.width_low_s))
        _require(not {"step", "ramp"} & set(self.protocols) or self.onset_high_s < self.duration_s, "stimulus.onset_high_s",
                 f"an onset inside the window (< stimulus.duration_s = {self.duration_s!r} s)", self.onset_high_s)
        needs_file = "file" in self.protocols
        _require(not needs_file or (self.file and Path(self.file).is_file()), "stimulus.file",
                 "an existing .abf, .npy, .csv or .txt file when stimulus.protocols holds 'file'", self.file)
        _require(not self.file or Path(self.file).suffix.lower() in (".abf", ".npy", ".csv", ".txt"), "stimulus.file",
                 "an .abf, .npy, .csv or .txt file", self.file)
        _require(isinstance(self.file_sweep, int) and self.file_sweep >= 0, "stimulus.file_sweep", "a non-negative integer", self.file_sweep)
        _require(isinstance(self.file_dt_s, float) and self.file_dt_s >= 0, "stimulus.file_dt_s", "0 (the model's dt_s) or a step in s", self.file_dt_s)
        _require(isinstance(self.file_start_s, float) and self.file_start_s >= 0, "stimulus.file_start_s", "a time >= 0 s", self.file_start_s)

    @property
    def n_samples(self) -> int:
        """Samples per trace: round(duration_s / dt_s) + 1."""
        return int(round(self.duration_s / self.dt_s)) + 1


@dataclass(frozen=True)
class NoiseConfig:
    """Measurement noise on the observed voltage; the simulator stays noise-free underneath."""

    # Gaussian, this sd in V (0.5e-3 = 0.5 mV), independent per sample: fresh every time a training
    # trace is drawn into a batch, fixed (seeded) for the validation and test traces.
    sd_v: float = 0.0

    def __post_init__(self):
        _require(isinstance(self.sd_v, float) and 0.0 <= self.sd_v <= 0.05, "noise.sd_v", "a standard deviation in [0, 0.05] V", self.sd_v)


@dataclass(frozen=True)
class PriorConfig:
    """The prior over the six parameters (lif_sbi.priors)."""

    # "reference": the study's (uniform bounds, then its ordering repair: no density); "ordered": the
    # same box restricted to V_res <= E_L - 2 mV by rejection, which has a density, so exact (MCMC)
    # reference posteriors exist for it.
    kind: str = "reference"
    # A parameter's bounds in display units (pF, nS, mV, mV, mV, ms), [low, high], in place of the
    # reference's (lif_sbi.priors.PARAMETERS); empty: the reference's. E.g. E_L = [-80.0, -35.0].
    C_m: tuple[float, ...] = ()
    g_L: tuple[float, ...] = ()
    E_L: tuple[float, ...] = ()
    V_th: tuple[float, ...] = ()
    V_res: tuple[float, ...] = ()
    t_ref: tuple[float, ...] = ()

    def __post_init__(self):
        _require(self.kind in PRIOR_KINDS, "prior.kind", f"one of {', '.join(PRIOR_KINDS)}", self.kind)
        for name in ("C_m", "g_L", "E_L", "V_th", "V_res", "t_ref"):
            b = getattr(self, name)
            positive = name in ("C_m", "g_L", "t_ref")
            _require(b == () or (len(b) == 2 and b[0] < b[1] and (not positive or b[0] > 0)), f"prior.{name}",
                     "[low, high] in display units with low < high" + (", low > 0" if positive else ""), list(b))

    def bounds(self) -> dict[str, tuple[float, float]]:
        """The configured bounds, {name: (low, high)} in display units (`priors.set_box`)."""
        return {name: tuple(getattr(self, name)) for name in ("C_m", "g_L", "E_L", "V_th", "V_res", "t_ref") if getattr(self, name)}


@dataclass(frozen=True)
class ModelConfig:
    summary_network: str = "reference"  # a name from lif_sbi.networks.SUMMARY_KINDS
    summary_dim: int = 16  # size of the learned summary vector
    flow_depth: int = 6  # coupling layers of the CouplingFlow (BayesFlow's default: 6)
    flow_transform: str = "affine"  # "affine" or "spline" coupling transforms
    # Dropout in the coupling subnets (BayesFlow's MLP default: 0.05). Training-time dropout noise
    # in the flow's shift widens near-point posteriors (E_L, V_res) well beyond their error.
    flow_dropout: float = 0.05
    # conv_pool only: also hand the flow the trace's first sample, minimum and maximum (which
    # carry E_L, V_res and V_th almost exactly in this noise-free model) next to the learned summary.
    trace_features: bool = False
    # Infer the logit of each parameter's position within its prior bounds (BayesFlow's
    # `constrain`) instead of the parameter itself; false is the study's plain standardisation.
    logit_bounds: bool = True
    # How far beyond each prior bound that logit map reaches, as a share of the prior's width (the
    # flow's draws beyond a bound are rejected; the reference prior's V_res atom on its bound maps
    # to logit(margin)). At least MIN_LOGIT_MARGIN: float32 rounds values that near a bound onto it.
    logit_margin: float = 0.01
    # The flow's base distribution: 0 = standard normal (BayesFlow's default); a number > 2 = a
    # diagonal Student-t with that many degrees of freedom (BayesFlow's DiagonalStudentT). Flows
    # with Lipschitz coupling layers keep the tails of their base, so a Gaussian base cannot make
    # the heavy-tailed error shapes of near-point posteriors (E_L).
    flow_base_df: float = 0.0
    # "mlp": BayesFlow's coupling MLP (the study's); "fused": the same function and initialisation
    # as one Keras layer (lif_sbi.subnets.CouplingMLP), far fewer layer calls per step under torch.
    flow_subnet: str = "mlp"
    # The summary network also sees the injected current (in nA, standardised like the voltage) as
    # a second input channel: what an experimenter knows of their own recording.
    observe_current: bool = False
    # The flow is also conditioned on a least-squares fit of the membrane equation to the trace and
    # its current (lif_sbi.features: exact C_m, g_L, E_L on noise-free traces). Needs observe_current.
    leak_features: bool = False
    # Time scales of that fit: 1 fits the one-sample step; 2, 3 or 4 also the steps over 4, 16 and
    # 64 samples (lif_sbi.features.lags), which carry the leak through recording noise.
    leak_scales: int = 1
    # The flow is also conditioned on the trace's spike times and the mean current before each
    # (lif_sbi.features.spike_features), which pin C_m and g_L. Needs observe_current.
    spike_features: bool = False

    def __post_init__(self):
        _require(isinstance(self.observe_current, bool), "model.observe_current", "true or false", self.observe_current)
        _require(isinstance(self.leak_features, bool) and (self.observe_current or not self.leak_features), "model.leak_features",
                 "true or false, and true only with model.observe_current = true", self.leak_features)
        _require(isinstance(self.leak_scales, int) and not isinstance(self.leak_scales, bool) and 1 <= self.leak_scales <= 4
                 and (self.leak_features or self.leak_scales == 1), "model.leak_scales",
                 "an integer in 1..4, and above 1 only with model.leak_features = true", self.leak_scales)
        _require(isinstance(self.spike_features, bool) and (self.observe_current or not self.spike_features), "model.spike_features",
                 "true or false, and true only with model.observe_current = true", self.spike_features)
        _require(self.summary_network in SUMMARY_KINDS, "model.summary_network", f"one of {', '.join(SUMMARY_KINDS)}", self.summary_network)
        _require(isinstance(self.summary_dim, int) and 1 <= self.summary_dim <= 1024, "model.summary_dim", "an integer in 1..1024", self.summary_dim)
        _require(isinstance(self.flow_depth, int) and 1 <= self.flow_depth <= 64, "model.flow_depth", "an integer in 1..64", self.flow_depth)
        _require(self.flow_transform in ("affine", "spline"), "model.flow_transform", "'affine' or 'spline'", self.flow_transform)
        _require(isinstance(self.trace_features, bool), "model.trace_features", "true or false", self.trace_features)
        _require(not self.trace_features or self.summary_network == "conv_pool", "model.trace_features",
                 "false unless model.summary_network = 'conv_pool'", self.trace_features)
        _require(isinstance(self.logit_bounds, bool), "model.logit_bounds", "true or false", self.logit_bounds)
        _require(isinstance(self.logit_margin, float) and MIN_LOGIT_MARGIN <= self.logit_margin <= 0.5, "model.logit_margin",
                 f"a number in [{MIN_LOGIT_MARGIN:g}, 0.5]", self.logit_margin)
        _require(isinstance(self.flow_dropout, float) and 0.0 <= self.flow_dropout < 1.0, "model.flow_dropout", "a number in [0, 1)", self.flow_dropout)
        _require(self.flow_subnet in FLOW_SUBNETS, "model.flow_subnet", f"one of {', '.join(FLOW_SUBNETS)}", self.flow_subnet)
        _require(isinstance(self.flow_base_df, float) and (self.flow_base_df == 0.0 or 2.0 < self.flow_base_df <= 1e6),
                 "model.flow_base_df", "0 (normal base) or a number in (2, 1e6] (Student-t degrees of freedom)", self.flow_base_df)


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 100
    batch_size: int = 64
    learning_rate: float = 1e-3  # Adam's initial learning rate
    # "plateau": multiply the rate by lr_plateau_factor after lr_plateau_patience epochs without a
    # better validation loss (the study's); "cosine": Keras' CosineDecay from learning_rate to
    # min_learning_rate over all `epochs` (lr_plateau_* unused).
    lr_schedule: str = "plateau"
    early_stopping_patience: int = 12  # epochs without a better validation loss before stopping
    lr_plateau_patience: int = 6  # epochs without improvement before the learning rate is cut
    lr_plateau_factor: float = 0.5  # the cut: new rate = factor * rate
    min_learning_rate: float = 1e-6  # floor of the plateau schedule
    seed: int = 42  # seeds the initial weights, dropout and the training noise (NumPy, torch, the Keras backend)
    # After training, fit one width factor per parameter on up to 1,000 validation traces so that
    # central posterior intervals cover their nominal share there (lif_sbi.calibration); saved as
    # calibration.json beside model.keras and applied wherever that model draws. false: the flow as trained.
    calibrate_widths: bool = False
    # Compile the training step as Keras' `compile(jit_compile=...)` does: "auto" is Keras' choice
    # (eager under torch, XLA under JAX, XLA under TensorFlow only with a GPU); true under torch is
    # torch.compile of the whole step (on a 2-core CPU about a minute of compilation per graph, then
    # 1.22-1.26x TensorFlow's default-network step; bench/RESULTS.md, "torch.compile of the whole
    # training step"), false is eager everywhere.
    jit_compile: bool | str = "auto"
    # Under torch with an eager step (jit_compile not true): record each batch shape's training and
    # validation step once, after two eager steps, and replay it from then on (lif_sbi.backends.torch,
    # _RecordedSteps): a CUDA graph on a GPU; on the CPU the aten program the step ran (torch.fx),
    # replayed without Keras' Python around it. The same operations on the same variables;
    # dropout masks then come from PyTorch's generator. CPU steps with a GRU stay eager (its fused
    # kernel runs outside PyTorch's dispatcher). No effect under TensorFlow and JAX, whose steps
    # are compiled already.
    record_steps: bool = True
    # With record_steps, under torch on the CPU: once a training batch shape has been replayed 200
    # times, compile its recorded program with inductor (torch.compile of the aten program: fused
    # C++ loops) and run that from then on: the default network's step 0.6-0.75x the replay's,
    # after 20-40 s of compilation the first time (~5 s once inductor's on-disk cache holds it);
    # the same step within float32 round-off, not bit for bit. Needs a C++ compiler; where
    # compiling fails the replay goes on, with a warning. Runs too short to replay a shape 200
    # times (the `ci` configuration) never compile. No effect on a GPU or under TensorFlow and JAX.
    compile_steps: bool = True
    # Start from these weights instead of the backend's random initialisation: the
    # `initial.weights.npz` an earlier run of the same model configuration wrote (every run saves
    # the weights it started from; its checkpoints' `.weights.npz` files also fit). Keras draws
    # initial weights from each backend's own random stream, so one `seed` gives different networks
    # under torch, TensorFlow and JAX; with this, two backends train from the same start
    # (lif_sbi.parity, level 2). "" = random from `seed`.
    initial_weights: str = ""

    def __post_init__(self):
        _require(isinstance(self.epochs, int) and self.epochs >= 1, "training.epochs", "an integer >= 1", self.epochs)
        _require(isinstance(self.batch_size, int) and 1 <= self.batch_size <= 65536, "training.batch_size", "an integer in 1..65536", self.batch_size)
        _require(isinstance(self.learning_rate, float) and 0 < self.learning_rate < 1, "training.learning_rate", "a number in (0, 1)", self.learning_rate)
        _require(self.lr_schedule in LR_SCHEDULES, "training.lr_schedule", " or ".join(map(repr, LR_SCHEDULES)), self.lr_schedule)
        for name in ("early_stopping_patience", "lr_plateau_patience"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value >= 1, f"training.{name}", "an integer >= 1", value)
        _require(isinstance(self.lr_plateau_factor, float) and 0 < self.lr_plateau_factor < 1, "training.lr_plateau_factor", "a number in (0, 1)", self.lr_plateau_factor)
        _require(
            isinstance(self.min_learning_rate, float) and 0 <= self.min_learning_rate <= self.learning_rate,
            "training.min_learning_rate",
            "a number in [0, training.learning_rate]",
            self.min_learning_rate,
        )
        _require(isinstance(self.seed, int) and self.seed >= 0, "training.seed", "a non-negative integer", self.seed)
        _require(isinstance(self.calibrate_widths, bool), "training.calibrate_widths", "true or false", self.calibrate_widths)
        _require(self.jit_compile in (True, False, "auto") and type(self.jit_compile) in (bool, str),
                 "training.jit_compile", 'true, false or "auto"', self.jit_compile)
        _require(isinstance(self.record_steps, bool), "training.record_steps", "true or false", self.record_steps)
        _require(isinstance(self.compile_steps, bool), "training.compile_steps", "true or false", self.compile_steps)
        _require(isinstance(self.initial_weights, str) and (self.initial_weights == "" or self.initial_weights.endswith(".weights.npz")),
                 "training.initial_weights", 'a .weights.npz file a run wrote (results/<run_id>/initial.weights.npz) or "" (random from training.seed)',
                 self.initial_weights)


@dataclass(frozen=True)
class DiagnosticsConfig:
    n_test: int = 400  # fresh test traces, simulated independently of the training data
    n_draws: int = 1000  # posterior draws per test trace
    n_ppc: int = 6  # test traces shown in the posterior-predictive check
    seed: int = 2024  # seed of the test traces
    validity_traces: int = 1000  # held-out traces of the validity check (lif_sbi.validity): fitted on 2x, thresholds on 1x, false alarms on 1x

    def __post_init__(self):
        _require(isinstance(self.n_test, int) and self.n_test >= 10, "diagnostics.n_test", "an integer >= 10", self.n_test)
        _require(isinstance(self.n_draws, int) and self.n_draws >= 10, "diagnostics.n_draws", "an integer >= 10", self.n_draws)
        _require(isinstance(self.n_ppc, int) and 1 <= self.n_ppc <= self.n_test, "diagnostics.n_ppc", "an integer in 1..diagnostics.n_test", self.n_ppc)
        _require(isinstance(self.seed, int) and self.seed >= 0, "diagnostics.seed", "a non-negative integer", self.seed)
        _require(isinstance(self.validity_traces, int) and self.validity_traces >= 50, "diagnostics.validity_traces",
                 "an integer >= 50", self.validity_traces)


@dataclass(frozen=True)
class Config:
    name: str = "default"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    stimulus: StimulusConfig = field(default_factory=StimulusConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)

    def __post_init__(self):
        _require(
            isinstance(self.name, str) and self.name.replace("_", "").replace("-", "").isalnum(),
            "name",
            "letters, digits, '-' and '_'",
            self.name,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """The resolved configuration as TOML, loadable with `load_config`."""
        d = self.to_dict()
        lines = [f"name = {_toml_value(d.pop('name'))}", f"description = {_toml_value(d.pop('description'))}"]
        for section, values in d.items():
            lines += ["", f"[{section}]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        return "\n".join(lines) + "\n"


SECTIONS = {"data": DataConfig, "stimulus": StimulusConfig, "noise": NoiseConfig, "prior": PriorConfig, "model": ModelConfig, "training": TrainingConfig, "diagnostics": DiagnosticsConfig}


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check a TOML value against a field's type; ints are accepted where floats are meant, and a
    list of strings where a tuple of them is."""
    if getattr(annotation, "__origin__", None) is tuple and annotation.__args__[0] is float:
        if not isinstance(value, (list, tuple)) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
            raise ConfigError(f"{key} = {value!r} has the wrong type: expected a list of numbers")
        return tuple(float(x) for x in value)
    if getattr(annotation, "__origin__", None) is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(x, str) for x in value):
            raise ConfigError(f"{key} = {value!r} has the wrong type: expected a list of strings")
        return tuple(value)
    expected = {"int": int, "float": float, "str": str, "bool": bool}.get(getattr(annotation, "__name__", str(annotation)), None)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is not None and (not isinstance(value, expected) or (expected is int and isinstance(value, bool))):
        raise ConfigError(f"{key} = {value!r} has the wrong type: expected {expected.__name__}")
    return value


def from_dict(d: dict, *, source: str = "configuration") -> Config:
    """Build a validated Config; unknown sections or keys are errors."""
    d = dict(d)
    top = {}
    for key in ("name", "description"):
        if key in d:
            top[key] = _coerce(key, d.pop(key), str)
    _check_keys(d, source)
    sections = {}
    for section, values in d.items():
        cls = SECTIONS[section]
        hints = get_type_hints(cls)
        sections[section] = cls(**{key: _coerce(f"{section}.{key}", value, hints[key]) for key, value in values.items()})
    return Config(**top, **sections)


def _check_keys(d: dict, source: str) -> None:
    """ConfigError, naming `source`, for a section or key of `d` that no configuration has
    ("name" and "description" aside)."""
    for section, values in d.items():
        if section in ("name", "description"):
            continue
        if section not in SECTIONS:
            allowed = ", ".join(["name", "description", *SECTIONS])
            raise ConfigError(f"unknown key '{section}' in {source}: allowed top-level keys are {allowed}")
        if not isinstance(values, dict):
            raise ConfigError(f"'{section}' in {source} must be a table of keys, got {values!r}")
        names = [f.name for f in fields(SECTIONS[section])]
        for key in values:
            if key not in names:
                raise ConfigError(f"unknown key '{section}.{key}' in {source}: allowed keys in [{section}] are {', '.join(names)}")


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> dict:
    """'section.key=value' → {'section': {'key': value}}; value parsed as TOML, else a string."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r} is malformed: expected section.key=value, e.g. training.epochs=20")
    path, raw = text.split("=", 1)
    parts = path.strip().split(".")
    if not all(parts) or len(parts) > 2:
        raise ConfigError(f"--set {text!r} is malformed: expected section.key=value, e.g. training.epochs=20")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    out: dict = value
    for part in reversed(parts):
        out = {part: out}
    return out


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def resolved(config: Config) -> Config:
    """The configuration as a run saves it in config.toml: data.device "auto" replaced by the device used."""
    from .simulator import resolve_device

    return dataclasses.replace(config, data=dataclasses.replace(config.data, device=resolve_device(config.data.device)))


def load_config(name_or_path: str = "default", overrides: list[str] = ()) -> Config:
    """Load configs/<name>.toml (or a path to a .toml file) and apply `section.key=value` overrides."""
    path = Path(name_or_path)
    if not (path.suffix == ".toml" or path.exists()):
        path = CONFIG_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise ConfigError(f"unknown configuration {name_or_path!r}: expected one of {', '.join(available_configs())} or a path to a .toml file")
    if not path.is_file():
        raise ConfigError(f"configuration file {str(path)!r} does not exist")
    try:
        d = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"configuration file {str(path)!r} is not valid TOML: {exc}") from None
    d.setdefault("name", path.stem)
    for text in overrides:
        override = parse_override(text)
        _check_keys(override, source=f"--set {text!r}")  # an unknown key is blamed on --set, not the file
        d = _deep_merge(d, override)
    return from_dict(d, source=str(path))
