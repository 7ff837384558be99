"""lif_sbi.estimator: the adapter's bounded-to-unbounded map, and draws confined to the prior."""

import warnings

import numpy as np
import pytest

from lif_sbi import estimator, features
from lif_sbi.config import ModelConfig
from lif_sbi.priors import ATOMS, DISPLAY_SCALE, HIGH, LOW, in_support, sample_prior
from lif_sbi.simulator import simulate_batch


def test_adapter_maps_the_prior_to_finite_values_and_back():
    data = simulate_batch(2000, seed=11)
    adapter = estimator.make_adapter()
    fwd = adapter({"parameters": data["parameters"], "observables": data["observables"]})
    z = np.asarray(fwd["inference_variables"], dtype=np.float64)
    assert z.shape == (2000, 6) and np.isfinite(z).all()
    # The V_res atom (12 % of the prior, exactly on a bound) maps to a finite, moderate logit.
    for i, bound in ATOMS:
        on_atom = data["parameters"][:, i] == np.float32(bound)
        assert on_atom.mean() > 0.05
        assert np.all(np.abs(z[on_atom, i]) < 6)
    # Bounds in display units: the logit stays moderate everywhere inside them (no -35 outliers).
    assert np.abs(z).max() < 6
    back = adapter({"inference_variables": fwd["inference_variables"]}, inverse=True, strict=False)["parameters"]
    np.testing.assert_allclose(back, data["parameters"], rtol=1e-5, atol=1e-5 * float(np.max(np.abs(LOW))))
    np.testing.assert_allclose(np.asarray(fwd["summary_variables"]), data["observables"] * 1e3, rtol=1e-6)


def test_adapter_without_logit_passes_display_units_through():
    data = simulate_batch(50, seed=2)
    z = estimator.make_adapter(logit_bounds=False)({"parameters": data["parameters"], "observables": data["observables"]})
    np.testing.assert_allclose(z["inference_variables"], data["parameters"] * DISPLAY_SCALE, rtol=1e-6)


@pytest.mark.torch
def test_draws_of_an_untrained_flow_stay_within_the_widened_bounds_and_then_the_prior():
    approximator = estimator.build_approximator(ModelConfig(summary_network="conv_pool", flow_depth=2))
    data = simulate_batch(8, seed=5)
    adapted = approximator.adapter({"parameters": data["parameters"], "observables": data["observables"]})
    approximator.build_from_data(adapted)
    raw = estimator.sample_posterior(approximator, data["observables"], 300, seed=0, within_prior=False)
    margin = estimator.BOUND_MARGIN * (HIGH - LOW)
    assert ((raw >= LOW - margin * 1.0001) & (raw <= HIGH + margin * 1.0001)).all()
    draws, acceptance = estimator.sample_posterior(approximator, data["observables"], 300, seed=0, return_acceptance=True)
    assert draws.shape == (8, 300, 6) and in_support(draws[acceptance > 0]).all()
    assert np.isfinite(draws * DISPLAY_SCALE).all()


def test_a_small_logit_margin_sends_points_near_the_bounds_far_out():
    """model.logit_margin = 1e-4: a draw 1e-4 of the width inside a bound sits 2e-4 of the widened
    box from its edge, logit -8.5 (with the default margin of 0.01, about -4.6 for any point that
    close), and the map inverts to the same parameters."""
    theta = sample_prior(200, 3, kind="ordered")
    theta[0] = LOW + 1e-4 * (HIGH - LOW)
    theta[1] = HIGH - 1e-4 * (HIGH - LOW)
    obs = np.zeros((200, 10, 1), dtype=np.float32)
    tight = estimator.make_adapter(margin=1e-4)
    z = np.asarray(tight({"parameters": theta, "observables": obs})["inference_variables"], dtype=np.float64)
    assert np.isfinite(z).all()
    edge = 2e-4 / 1.0002
    np.testing.assert_allclose(z[0], np.log(edge / (1 - edge)), rtol=2e-2)
    np.testing.assert_allclose(z[1], -np.log(edge / (1 - edge)), rtol=2e-2)
    wide = np.asarray(estimator.make_adapter()({"parameters": theta, "observables": obs})["inference_variables"], dtype=np.float64)
    np.testing.assert_allclose(wide[0], np.log(0.0101 / 1.0099), rtol=2e-2)
    back = tight({"inference_variables": z.astype(np.float32)}, inverse=True)["parameters"]
    np.testing.assert_allclose(back, theta, rtol=1e-4)
    assert ModelConfig().logit_margin == estimator.BOUND_MARGIN


