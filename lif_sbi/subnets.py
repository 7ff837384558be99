"""The coupling flow's subnet as one Keras layer: BayesFlow's coupling MLP without its sublayers."""

from __future__ import annotations

from collections.abc import Sequence

import keras

__all__ = ["CouplingMLP"]


@keras.saving.register_keras_serializable(package="lif_sbi")
class CouplingMLP(keras.layers.Layer):
    """Dense -> activation -> dropout per hidden width, as one layer; input (..., d), output (..., widths[-1]).

    The same function, parameters and initialisers as ``bayesflow.networks.MLP`` with BayesFlow's
    coupling defaults (``COUPLING_MLP_DEFAULTS``: widths (128, 128), hard_silu, orthogonal kernels,
    zero biases, no residual, no norm, dropout 0.05); passed to ``CouplingFlow(subnet=CouplingMLP)``.

    Written by hand because of where PyTorch's time goes: BayesFlow's MLP is seven nested Keras
    layers per subnet (MLP, two DenseBlocks, two Dense, two Activation), and a Keras
    ``Layer.__call__`` costs a fixed Python overhead that TensorFlow pays once, when it traces its
    graph, but eager PyTorch pays on every call. With 12 subnets per flow that is about 70 calls per
    forward pass. Here each subnet is one call on the same number of weights (bench/RESULTS.md,
    "Coupling subnet"). Residual connections and normalisation are not supported (the coupling
    defaults use neither).
    """

    def __init__(
        self,
        widths: Sequence[int] = (128, 128),
        *,
        activation: str = "hard_silu",
        kernel_initializer="orthogonal",
        dropout: float | None = 0.05,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if len(widths) == 0:
            raise ValueError("CouplingMLP needs at least one hidden width")
        self.widths = tuple(int(w) for w in widths)
        self.activation = keras.activations.get(activation)
        self._activation_name = activation
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.dropout = float(dropout or 0.0)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if self.dropout > 0 else None
        self.kernels, self.biases = [], []

    def build(self, input_shape):
        d = int(input_shape[-1])
        for i, w in enumerate(self.widths):
            # one initializer object per kernel, as keras.layers.Dense clones its own
            init = self.kernel_initializer.__class__.from_config(self.kernel_initializer.get_config())
            self.kernels.append(self.add_weight(shape=(d, w), initializer=init, name=f"kernel_{i}"))
            self.biases.append(self.add_weight(shape=(w,), initializer="zeros", name=f"bias_{i}"))
            d = w

    def call(self, x, training=False):
        h = x
        for kernel, bias in zip(self.kernels, self.biases):
            h = self.activation(keras.ops.matmul(h, kernel) + bias)
            if training and self.dropout > 0:
                h = keras.random.dropout(h, self.dropout, seed=self.seed_generator)
        return h

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.widths[-1],)

    def get_config(self):
        return super().get_config() | {
            "widths": list(self.widths),
            "activation": self._activation_name,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "dropout": self.dropout,
            "seed": self.seed,
        }
