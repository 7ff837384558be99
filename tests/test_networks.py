"""lif_sbi.networks: the factory, shapes, equivalence to TimeSeriesNetwork, cross-backend .keras files."""

from __future__ import annotations

import importlib.util

import keras
import numpy as np
import pytest

from lif_sbi.networks import (
    DEFAULT_SUMMARY_KIND,
    SUMMARY_KINDS,
    ConvGRUSummary,
    ConvPoolSummary,
    FastGRU,
    ReferenceSummary,
    build_summary_network,
)

from backend_scripts import run_script

HAS_TF = importlib.util.find_spec("tensorflow") is not None


def test_summary_kinds():
    assert SUMMARY_KINDS == ("reference", "conv_gru", "conv_pool")
    assert DEFAULT_SUMMARY_KIND in SUMMARY_KINDS
    assert isinstance(build_summary_network("reference"), ReferenceSummary)
    assert isinstance(build_summary_network("conv_gru"), ConvGRUSummary)
    assert isinstance(build_summary_network("conv_pool"), ConvPoolSummary)
    assert isinstance(build_summary_network(), type(build_summary_network(DEFAULT_SUMMARY_KIND)))


@pytest.mark.parametrize("bad", ["gru", "", "Reference", None, 3])
def test_build_summary_network_bad_kind(bad):
    with pytest.raises(ValueError) as info:
        build_summary_network(bad)
    for kind in SUMMARY_KINDS:
        assert kind in str(info.value)


def test_kwargs_reach_the_network():
    net = build_summary_network("conv_gru", summary_dim=7, recurrent_dim=16)
    x = np.zeros((2, 501, 1), "float32")
    assert tuple(keras.ops.shape(net(x))) == (2, 7)
    assert net.get_config()["recurrent_dim"] == 16


def test_trace_features_pass_first_min_max_through_exactly():
    keras.utils.set_random_seed(1)
    net = build_summary_network("conv_pool", summary_dim=5, trace_features=True)
    x = np.random.default_rng(1).normal(size=(4, 501, 1)).astype("float32")
    y = keras.ops.convert_to_numpy(net(x))
    assert y.shape == (4, 8)
    np.testing.assert_array_equal(y[:, 5], x[:, 0, 0])
    np.testing.assert_array_equal(y[:, 6], x[:, :, 0].min(axis=1))
    np.testing.assert_array_equal(y[:, 7], x[:, :, 0].max(axis=1))
    # serialises with the option
    clone = ConvPoolSummary.from_config(net.get_config())
    assert clone.trace_features and clone.get_config()["trace_features"]


@pytest.mark.parametrize("kind", SUMMARY_KINDS)
def test_output_shape_and_finite(kind):
    keras.utils.set_random_seed(0)
    net = build_summary_network(kind)
    x = np.random.default_rng(0).normal(size=(3, 501, 1)).astype("float32")
    y = keras.ops.convert_to_numpy(net(x, training=True))
    assert y.shape == (3, 16)
    assert np.isfinite(y).all()
    y0 = keras.ops.convert_to_numpy(net(x))
    y1 = keras.ops.convert_to_numpy(net(x))
    np.testing.assert_array_equal(y0, y1)  # inference is deterministic (no dropout)
    # the config round-trips
    clone = type(net).from_config(net.get_config())
    assert clone.get_config() == net.get_config()


def test_reference_is_time_series_network():
    """With TimeSeriesNetwork's weights copied, ReferenceSummary computes the same function."""
    import bayesflow as bf

    keras.utils.set_random_seed(1)
    x = np.random.default_rng(1).normal(size=(2, 101, 1)).astype("float32")
    stock = bf.networks.TimeSeriesNetwork()
    stock.build(x.shape)
    ours = ReferenceSummary()
    ours.build(x.shape)
    assert [w.shape for w in ours.get_weights()] == [w.shape for w in stock.get_weights()]
    ours.set_weights(stock.get_weights())
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ours(x)), keras.ops.convert_to_numpy(stock(x)), rtol=1e-5, atol=1e-5
    )


