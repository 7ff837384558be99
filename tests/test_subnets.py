"""lif_sbi.subnets: CouplingMLP computes BayesFlow's coupling MLP, initialises and saves like it."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from bayesflow.networks import MLP
from bayesflow.networks.defaults import COUPLING_MLP_DEFAULTS

from lif_sbi.estimator import subnet_arguments
from lif_sbi.subnets import CouplingMLP

IN_DIM = 19  # e.g. 3 flow dimensions + 16 summary values


def _pair(dropout=0.0, seed=3):
    """A BayesFlow coupling MLP and a CouplingMLP with the same weights, both built on (., IN_DIM)."""
    keras.utils.set_random_seed(seed)
    reference = MLP(**(dict(COUPLING_MLP_DEFAULTS) | {"dropout": dropout}))
    reference.build((None, IN_DIM))
    fused = CouplingMLP(**subnet_arguments("fused", dropout)["subnet_kwargs"])
    fused.build((None, IN_DIM))
    # BayesFlow's MLP: blocks[i].dense.{kernel, bias}; CouplingMLP: kernel_i, bias_i
    weights = []
    for block in reference.blocks:
        weights += [block.dense.kernel, block.dense.bias]
    fused.set_weights([keras.ops.convert_to_numpy(w) for w in weights])
    return reference, fused


def test_subnet_arguments_follow_bayesflow_defaults():
    mlp = subnet_arguments("mlp", 0.0)
    assert mlp == {"subnet": "mlp", "subnet_kwargs": {"dropout": 0.0}}
    fused = subnet_arguments("fused", 0.1)
    assert fused["subnet"] is CouplingMLP
    expected = {k: v for k, v in COUPLING_MLP_DEFAULTS.items() if k not in ("residual", "norm")} | {"dropout": 0.1}
    assert fused["subnet_kwargs"] == expected


def test_same_function_as_bayesflow_mlp():
    reference, fused = _pair()
    x = np.random.default_rng(0).normal(size=(64, IN_DIM)).astype("float32")
    a = keras.ops.convert_to_numpy(reference(x, training=True))
    b = keras.ops.convert_to_numpy(fused(x, training=True))
    assert a.shape == b.shape == (64, 128)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert fused.compute_output_shape((None, IN_DIM)) == (None, 128)


def test_initialisation_is_bayesflows():
    keras.utils.set_random_seed(0)
    fused = CouplingMLP()
    fused.build((None, 128))
    k0, b0, k1, b1 = [keras.ops.convert_to_numpy(w) for w in fused.get_weights()]
    # orthogonal kernels (square here), zero biases, two different kernels
    np.testing.assert_allclose(k0.T @ k0, np.eye(128), atol=1e-4)
    np.testing.assert_allclose(k1.T @ k1, np.eye(128), atol=1e-4)
    assert not np.allclose(k0, k1)
    assert not b0.any() and not b1.any()


def test_dropout_only_in_training():
    keras.utils.set_random_seed(1)
    fused = CouplingMLP(dropout=0.5)
    x = np.ones((32, IN_DIM), "float32")
    eval_a = keras.ops.convert_to_numpy(fused(x, training=False))
    eval_b = keras.ops.convert_to_numpy(fused(x, training=False))
    np.testing.assert_array_equal(eval_a, eval_b)
    train = keras.ops.convert_to_numpy(fused(x, training=True))
    assert not np.allclose(train, eval_a)


def test_rejects_no_widths():
    with pytest.raises(ValueError, match="at least one hidden width"):
        CouplingMLP(widths=())


def test_approximator_with_fused_subnet_saves_and_loads(tmp_path):
    """A whole estimator with flow_subnet = "fused" round-trips through model.keras."""
    from lif_sbi.config import ModelConfig
    from lif_sbi.dataset import simulate_dataset
    from lif_sbi.estimator import build_approximator, load_approximator

    keras.utils.set_random_seed(2)
    approximator = build_approximator(ModelConfig(summary_network="conv_pool", flow_depth=2, flow_subnet="fused"))
    data = simulate_dataset(16, 5, progress=False)
    approximator.build_from_data(approximator.adapter(data))
    subnet = approximator.inference_network.invertible_layers[-1].coupling1.subnet
    assert isinstance(subnet, CouplingMLP)
    before = approximator.log_prob(data)
    path = tmp_path / "model.keras"
    approximator.save(path)
    loaded = load_approximator(path)
    assert isinstance(loaded.inference_network.invertible_layers[-1].coupling1.subnet, CouplingMLP)
    np.testing.assert_allclose(loaded.log_prob(data), before, rtol=1e-5, atol=1e-5)
