"""Training and validation steps under torch: eager steps recorded once per batch shape and replayed.

``prepare_training`` and ``train_step_function`` set a model's steps up: eager steps recorded and
replayed (``_RecordedSteps``: CUDA graphs on a GPU, ``_CudaGraphSteps``; traced aten programs on
the CPU, compiled by inductor once replayed often, ``_TracedSteps``), Keras' Adam on flat buffers
(``adam``), or torch.compile of the whole step where the model is compiled with ``jit_compile``.
The recorders are written here because neither Keras nor BayesFlow offers them: Keras' torch
trainer runs the step eagerly or under torch.compile, which first has dynamo trace Keras' and
BayesFlow's Python (over 100 s for this project's step, bench/RESULTS.md, "torch.compile with
GRUs"). An eager step is mostly that Python: on an H100 about 65-90 ms against 3-14 ms of GPU
work; on the 2-core CPU about half of the default network's step. Recording a step costs about
one eager step; a replay then runs only the recorded PyTorch operations.
"""

from __future__ import annotations

import time
import warnings

import keras
import torch

from .._common import training_step_kind as _compiled_or_eager
from .adam import FLAT_ADAM, _adam_on_flat_buffers
from .dispatch import _CPU_GRU_CALLS, _HostReads, _capturable_constants


def prepare_training(model, *, record_steps: bool = True, compile_steps: bool = True, state: dict | None = None) -> None:
    """Before the first training step (``fit`` or ``train_step_function``).

    Eager steps (the model not compiled with ``jit_compile``): Keras' Adam updates the weights
    from three flat buffers (``_adam_on_flat_buffers``: the same numbers, in a few operations
    instead of a few per weight tensor); with ``record_steps``, Keras'
    ``train_function`` and ``test_function`` record each batch shape's step once and replay it
    (``_recorded_steps``: CUDA graphs on a GPU, traced aten programs on the CPU); with
    ``compile_steps`` too, on the CPU a training shape replayed ``_TracedSteps.COMPILE_AFTER``
    times is compiled by inductor from then on.

    ``jit_compile=True``: build the optimizer, give every trainable variable a zero gradient
    buffer, and turn off dynamo's automatic dynamic shapes (for the whole process: later
    torch.compile calls, such as the CUDA simulator's, also compile one static graph per input
    shape). torch.compile guards on the state it traced. The first step otherwise runs with no
    optimizer variables (created inside the traced step: one recompilation per new shape) and with
    ``.grad is None`` (later steps have gradients: a second full compilation, ~40 s on a 2-core
    CPU). The buffers change nothing numerically: each step zeroes the gradients before its
    backward pass.

    ``state``: what ``training_state`` returned when the run was checkpointed, so a resumed run's
    steps are recorded and compiled at the same steps as they were in the uninterrupted run.
    """
    if not model.jit_compile:
        _adam_on_flat_buffers(model)
        if record_steps:
            model.train_function = _recorded_steps(model, training=True, compile_steps=compile_steps)
            model.test_function = _recorded_steps(model, training=False)
            for kind, steps in (("train", model.train_function), ("test", model.test_function)):
                steps.restore((state or {}).get(kind, {}))
        return
    # A partial last batch would otherwise make dynamo recompile the step with a symbolic batch
    # size, and Keras' convert_to_tensor breaks the graph on symbolic sizes (half the step then
    # runs eager). Static shapes: one compilation per distinct batch size instead.
    torch._dynamo.config.automatic_dynamic_shapes = False
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    for variable in model.trainable_variables:
        parameter = variable.value  # the torch Parameter behind the Keras variable
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)


def train_step_function(model, *, record_steps: bool = True, compile_steps: bool = True):
    """One optimizer step as ``model.fit`` runs it under torch: eager, recorded once per batch shape
    and replayed (``record_steps``; see ``_RecordedSteps``; on the CPU compiled by inductor once
    replayed ``_TracedSteps.COMPILE_AFTER`` times, with ``compile_steps``), or ``torch.compile`` of
    the whole step where the model was compiled with ``jit_compile=True`` (Keras' torch trainer
    does the same; the first call compiles)."""

    def step(batch):
        return model.train_step(batch)

    if not model.jit_compile:
        _adam_on_flat_buffers(model)
        if record_steps:
            recorded = _recorded_steps(model, training=True, compile_steps=compile_steps)
            return lambda batch: recorded([batch])
        return step
    prepare_training(model)
    return torch.compile(step)


def training_state(model) -> dict:
    """The step recorders' counters (steps seen and replayed per batch shape), for a checkpoint;
    empty where the steps are not recorded."""
    return {kind: steps.state() for kind, steps in (("train", getattr(model, "train_function", None)),
                                                     ("test", getattr(model, "test_function", None)))
            if isinstance(steps, _RecordedSteps)}


