"""Summary networks for voltage traces, as backend-neutral, serializable Keras 3 layers.

Every recurrent core runs on :class:`FastGRU`, a GRU layer with the weights of
``keras.layers.GRU(reset_after=True)`` whose forward pass is ``lif_sbi.backends.gru``: PyTorch's
native GRU kernel under the torch backend (Keras' own CPU fallback there is ~20x slower to train),
cuDNN or a scan loop under TensorFlow and JAX. Independent GRUs (the two directions of a
bidirectional GRU, the skip GRUs) run through ``lif_sbi.backends.gru_many``: under torch on the
CPU side by side, one thread each, as TensorFlow's graph runs them. Every convolution is this
module's :class:`Conv1D`, a ``keras.layers.Conv1D`` whose convolution is
``lif_sbi.backends.conv1d`` (torch: channels-last).

Summary networks (all subclass ``bayesflow.networks.SummaryNetwork``, input (batch, time, 1)):

- ``reference``  :class:`ReferenceSummary`, BayesFlow's ``TimeSeriesNetwork`` with its defaults
  (Conv1D 32 mish -> skip-recurrent bidirectional GRU 128 -> Dense 16), on FastGRU.
- ``conv_gru``   :class:`ConvGRUSummary`, strided Conv1D blocks shorten the 501-step trace to 63
  steps, then a small bidirectional FastGRU plus global pooling.
- ``conv_pool``  :class:`ConvPoolSummary`, strided Conv1D blocks and global pooling, no recurrence:
  the default (``DEFAULT_SUMMARY_KIND``), chosen by measured step time and recovery, see
  bench/RESULTS.md, section "Why `default` uses conv_pool".

Build one from a configuration string with :func:`build_summary_network`. Loading a saved
``.keras`` file needs only ``import lif_sbi.networks`` (the classes register themselves with Keras
under the package name ``lif_sbi``); no ``custom_objects`` are required.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from bayesflow.networks import SummaryNetwork

from lif_sbi import backends
from lif_sbi.config import SUMMARY_KINDS as CONFIG_SUMMARY_KINDS

__all__ = [
    "FastGRU",
    "Conv1D",
    "SkipRecurrent",
    "ReferenceSummary",
    "ConvGRUSummary",
    "ConvPoolSummary",
    "SUMMARY_KINDS",
    "DEFAULT_SUMMARY_KIND",
    "build_summary_network",
]

_PACKAGE = "lif_sbi"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Conv1D(keras.layers.Conv1D):
    """``keras.layers.Conv1D`` (same weights, initialisation, bias, activation and config) whose
    convolution runs on ``lif_sbi.backends.conv1d``: under torch a channels-last 2-D convolution,
    about 1.7x faster than Keras' own torch conv on the CPU; Keras' op under TensorFlow and JAX.
    channels_last data, "valid" or "same" padding, no dilation and no groups only.

    It keeps Keras' class name on purpose: Keras files address a layer's weights by its class name
    ("conv1d", "conv1d_1", ...), so models saved when the summary networks used
    ``keras.layers.Conv1D`` load into this one unchanged.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.padding not in ("valid", "same") or self.data_format != "channels_last" or self.dilation_rate != (1,) or self.groups != 1:
            raise ValueError("lif_sbi.networks.Conv1D supports channels_last data, 'valid' or 'same' padding, dilation 1 and groups 1 only; "
                             f"got padding={self.padding!r}, data_format={self.data_format!r}, "
                             f"dilation_rate={self.dilation_rate}, groups={self.groups}")

    def call(self, inputs):  # Conv1D.call with its ops.conv replaced (channels_last, no causal padding)
        outputs = backends.conv1d(inputs, self.kernel, strides=self.strides[0], padding=self.padding)
        if self.use_bias:
            outputs = keras.ops.add(outputs, self.bias)
        return outputs if self.activation is None else self.activation(outputs)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FastGRU(keras.layers.Layer):
    """A GRU layer (Keras ``reset_after=True`` semantics) on the backend's fastest kernel.

    Weights have the names and shapes of ``keras.layers.GRU``: ``kernel`` (in, 3u),
    ``recurrent_kernel`` (u, 3u), ``bias`` (2, 3u), gates in Keras order z, r, h, so
    ``fast_gru.set_weights(keras_gru.get_weights())`` copies a Keras GRU exactly.
    Activations are fixed to tanh / sigmoid (the cuDNN-compatible set); no masking, no
    recurrent dropout. ``dropout`` drops input features with one mask per sequence, as Keras'
    GRU does on its cuDNN path.
    """

    def __init__(
        self,
        units: int,
        *,
        return_sequences: bool = False,
        dropout: float = 0.0,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = int(units)
        self.return_sequences = bool(return_sequences)
        self.dropout = min(1.0, max(0.0, float(dropout)))
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.input_spec = keras.layers.InputSpec(ndim=3)

    def build(self, input_shape):
        input_dim = input_shape[-1]
        self.kernel = self.add_weight(
            shape=(input_dim, 3 * self.units), name="kernel", initializer=self.kernel_initializer
        )
        self.recurrent_kernel = self.add_weight(
            shape=(self.units, 3 * self.units), name="recurrent_kernel", initializer=self.recurrent_initializer
        )
        self.bias = self.add_weight(shape=(2, 3 * self.units), name="bias", initializer=self.bias_initializer)

    def call(self, inputs, training=False, initial_state=None):
        return backends.gru(
            self.dropped(inputs, training),
            self.kernel,
            self.recurrent_kernel,
            self.bias,
            return_sequences=self.return_sequences,
            initial_state=initial_state,
        )

    def dropped(self, inputs, training=False):
        """`inputs` (batch, time, in) with this layer's input dropout applied (when training)."""
        if training and 0.0 < self.dropout < 1.0:
            shape = keras.ops.shape(inputs)
            mask = keras.random.dropout(
                keras.ops.ones((shape[0], 1, shape[2]), dtype=inputs.dtype),
                rate=self.dropout,
                seed=self.seed_generator,
            )
            inputs = inputs * mask
        return inputs

    def compute_output_shape(self, input_shape):
        if self.return_sequences:
            return (input_shape[0], input_shape[1], self.units)
        return (input_shape[0], self.units)

    def get_config(self):
        return super().get_config() | {
            "units": self.units,
            "return_sequences": self.return_sequences,
            "dropout": self.dropout,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "recurrent_initializer": keras.initializers.serialize(self.recurrent_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "seed": self.seed,
        }


def _last_states(grus: Sequence[FastGRU], inputs: Sequence, training) -> list:
    """The last states of independent FastGRUs (return_sequences=False), one input each.

    Once the layers are built they run through ``backends.gru_many`` (under torch on the CPU: side
    by side, one thread each); the first call goes through each layer's ``__call__``, which builds
    it. Both compute the same function, dropout masks drawn in the same order.
    """
    if not all(gru.built for gru in grus):
        return [gru(x, training=training) for gru, x in zip(grus, inputs)]
    calls = [(gru.dropped(x, training), gru.kernel, gru.recurrent_kernel, gru.bias) for gru, x in zip(grus, inputs)]
    return backends.gru_many(calls, return_sequences=False)


def _bidirectional_sum(forward_last, backward_last):
    """Sum of a forward GRU's last state and the last state of a GRU over the time-reversed sequence.

    Mirrors BayesFlow's SkipRecurrentNet exactly, including its ``flip(..., axis=1)`` of the
    backward GRU's (batch, units) output, which reverses the feature order (harmless, kept so
    that weights copied from a TimeSeriesNetwork give the same outputs).
    """
    return forward_last + keras.ops.flip(backward_last, axis=1)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SkipRecurrent(keras.layers.Layer):
    """BayesFlow's ``SkipRecurrentNet`` (GRU variant) on FastGRU.

    A GRU over the sequence plus a GRU over a strided Conv1D of it (``skip_steps`` samples per
    step); bidirectional by summing forward and time-reversed GRUs. Output (batch, hidden_dim).
    Sub-layers are created in SkipRecurrentNet's order so ``get_weights()`` lists line up.
    """

    def __init__(
        self,
        hidden_dim: int = 256,
        bidirectional: bool = True,
        input_channels: int = 64,
        skip_steps: int = 4,
        dropout: float = 0.05,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.skip_conv = Conv1D(
            filters=input_channels * skip_steps,
            kernel_size=skip_steps,
            strides=skip_steps,
            padding="same",
            name="skip_conv",
        )
        if bidirectional:
            self.recurrent_forward = FastGRU(hidden_dim, dropout=dropout)
            self.recurrent_backward = FastGRU(hidden_dim, dropout=dropout)
            self.skip_recurrent_forward = FastGRU(hidden_dim, dropout=dropout)
            self.skip_recurrent_backward = FastGRU(hidden_dim, dropout=dropout)
        else:
            self.recurrent = FastGRU(hidden_dim, dropout=dropout)
            self.skip_recurrent = FastGRU(hidden_dim, dropout=dropout)
        self.hidden_dim = hidden_dim
        self.bidirectional = bidirectional
        self.input_channels = input_channels
        self.skip_steps = skip_steps
        self.dropout = dropout

    def call(self, x, training=False):
        skip = self.skip_conv(x)
        if self.bidirectional:
            grus = [self.recurrent_forward, self.recurrent_backward, self.skip_recurrent_forward, self.skip_recurrent_backward]
            flip = keras.ops.flip
            fwd, bwd, skip_fwd, skip_bwd = _last_states(grus, [x, flip(x, axis=1), skip, flip(skip, axis=1)], training)
            return _bidirectional_sum(fwd, bwd) + _bidirectional_sum(skip_fwd, skip_bwd)
        direct, skipped = _last_states([self.recurrent, self.skip_recurrent], [x, skip], training)
        return direct + skipped

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.hidden_dim)

    def get_config(self):
        return super().get_config() | {
            "hidden_dim": self.hidden_dim,
            "bidirectional": self.bidirectional,
            "input_channels": self.input_channels,
            "skip_steps": self.skip_steps,
            "dropout": self.dropout,
        }


def _as_tuple(value) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ReferenceSummary(SummaryNetwork):
    """BayesFlow's ``TimeSeriesNetwork`` (same defaults, same layers) with the GRUs on FastGRU.

    Conv1D backbone (32 filters, kernel 3, stride 1, mish, 'same') -> SkipRecurrent
    (bidirectional GRU 128 over the sequence + bidirectional GRU 128 over a stride-4 Conv1D of it,
    dropout 0.05) -> Dense(summary_dim=16). Only the GRU type is fixed (``recurrent_type`` is not
    offered: LSTM is not routed to a fast kernel). With weights copied from a TimeSeriesNetwork
    it computes the same function (tested).
    """

    def __init__(
        self,
        summary_dim: int = 16,
        filters: int | Sequence[int] = 32,
        kernel_sizes: int | Sequence[int] = 3,
        strides: int | Sequence[int] = 1,
        activation: str = "mish",
        kernel_initializer: str = "glorot_uniform",
        groups: int | None = None,
        recurrent_dim: int = 128,
        bidirectional: bool = True,
        dropout: float = 0.05,
        skip_steps: int = 4,
        **kwargs,
    ):
        super().__init__(**kwargs)
        filters, kernel_sizes, strides = _as_tuple(filters), _as_tuple(kernel_sizes), _as_tuple(strides)
        blocks = []
        for i, (f, k, s) in enumerate(zip(filters, kernel_sizes, strides)):
            blocks.append(
                Conv1D(
                    filters=f,
                    kernel_size=k,
                    strides=s,
                    activation=activation,
                    kernel_initializer=kernel_initializer,
                    padding="same",
                    name=f"conv_{i}",
                )
            )
            if groups is not None:
                blocks.append(keras.layers.GroupNormalization(groups=groups, name=f"group_norm_{i}"))
        self.conv = keras.Sequential(blocks, name="conv")
        self.recurrent = SkipRecurrent(
            hidden_dim=recurrent_dim,
            bidirectional=bidirectional,
            input_channels=filters[-1],
            skip_steps=skip_steps,
            dropout=dropout,
            name="recurrent",
        )
        self.output_projector = keras.layers.Dense(units=summary_dim, name="output_projector")
        self.summary_dim = summary_dim
        self._config = {
            "summary_dim": summary_dim,
            "filters": list(filters),
            "kernel_sizes": list(kernel_sizes),
            "strides": list(strides),
            "activation": activation,
            "kernel_initializer": kernel_initializer,
            "groups": groups,
            "recurrent_dim": recurrent_dim,
            "bidirectional": bidirectional,
            "dropout": dropout,
            "skip_steps": skip_steps,
        }

    def call(self, x, training=False, **kwargs):
        x = self.conv(x, training=training)
        x = self.recurrent(x, training=training)
        return self.output_projector(x)

    def get_config(self):
        return super().get_config() | self._config


def _pooled(h, first) -> list:
    """Global mean, max and min over time of conv features h (batch, time, c), plus the first sample."""
    return [keras.ops.mean(h, axis=1), keras.ops.amax(h, axis=1), keras.ops.amin(h, axis=1), first]


def _conv_stack(filters, kernel_sizes, strides, activation, prefix):
    return [
        Conv1D(f, k, strides=s, padding="same", activation=activation, name=f"{prefix}_{i}")
        for i, (f, k, s) in enumerate(zip(filters, kernel_sizes, strides))
    ]


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConvGRUSummary(SummaryNetwork):
    """Strided Conv1D blocks (501 -> 63 steps by default) -> bidirectional FastGRU + pooling -> Dense.

    The summary concatenates the last states of a forward and a time-reversed GRU with the global
    mean, max and min over time of the last conv features, then a mish Dense layer and a linear
    projection to ``summary_dim``. The first sample (which carries E_L exactly) is fed to the
    head as well.
    """

    def __init__(
        self,
        summary_dim: int = 16,
        filters: Sequence[int] = (32, 64, 64),
        kernel_sizes: Sequence[int] = (5, 5, 5),
        strides: Sequence[int] = (2, 2, 2),
        recurrent_dim: int = 64,
        bidirectional: bool = True,
        hidden_dim: int = 128,
        activation: str = "mish",
        dropout: float = 0.05,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.conv = keras.Sequential(_conv_stack(filters, kernel_sizes, strides, activation, "conv"), name="conv")
        self.recurrent_forward = FastGRU(recurrent_dim, dropout=dropout, name="gru_forward")
        self.recurrent_backward = FastGRU(recurrent_dim, dropout=dropout, name="gru_backward") if bidirectional else None
        self.hidden = keras.layers.Dense(hidden_dim, activation=activation, name="hidden")
        self.output_projector = keras.layers.Dense(summary_dim, name="output_projector")
        self.summary_dim = summary_dim
        self._config = {
            "summary_dim": summary_dim,
            "filters": list(filters),
            "kernel_sizes": list(kernel_sizes),
            "strides": list(strides),
            "recurrent_dim": recurrent_dim,
            "bidirectional": bidirectional,
            "hidden_dim": hidden_dim,
            "activation": activation,
            "dropout": dropout,
        }

    def call(self, x, training=False, **kwargs):
        first = x[:, 0, :]
        h = self.conv(x, training=training)
        if self.recurrent_backward is None:
            feats = _last_states([self.recurrent_forward], [h], training)
        else:
            feats = _last_states([self.recurrent_forward, self.recurrent_backward], [h, keras.ops.flip(h, axis=1)], training)
        feats += _pooled(h, first)
        return self.output_projector(self.hidden(keras.ops.concatenate(feats, axis=-1)))

    def get_config(self):
        return super().get_config() | self._config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConvPoolSummary(SummaryNetwork):
    """Strided Conv1D blocks (501 -> 32 steps by default) and global pooling; no recurrence.

    Head: global mean, max and min over time of the last conv features and the first sample,
    a mish Dense layer, a linear projection to ``summary_dim``. With ``trace_features=True`` the
    summary also passes three raw (standardised) values of the trace straight to the flow: the
    first sample (V_0 = E_L in the model), the minimum (V_res after a spike, else E_L) and the
    maximum (just below V_th when the neuron spikes), so the output has ``summary_dim + 3`` values.
    """

    def __init__(
        self,
        summary_dim: int = 16,
        filters: Sequence[int] = (32, 64, 64, 64),
        kernel_sizes: Sequence[int] = (5, 5, 5, 5),
        strides: Sequence[int] = (2, 2, 2, 2),
        hidden_dim: int = 128,
        activation: str = "mish",
        trace_features: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.conv = keras.Sequential(_conv_stack(filters, kernel_sizes, strides, activation, "conv"), name="conv")
        self.hidden = keras.layers.Dense(hidden_dim, activation=activation, name="hidden")
        self.output_projector = keras.layers.Dense(summary_dim, name="output_projector")
        self.summary_dim = summary_dim
        self.trace_features = trace_features
        self._config = {
            "summary_dim": summary_dim,
            "filters": list(filters),
            "kernel_sizes": list(kernel_sizes),
            "strides": list(strides),
            "hidden_dim": hidden_dim,
            "activation": activation,
            "trace_features": trace_features,
        }

    def call(self, x, training=False, **kwargs):
        first = x[:, 0, :]
        h = self.conv(x, training=training)
        feats = _pooled(h, first)
        out = self.output_projector(self.hidden(keras.ops.concatenate(feats, axis=-1)))
        if self.trace_features:
            out = keras.ops.concatenate([out, first, keras.ops.amin(x, axis=1), keras.ops.amax(x, axis=1)], axis=-1)
        return out

    def get_config(self):
        return super().get_config() | self._config


_KINDS = {
    "reference": ReferenceSummary,
    "conv_gru": ConvGRUSummary,
    "conv_pool": ConvPoolSummary,
}
#: the configuration strings build_summary_network accepts (declared in lif_sbi.config)
SUMMARY_KINDS: tuple[str, ...] = tuple(_KINDS)
if set(SUMMARY_KINDS) != set(CONFIG_SUMMARY_KINDS):
    raise ImportError(f"lif_sbi.config.SUMMARY_KINDS {CONFIG_SUMMARY_KINDS} and lif_sbi.networks {SUMMARY_KINDS} disagree")
#: the kind picked by measurement (bench/RESULTS.md, "Why `default` uses conv_pool")
DEFAULT_SUMMARY_KIND = "conv_pool"


def build_summary_network(kind: str = DEFAULT_SUMMARY_KIND, **kwargs) -> SummaryNetwork:
    """Build the summary network named ``kind`` (one of ``SUMMARY_KINDS``); kwargs go to its class."""
    try:
        cls = _KINDS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown summary network kind {kind!r}; allowed kinds: {', '.join(SUMMARY_KINDS)}") from None
    return cls(**kwargs)