@pytest.mark.torch
def test_side_by_side_grus_give_the_one_by_one_summaries():
    """Every network with independent GRUs (reference, its unidirectional variant, conv_gru)
    gives the same summaries and gradients when backends.gru_many runs them side by side on
    threads (torch, CPU, two threads) as when they run one after the other."""
    code = """
import json, keras, numpy as np, torch
torch.set_num_threads(2)
from lif_sbi import backends
from lif_sbi.backends import _common
from lif_sbi.networks import build_summary_network
side_by_side = backends.gru_many
in_turn = _common.gru_many_in_turn(backends.gru)
x = torch.from_numpy(np.random.default_rng(4).normal(size=(5, 101, 1)).astype("float32"))
out = {}
for kind, kwargs in [("reference", {}), ("reference", {"bidirectional": False}), ("conv_gru", {})]:
    keras.utils.set_random_seed(0)
    net = build_summary_network(kind, summary_dim=4, **kwargs)
    net(x)  # builds
    res = []
    for many in (in_turn, side_by_side):
        backends.gru_many = many
        with torch.enable_grad():
            y = net(x, training=False)
            grads = torch.autograd.grad(y.square().sum(), [v.value for v in net.trainable_variables])
        res.append((y.detach().numpy(), [g.numpy() for g in grads]))
    backends.gru_many = side_by_side
    (y1, g1), (y2, g2) = res
    out[f"{kind} {kwargs}"] = {"out_err": float(np.abs(y1 - y2).max()), "out_scale": float(np.abs(y1).max()),
                               "grad_err": max(float(np.abs(a - b).max() / (np.abs(a).max() + 1e-12)) for a, b in zip(g1, g2))}
from lif_sbi.backends.torch import gru_ops
out["threaded"] = bool(gru_ops._POOLS)
print(json.dumps(out))
"""
    res = run_script("torch", code)
    assert res.pop("threaded")
    assert len(res) == 3
    for case, r in res.items():
        assert r["out_err"] <= 1e-6 * max(1.0, r["out_scale"]), (case, r)
        assert r["grad_err"] < 1e-5, (case, r)


def test_fast_gru_config_roundtrip():
    layer = FastGRU(5, return_sequences=True, dropout=0.1, seed=3, name="g")
    clone = FastGRU.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


# --------------------------------------------------------------------------------------------
# .keras files saved under one backend load under the other (separate subprocesses)

SAVE = """
import json, sys, keras, numpy as np
from lif_sbi import backends
from lif_sbi.networks import SUMMARY_KINDS, build_summary_network
backends.set_seed(0)
out_dir = sys.argv[1] if len(sys.argv) > 1 else {out_dir!r}
x = np.random.default_rng(0).normal(size=(4, 501, 1)).astype("float32")
np.save(out_dir + "/x.npy", x)
for kind in SUMMARY_KINDS:
    model = keras.Sequential([keras.Input((501, 1)), build_summary_network(kind)])
    # move weights off their initial values so that loading is really tested
    for v in model.weights:
        v.assign(v + 0.01 * np.random.default_rng(1).normal(size=v.shape).astype("float32"))
    model.save(out_dir + f"/{{kind}}.keras")
    np.save(out_dir + f"/{{kind}}_y.npy", keras.ops.convert_to_numpy(model(x)))
print(json.dumps({{"backend": backends.name}}))
"""

LOAD = """
import json, keras, numpy as np
import lif_sbi.networks  # registers the lif_sbi classes with Keras
from lif_sbi import backends
from lif_sbi.networks import SUMMARY_KINDS
out_dir = {out_dir!r}
x = np.load(out_dir + "/x.npy")
errs = {{}}
for kind in SUMMARY_KINDS:
    model = keras.saving.load_model(out_dir + f"/{{kind}}.keras")
    y = keras.ops.convert_to_numpy(model(x))
    errs[kind] = float(np.abs(y - np.load(out_dir + f"/{{kind}}_y.npy")).max())
print(json.dumps({{"backend": backends.name, "errs": errs}}))
"""


@pytest.mark.torch
@pytest.mark.tensorflow
@pytest.mark.skipif(not HAS_TF, reason="tensorflow not installed")
@pytest.mark.parametrize("save_backend,load_backend", [("torch", "tensorflow"), ("tensorflow", "torch")])
def test_keras_file_loads_under_other_backend(tmp_path, save_backend, load_backend):
    assert run_script(save_backend, SAVE.format(out_dir=str(tmp_path)))["backend"] == save_backend
    res = run_script(load_backend, LOAD.format(out_dir=str(tmp_path)))
    assert res["backend"] == load_backend
    assert set(res["errs"]) == set(SUMMARY_KINDS)
    for kind, err in res["errs"].items():
        assert err < 1e-4, (kind, err)


SAVE_APPROX = """
import json, keras, numpy as np, bayesflow as bf
from lif_sbi import backends
from lif_sbi.estimator import subnet_arguments
from lif_sbi.networks import build_summary_network
backends.set_seed(0)
out_dir = {out_dir!r}
rng = np.random.default_rng(0)
data = {{"theta": rng.normal(size=(64, 6)).astype("float32"),
        "x": rng.normal(size=(64, 501, 1)).astype("float32")}}
adapter = bf.Adapter().convert_dtype("float64", "float32").rename("theta", "inference_variables").rename("x", "summary_variables")
approx = bf.ContinuousApproximator(adapter=adapter, inference_network=bf.networks.CouplingFlow(**subnet_arguments({subnet!r}, 0.05)),
    summary_network=build_summary_network({kind!r}), standardize=("inference_variables", "summary_variables"))
approx.compile(optimizer=keras.optimizers.Adam(1e-3))
step = backends.train_step_function(approx)
approx.build_from_data(approx.adapter(data))
for _ in range(2):
    step({{k: keras.ops.convert_to_tensor(v) for k, v in approx.adapter(data).items()}})
np.savez(out_dir + "/data.npz", **data)
np.save(out_dir + "/lp.npy", np.asarray(approx.log_prob(data=data)))
approx.save(out_dir + "/approx.keras")
print(json.dumps({{"backend": backends.name}}))
"""