@pytest.mark.torch
def test_every_sample_call_asks_for_batches_of_one_size():
    """sample_posterior pads each call's traces so that BayesFlow's batches all have one size (JAX
    compiles its eager operations once per shape), and the padding's draws are dropped: 7 traces at
    batch_size 3 are sampled as 3 batches of 3, and the first 7 rows are returned."""
    approximator = estimator.build_approximator(ModelConfig(summary_network="conv_pool", flow_depth=2))
    data = simulate_batch(7, seed=5)
    approximator.build_from_data(approximator.adapter({"parameters": data["parameters"], "observables": data["observables"]}))
    calls, outputs = [], []
    sample = approximator.sample

    def recording(**kwargs):
        out = sample(**kwargs)
        calls.append((len(kwargs["conditions"]["observables"]), kwargs["batch_size"]))
        outputs.append(np.asarray(out["parameters"], dtype=np.float64))
        return out

    approximator.sample = recording
    draws = estimator.sample_posterior(approximator, data["observables"], 50, batch_size=3, seed=1, within_prior=False)
    assert calls == [(9, 3)]
    assert draws.shape == (7, 50, 6)
    np.testing.assert_array_equal(draws, outputs[0][:7])  # the real traces' draws, in order
    estimator.sample_posterior(approximator, data["observables"][:6], 50, batch_size=3, seed=1, within_prior=False)
    assert calls[-1] == (6, 3)  # nothing to pad


@pytest.mark.torch
def test_each_top_up_round_is_one_call_for_every_short_trace():
    """Draws outside the prior's support are drawn again in rounds; each round asks BayesFlow once,
    for every trace still short, with one request size (a power of two covering 90 % of what the
    traces ask for): one more (traces x draws) shape per round, which JAX compiles, and one more
    pass of the summary network. An untrained flow's draws often leave the support, so every trace
    is short after the first call; every trace still ends with its draws, all inside the support."""
    approximator = estimator.build_approximator(ModelConfig(summary_network="conv_pool", flow_depth=2))
    data = simulate_batch(12, seed=5)
    approximator.build_from_data(approximator.adapter({"parameters": data["parameters"], "observables": data["observables"]}))
    calls = []
    sample = approximator.sample

    def recording(**kwargs):
        calls.append((len(kwargs["conditions"]["observables"]), kwargs["num_samples"]))
        return sample(**kwargs)

    approximator.sample = recording
    draws, acceptance = estimator.sample_posterior(approximator, data["observables"], 200, seed=0, return_acceptance=True)
    assert calls[0] == (12, 200) and len(calls) >= 2, calls
    assert calls[1][0] == 12 and acceptance.max() < 1, calls  # every trace short: all in the round's one call
    assert [n for n, _ in calls[1:]] == sorted((n for n, _ in calls[1:]), reverse=True), calls  # rounds shrink
    for _, k in calls[1:]:
        assert k >= 64 and k & (k - 1) == 0, calls  # powers of two
    assert draws.shape == (12, 200, 6) and in_support(draws[acceptance > 0]).all()


@pytest.mark.torch
def test_a_trace_with_no_draw_in_the_support_gets_the_priors_order_and_a_warning():
    """Where every draw of a trace breaks V_res < E_L (seen for a non-spiking trace near V_res's
    bound), sample_posterior still returns n_draws draws inside the support: the first draws,
    clipped into the bounds and ordered by the prior's own repair (V_res = E_L - 2 mV, clipped),
    with a warning and acceptance 0; the other traces are untouched by it."""
    approximator = estimator.build_approximator(ModelConfig(summary_network="conv_pool", flow_depth=2))
    data = simulate_batch(3, seed=5)
    approximator.build_from_data(approximator.adapter({"parameters": data["parameters"], "observables": data["observables"]}))
    sample = approximator.sample
    e, r = 2, 4

    def out_of_order(**kwargs):  # trace 0's draws: E_L in [-79, -72] mV, V_res 1 mV above it
        out = sample(**kwargs)
        theta = np.array(out["parameters"], dtype=np.float64)
        if kwargs["conditions"]["observables"][0].tobytes() == data["observables"][0].astype(np.float32).tobytes():
            theta[0, :, e] = np.clip(theta[0, :, e], LOW[e] + 1e-3, -72e-3)
            theta[0, :, r] = theta[0, :, e] + 1e-3
        return {"parameters": theta}

    approximator.sample = out_of_order
    with pytest.warns(UserWarning, match="1 trace.*#0.*ordered by the prior's own repair"), warnings.catch_warnings():
        # pytest.warns records every warning, past pyproject.toml's filter of Keras' NumPy 2 note
        warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy keyword", category=DeprecationWarning)
        draws, acceptance = estimator.sample_posterior(approximator, data["observables"], 100, seed=0, return_acceptance=True)
    assert draws.shape == (3, 100, 6) and acceptance[0] == 0 and (acceptance[1:] > 0).all()
    assert in_support(draws).all()
    fixed = draws[0]
    np.testing.assert_allclose(fixed[:, r], np.maximum(fixed[:, e] - 2e-3, LOW[r]))  # the repair's V_res