def training_step_kind(model) -> str:
    """How ``fit`` runs the model's training step: "compiled (jit_compile)", "eager", or eager steps
    recorded and replayed (with how many batch shapes were recorded, once it has run); and whether
    Adam updates flat buffers (``_adam_on_flat_buffers``)."""
    steps = getattr(model, "train_function", None)
    kind = steps.describe() if isinstance(steps, _RecordedSteps) else _compiled_or_eager(model)
    if getattr(getattr(model, "optimizer", None), FLAT_ADAM, None) is not None:
        kind += "; Adam on flat buffers"
    return kind


def _recorded_steps(model, *, training: bool, compile_steps: bool = False) -> _RecordedSteps:
    """The recorder for the device Keras computes on (its default device, or a ``keras.device`` scope);
    ``compile_steps``: on the CPU, compile training shapes replayed often (``_TracedSteps``)."""
    if keras.ops.zeros(()).device.type == "cuda":
        return _CudaGraphSteps(model, training=training)  # a CUDA graph's replay is a few launches already
    return _TracedSteps(model, training=training, compile_steps=compile_steps)


class _RecordedSteps:
    """Keras' ``train_function`` (or ``test_function``) for eager torch steps: for each input shape,
    the first ``WARMUP`` steps run eagerly, the next one is recorded (``_record``, by the
    subclass: a CUDA graph, or a traced aten program) while it runs or just before, and every later
    one replays the record on the new batch.

    What makes a replay the same step as an eager one:
    - Every Keras variable (weights, optimizer moments and iteration count, learning rate,
      BayesFlow's standardisation moments, the metrics' totals) is assigned in place (``copy_``), so
      the record reads and writes the variables' own storage: what ``fit``'s callbacks change between
      steps (ReduceLROnPlateau's learning rate, ``reset_metrics``) and weights loaded from a file
      are what the next replay uses.
    - The step is BayesFlow's own ``train_step``/``test_step``, metrics update included, recorded whole.
    - Python numbers that Keras turns into tensors are constants of the record, as they are of a
      ``tf.function`` or ``jax.jit`` trace.
    - Dropout draws from PyTorch's generator at every replay, seeded by ``set_seed``; on a GPU the
      CUDA graph advances it its own way, so the masks differ from an eager step's, as under
      torch.compile (bench/RESULTS.md, "A finding about dropout").
    The last eager step before a shape's recording is watched (``_HostReads``): a step that reads
    a tensor's value into Python is not recorded, since the record would freeze the value read.
    If a shape cannot be recorded (that, or what the subclass finds), its steps stay eager and
    ``describe`` says why; an unexpected CUDA capture failure also warns once.
    """

    WARMUP = 2  # eager steps per input shape before it is recorded
    kind = ""  # what a record is, for ``describe``

    def __init__(self, model, *, training: bool):
        self._model = model
        self._training = training
        # shape key (the repr of (name, shape, dtype) per input, stable across processes) -> ...
        self._calls: dict[str, int] = {}  # ... its steps so far, in this run (all its starts)
        self._records: dict[str, object] = {}  # ... the subclass's record
        self._failed: dict[str, str] = {}  # ... why it was not recorded

    def state(self) -> dict:
        """The counters that decide how each shape's next step runs (eager, recorded, replayed,
        compiled): its steps so far, as JSON."""
        return {"calls": dict(self._calls)}

    def restore(self, state: dict) -> None:
        """Put back counters saved by ``state`` (a resumed run): a shape's next step runs as the
        uninterrupted run's would have (one past the warm-up is recorded at once, and stands for
        the replay it would have been)."""
        self._calls.update(state.get("calls", {}))

    def describe(self) -> str:
        text = f"eager, recorded once per batch shape and replayed as {self.kind}"
        if self._records or self._failed:
            n = len(self._records)
            text += f" ({n} batch shape{'s' if n != 1 else ''} recorded"
            text += "".join(f"; one not, its steps eager: {why}" for why in sorted(set(self._failed.values()))) + ")"
        return text

    def _step(self, batch):
        if self._training:
            return self._model.train_step(batch)
        with torch.no_grad():  # as Keras' torch trainer runs test steps
            return self._model.test_step(batch)

    def __call__(self, data):
        batch = data[0]  # Keras' trainer passes a one-element sequence holding the batch dict
        if not isinstance(batch, dict) or not all(hasattr(v, "shape") for v in batch.values()):
            return self._step(batch)
        tensors = {k: keras.ops.convert_to_tensor(v) for k, v in batch.items()}
        key = repr(tuple(sorted((k, tuple(t.shape), str(t.dtype)) for k, t in tensors.items())))
        self._key = key  # for the subclass's _record and _replay
        seen = self._calls.get(key, 0)
        self._calls[key] = seen + 1
        if key in self._records:
            return self._replay(self._records[key], tensors)
        if seen < self.WARMUP or key in self._failed:
            if seen == self.WARMUP - 1 and key not in self._failed:
                # the last eager step before the recording, watched for reads of tensor values
                # into Python: a record would freeze the value read (SGD hands PyTorch its learning
                # rate as a Python number), and a CUDA graph capture fails on the synchronisation
                with _HostReads() as reads:
                    outputs = self._eager(tensors)
                if reads.names:
                    self._failed[key] = f"the step reads tensor values into Python ({', '.join(sorted(reads.names))})"
                return outputs
            return self._eager(tensors)
        outputs, record, why_not = self._record(tensors)
        if record is None:
            self._failed[key] = why_not
        else:
            self._records[key] = record
        return outputs

    def _eager(self, tensors):
        return self._step(tensors)

    def _record(self, tensors):
        """Run this batch's step and record it: (the step's metrics, the record or None, why not)."""
        raise NotImplementedError

    def _replay(self, record, tensors):
        raise NotImplementedError