LOAD_APPROX = """
import json, keras, numpy as np
import lif_sbi.estimator  # registers lif_sbi's layers (summary networks, coupling subnet) with Keras
from lif_sbi import backends
out_dir = {out_dir!r}
approx = keras.saving.load_model(out_dir + "/approx.keras")
data = dict(np.load(out_dir + "/data.npz"))
lp = np.asarray(approx.log_prob(data=data))
print(json.dumps({{"backend": backends.name, "err": float(np.abs(lp - np.load(out_dir + "/lp.npy")).max()),
                  "scale": float(np.abs(lp).max())}}))
"""


@pytest.mark.torch
@pytest.mark.tensorflow
@pytest.mark.skipif(not HAS_TF, reason="tensorflow not installed")
@pytest.mark.parametrize("save_backend,load_backend", [("torch", "tensorflow"), ("tensorflow", "torch")])
@pytest.mark.parametrize("subnet", [pytest.param("mlp", marks=pytest.mark.slow), "fused"])  # mlp: 70 s, the same path as fused
def test_trained_approximator_loads_under_other_backend(tmp_path, save_backend, load_backend, subnet):
    """A briefly trained CouplingFlow (either coupling subnet) + default summary net gives the same log-density after loading."""
    run_script(save_backend, SAVE_APPROX.format(out_dir=str(tmp_path), kind=DEFAULT_SUMMARY_KIND, subnet=subnet))
    res = run_script(load_backend, LOAD_APPROX.format(out_dir=str(tmp_path)))
    assert res["backend"] == load_backend
    assert res["err"] < 1e-3 * max(1.0, res["scale"]), res


@pytest.mark.torch
def test_summary_networks_trace_into_one_graph_under_torch():
    """torch.compile sees each summary network's training-mode forward pass as one graph, with no
    graph break (each break leaves part of a compiled training step eager and adds a guard check
    per step; Keras' `ops.max`/`ops.min` under torch broke it, `ops.amax`/`ops.amin` do not). The
    backward pass is derived from that graph. Dynamo only traces here, so this takes seconds, not
    a compilation."""
    code = """
import json, keras, numpy as np, torch
from lif_sbi.networks import SUMMARY_KINDS, build_summary_network
out = {}
for kind in SUMMARY_KINDS:
    keras.utils.set_random_seed(0)
    kwargs = {"trace_features": True} if kind == "conv_pool" else {}
    net = build_summary_network(kind, summary_dim=4, **kwargs)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(3, 501, 1)).astype("float32"))
    net(x)

    def forward(x):
        with torch.enable_grad():
            return net(x, training=True)

    explained = torch._dynamo.explain(forward)(x)
    out[kind] = {"graphs": explained.graph_count, "breaks": [str(b.reason)[:200] for b in explained.break_reasons]}
print(json.dumps(out))
"""
    res = run_script("torch", code)
    assert set(res) == set(SUMMARY_KINDS)
    for kind, r in res.items():
        assert r["breaks"] == [] and r["graphs"] == 1, (kind, r)


def test_conv1d_loads_weights_saved_from_keras_conv1d(tmp_path):
    """lif_sbi.networks.Conv1D keeps keras.layers.Conv1D's class name, so weight files address
    its variables the same way: models saved before the summary networks used it still load."""
    from lif_sbi.networks import Conv1D

    x = np.random.default_rng(2).normal(size=(3, 50, 1)).astype("float32")

    def stack(cls):
        keras.utils.set_random_seed(7 if cls is keras.layers.Conv1D else 8)  # different initial weights
        model = keras.Sequential([cls(8, 5, strides=2, padding="same", activation="mish"), cls(4, 3, padding="same")])
        model(x)
        return model

    old, new = stack(keras.layers.Conv1D), stack(Conv1D)
    assert not np.allclose(keras.ops.convert_to_numpy(old(x)), keras.ops.convert_to_numpy(new(x)))
    old.save_weights(str(tmp_path / "old.weights.h5"))
    new.load_weights(str(tmp_path / "old.weights.h5"))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(new(x)), keras.ops.convert_to_numpy(old(x)), rtol=1e-5, atol=1e-5)