@pytest.mark.torch
def test_student_t_base_is_built_trains_its_log_density_and_survives_save_and_load(tmp_path):
    import bayesflow as bf

    approximator = estimator.build_approximator(ModelConfig(summary_network="conv_pool", flow_depth=2, flow_base_df=5.0))
    base = approximator.inference_network.base_distribution
    assert isinstance(base, bf.distributions.DiagonalStudentT) and base.df == 5.0
    data = simulate_batch(16, seed=7)
    approximator.build_from_data(approximator.adapter({"parameters": data["parameters"], "observables": data["observables"]}))
    log_p = np.asarray(approximator.log_prob({"parameters": data["parameters"], "observables": data["observables"]}))
    assert log_p.shape == (16,) and np.isfinite(log_p).all()
    approximator.save(tmp_path / "m.keras")
    loaded = estimator.load_approximator(tmp_path / "m.keras")
    assert isinstance(loaded.inference_network.base_distribution, bf.distributions.DiagonalStudentT)
    assert loaded.inference_network.base_distribution.df == 5.0
    again = np.asarray(loaded.log_prob({"parameters": data["parameters"], "observables": data["observables"]}))
    np.testing.assert_allclose(again, log_p, rtol=1e-5, atol=1e-5)
    # A normal base gives a different density for the same weights' layout: the option is not ignored.
    normal = estimator.build_approximator(ModelConfig(summary_network="conv_pool", flow_depth=2))
    assert isinstance(normal.inference_network.base_distribution, bf.distributions.DiagonalNormal)


@pytest.mark.torch
def test_the_leak_scales_a_model_was_built_with_are_read_back_from_it_after_saving(tmp_path):
    """A flow conditioned on two time scales of leak features says so after a save and load, and the
    conditions it is given have 8 feature columns; a model without features gets none."""
    from lif_sbi.config import StimulusConfig

    model = ModelConfig(summary_network="conv_pool", flow_depth=2, observe_current=True, leak_features=True, leak_scales=2)
    approximator = estimator.build_approximator(model)
    data = simulate_batch(16, seed=8, stimulus=StimulusConfig(protocols=("step",)))
    data = {k: data[k] for k in ("parameters", "observables", "current")}
    with pytest.raises(ValueError, match="not built yet"):
        estimator.leak_scales(approximator)
    approximator.build_from_data(approximator.adapter(data | {"features": features.leak_features(data["observables"], data["current"], 1e-4, 2)}))
    assert estimator.leak_scales(approximator) == 2
    assert estimator.with_features(approximator, data, 1e-4)["features"].shape == (16, 8)
    approximator.save(tmp_path / "m.keras")
    loaded = estimator.load_approximator(tmp_path / "m.keras")
    assert estimator.leak_scales(loaded) == 2
    plain = estimator.build_approximator(ModelConfig(summary_network="conv_pool", flow_depth=2, observe_current=True))
    bare = {k: data[k] for k in ("observables", "current")}
    assert estimator.leak_scales(plain) == 0 and "features" not in estimator.with_features(plain, bare, 1e-4)


@pytest.mark.torch
@pytest.mark.parametrize("scales", [0, 2])
def test_spike_features_are_read_back_beside_the_leak_scales_after_saving(tmp_path, scales):
    """A flow conditioned on spike features (alone, or after two scales of leak fits) says so after a
    save and load, with the leak scales unchanged, and gives the same density for the same data."""
    from lif_sbi.config import StimulusConfig

    model = ModelConfig(summary_network="conv_pool", flow_depth=2, observe_current=True, leak_features=scales > 0,
                        leak_scales=max(scales, 1), spike_features=True)
    approximator = estimator.build_approximator(model)
    data = simulate_batch(16, seed=9, stimulus=StimulusConfig(protocols=("step",)))
    data = {k: data[k] for k in ("parameters", "observables", "current")}
    full = features.add_features(data, 1e-4, scales, True)
    approximator.build_from_data(approximator.adapter(full))
    width = scales * features.N_FEATURES + len(features.spike_feature_names())
    assert approximator.standardize_layers["inference_conditions"].weights[0].shape[-1] == width
    assert estimator.uses_spike_features(approximator) and estimator.leak_scales(approximator) == scales
    log_p = np.asarray(approximator.log_prob(full))
    approximator.save(tmp_path / "m.keras")
    loaded = estimator.load_approximator(tmp_path / "m.keras")
    assert estimator.uses_spike_features(loaded) and estimator.leak_scales(loaded) == scales
    again = estimator.with_features(loaded, data, 1e-4)
    assert set(again) - set(data) == ({"features", "spike_features"} if scales else {"spike_features"})
    np.testing.assert_allclose(np.asarray(loaded.log_prob(again)), log_p, rtol=1e-5, atol=1e-5)