class _CudaGraphSteps(_RecordedSteps):
    """On a CUDA device: the recorded step is a CUDA graph (``torch.cuda.graph``). Warm-up steps run
    on a side stream, as PyTorch's CUDA graph notes ask. A replay copies the batch into the
    captured input buffers and launches the recorded kernels; it returns copies of the metrics, so
    a caller may keep them past the next step. During the capture, Python numbers are made by
    kernels (``_capturable_constants``): a capture cannot copy host memory."""

    kind = "CUDA graphs"

    def __init__(self, model, *, training: bool):
        super().__init__(model, training=training)
        self._side_stream = None

    def _eager(self, tensors):
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream()
        stream = self._side_stream
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            outputs = self._step(tensors)
        torch.cuda.current_stream().wait_stream(stream)
        return outputs

    def _record(self, tensors):
        inputs = {k: t.clone() for k, t in tensors.items()}
        graph = torch.cuda.CUDAGraph()
        try:
            with _capturable_constants(), torch.cuda.graph(graph):
                outputs = self._step(inputs)
        except Exception as exc:  # noqa: BLE001 - any capture error: this shape stays eager, said once
            why = _one_line(exc, 300)
            warnings.warn(f"lif_sbi: CUDA graph capture of the {'training' if self._training else 'validation'} step failed, "
                          f"so steps of this batch shape stay eager ({why})", RuntimeWarning, stacklevel=3)
            torch.cuda.synchronize()
            return self._eager(tensors), None, why
        record = (graph, inputs, outputs)
        return self._replay(record, tensors), record, ""  # the capture recorded the step without running it

    def _replay(self, record, tensors):
        graph, inputs, outputs = record
        for k, t in tensors.items():
            inputs[k].copy_(t)
        graph.replay()
        return {k: v.clone() for k, v in outputs.items()}


class _TracedSteps(_RecordedSteps):
    """On the CPU: the recorded step is the aten program the step ran, traced by ``make_fx``
    (torch.fx, the tracer behind AOTAutograd) on real tensors, forward, backward and optimizer
    update together. The trace runs the step itself; a replay calls the traced operations in
    order, without Keras' and BayesFlow's Python. The Keras variables are the same tensor objects
    in the program, updated in place. Not recorded (the step stays eager): a step with a GRU, whose
    fused CPU kernel and side-by-side threads run outside PyTorch's dispatcher, so a trace would
    see their results as constants, and a step that reads a tensor's value into Python (the value
    would be frozen into the program; the warm-up watch finds most, make_fx refuses the rest, and
    then the variables are restored before the step runs eagerly).

    With ``compile_steps``, a training shape replayed ``COMPILE_AFTER`` times is then compiled:
    ``torch.compile`` of its traced program with inductor (dynamo reads the program's aten calls,
    inductor fuses them into C++ loops), the variables still the program's own tensors, updated in
    place. The same step within float32 round-off, not bit for bit (fused loops sum in another
    order). Dropout keeps PyTorch's generator (``fallback_random``). The first compilation of a
    program costs 20-40 s on a 2-core CPU, ~5 s once inductor's on-disk cache holds it; a
    compilation that fails (no C++ compiler, say) leaves the shape replayed, with a warning.
    Validation steps are not compiled: forward passes only, a few per epoch."""

    kind = "traced aten programs"
    # Replays of a training shape before it is compiled: the default run has ~590 steps of its main
    # shape per epoch, 3,560 in all, each ~10 ms quicker compiled (bench/RESULTS.md, "Recorded
    # steps compiled by inductor"), so compiling after 200 pays; a partial last batch (one per
    # epoch) and the `ci` configuration (8 steps per epoch) never get there.
    COMPILE_AFTER = 200

    def __init__(self, model, *, training: bool, compile_steps: bool = False):
        super().__init__(model, training=training)
        self._compile = compile_steps and training
        self._compiled: dict[str, object] = {}  # shape key -> its compiled program, or None where compiling failed
        self._compile_notes: list[str] = []  # for describe

    def _compiles_now(self) -> bool:
        """Whether the current step of its shape runs compiled: the shape's replays (its steps
        past the warm-up and the recording, resumed runs' included) exceed COMPILE_AFTER."""
        key = self._key
        return self._compile and key not in self._compiled and self._calls[key] - 1 - self.WARMUP > self.COMPILE_AFTER

    def describe(self) -> str:
        text = super().describe()
        return text + "".join(f"; {note}" for note in self._compile_notes)

    def _snapshot(self):
        """Copies of every Keras variable's value and of PyTorch's random state, and a function that
        puts them back (after a trace or a compiled call that stopped half-way)."""
        variables = list({id(v): v for v in (*self._model.variables, *self._model.optimizer.variables,
                                             *self._model.metrics_variables)}.values())
        saved = [v.value.detach().clone() for v in variables]
        rng = torch.get_rng_state()

        def restore():
            with torch.no_grad():
                for variable, value in zip(variables, saved):
                    variable.value.copy_(value)
            torch.set_rng_state(rng)

        return restore

    def _record(self, tensors):
        from torch.fx.experimental.proxy_tensor import make_fx

        keys = sorted(tensors)
        ran = {}

        def step(*values):
            ran["outputs"] = self._step(dict(zip(keys, values)))
            return ran["outputs"]

        # A trace that stops half-way (an operation make_fx refuses, such as reading a traced value
        # into Python where the warm-up step did not) has already run part of the step for real:
        # put every variable and the random state back, then run the step eagerly.
        restore = self._snapshot()
        calls = _CPU_GRU_CALLS["n"]
        try:
            program = make_fx(step, tracing_mode="real")(*[tensors[k] for k in keys])
        except Exception as exc:  # noqa: BLE001 - whatever stops the trace: this shape stays eager
            restore()
            return self._eager(tensors), None, f"the step cannot be traced ({_one_line(exc, 160)})"
        outputs = {k: v.detach() for k, v in ran["outputs"].items()}
        if _CPU_GRU_CALLS["n"] != calls:
            return outputs, None, "a GRU on the CPU runs outside PyTorch's dispatcher"
        if self._compiles_now():
            # a resumed run whose shape was compiled before the checkpoint: this step too runs
            # compiled, as it did in the uninterrupted run (the trace's own step is undone)
            restore()
            return self._compile_and_run(program, [tensors[k] for k in keys]), (program, keys), ""
        return outputs, (program, keys), ""  # (a host read would have stopped make_fx: it refuses them)

    def _replay(self, record, tensors):
        program, keys = record
        args = [tensors[k] for k in keys]
        if self._compiles_now():
            return self._compile_and_run(program, args)
        compiled = self._compiled.get(self._key)
        with torch.no_grad():
            return (program if compiled is None else compiled)(*args)

    def _compile_and_run(self, program, args):
        """Compile ``program`` (torch.compile is lazy: its first call compiles, then runs this step)
        and keep it for this shape; where that fails, put the variables back, warn, and replay."""
        restore = self._snapshot()
        t0 = time.perf_counter()
        compiled = torch.compile(program, backend="inductor", fullgraph=True, dynamic=False, options={"fallback_random": True})
        try:
            with torch.no_grad():
                outputs = compiled(*args)
        except Exception as exc:  # noqa: BLE001 - whatever stops the compilation: this shape is replayed
            restore()
            self._compiled[self._key] = None
            why = _one_line(exc, 200)
            self._compile_notes.append(f"compiling one failed, replayed instead ({why})")
            warnings.warn(f"lif_sbi: compiling a recorded training step with inductor failed; its steps are replayed "
                          f"uncompiled ({why})", RuntimeWarning, stacklevel=2)
            with torch.no_grad():
                return program(*args)
        self._compiled[self._key] = compiled
        self._compile_notes.append(f"one compiled by inductor after {self.COMPILE_AFTER} replays "
                                   f"({time.perf_counter() - t0:.1f} s, its first step included)")
        return outputs


def _one_line(exc: Exception, limit: int) -> str:
    """An exception as one line for a warning or the run's report: its type, then at most ``limit``
    characters of its message with the whitespace collapsed."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:limit]}"
