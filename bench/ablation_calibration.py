"""Calibration ablation: what the `default` recipe's choices do to recovery and interval coverage.

Trains the conv_pool + CouplingFlow estimator on the cached 10,000-trace dataset (seed 42) with the
options below and prints, per parameter, Pearson r, central 50 % / 90 % coverage, RMSE and mean
posterior sd on `--ntest` fresh traces x 500 draws. The figures in bench/RESULTS.md
("Calibration recipe") came from, on the 2-core CPU:

    KERAS_BACKEND=torch .venv/bin/python bench/ablation_calibration.py --epochs 15 --no-logit
    KERAS_BACKEND=torch .venv/bin/python bench/ablation_calibration.py --epochs 15
    KERAS_BACKEND=torch .venv/bin/python bench/ablation_calibration.py --epochs 20 --cosine --lr 2e-3
    KERAS_BACKEND=torch .venv/bin/python bench/ablation_calibration.py --epochs 20 --cosine --lr 2e-3 --dropout 0

(--features adds the raw first sample, min and max of the trace to the summary; --online trains on
fresh simulations every batch.) The whole `default` run is `python -m lif_sbi.train`.
"""
import argparse, time, json, sys
import numpy as np, keras
import bayesflow as bf
from lif_sbi import backends, estimator, dataset
from lif_sbi.config import ModelConfig
from lif_sbi.simulator import simulate_batch
from lif_sbi.priors import DISPLAY_SCALE, PARAM_NAMES

p = argparse.ArgumentParser()
p.add_argument("--features", action="store_true")
p.add_argument("--online", action="store_true")
p.add_argument("--epochs", type=int, default=15)
p.add_argument("--cosine", action="store_true")
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--batch", type=int, default=64)
p.add_argument("--depth", type=int, default=6)
p.add_argument("--transform", default="affine")
p.add_argument("--ntest", type=int, default=300)
p.add_argument("--dropout", type=float, default=0.05)
p.add_argument("--widths", default="128,128", help="coupling-MLP widths (BayesFlow default 128,128)")
p.add_argument("--no-logit", action="store_true", help="the study's plain standardisation (model.logit_bounds=false)")
a = p.parse_args()
t00 = time.perf_counter()
backends.set_seed(42)

appr = estimator.build_approximator(ModelConfig(
    summary_network="conv_pool", summary_dim=16, flow_depth=a.depth, flow_transform=a.transform,
    flow_dropout=a.dropout, logit_bounds=not a.no_logit, trace_features=a.features,
))
if a.widths != "128,128":  # BayesFlow's coupling-MLP default widths
    appr = bf.approximators.ContinuousApproximator(adapter=appr.adapter, inference_network=bf.networks.CouplingFlow(depth=a.depth, transform=a.transform, subnet_kwargs={"dropout": a.dropout, "widths": tuple(int(w) for w in a.widths.split(","))}), summary_network=appr.summary_network, standardize=["inference_variables", "summary_variables"])
data = dataset.load_or_simulate(10000, 42, progress=False)[0]
train, val = dataset.split(data, 0.2, 42)
keys = ("parameters", "observables")
steps = int(np.ceil(8000 / a.batch))
if a.online:
    class Sim:
        def __init__(self): self.rng = np.random.default_rng(7)
        def sample(self, n):
            d = simulate_batch(n, seed=self.rng)
            return {k: d[k] for k in keys}
    train_ds = bf.datasets.OnlineDataset(Sim(), batch_size=a.batch, num_batches=steps, adapter=appr.adapter)
else:
    train_ds = bf.datasets.OfflineDataset({k: train[k] for k in keys}, batch_size=a.batch, adapter=appr.adapter)
val_ds = bf.datasets.OfflineDataset({k: val[k] for k in keys}, batch_size=a.batch, adapter=appr.adapter, shuffle=False)
lr = keras.optimizers.schedules.CosineDecay(a.lr, a.epochs * steps) if a.cosine else a.lr
appr.compile(optimizer=keras.optimizers.Adam(lr))
appr.build_from_data(train_ds[0])
cbs = []
if not a.cosine:
    cbs.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=3, min_lr=1e-6))
class T(keras.callbacks.Callback):
    def on_epoch_begin(self, e, logs=None): self.t = time.perf_counter()
    def on_epoch_end(self, e, logs=None): print(f"ep {e+1} {time.perf_counter()-self.t:.1f}s loss {logs['loss']:.3f} val {logs['val_loss']:.3f}", flush=True)
t0 = time.perf_counter()
appr.fit(dataset=train_ds, validation_data=val_ds, epochs=a.epochs, verbose=0, callbacks=cbs + [T()])
ttrain = time.perf_counter() - t0
test = dataset.simulate_dataset(a.ntest, 2024, progress=False)
t0 = time.perf_counter()
draws = estimator.sample_posterior(appr, test["observables"], 500, seed=1) * DISPLAY_SCALE
tsamp = time.perf_counter() - t0
th = test["parameters"].astype(np.float64) * DISPLAY_SCALE
m = draws.mean(1); sd = draws.std(1)
lo90, hi90 = np.quantile(draws, [0.05, 0.95], axis=1); lo50, hi50 = np.quantile(draws, [0.25, 0.75], axis=1)
cov90 = ((th >= lo90) & (th <= hi90)).mean(0); cov50 = ((th >= lo50) & (th <= hi50)).mean(0)
print(vars(a), f"train {ttrain:.0f}s sample {tsamp:.1f}s total {time.perf_counter()-t00:.0f}s")
for j, nme in enumerate(PARAM_NAMES):
    err = m[:, j] - th[:, j]
    print(f"{nme:6s} r {np.corrcoef(m[:, j], th[:, j])[0,1]:.4f} cov90 {cov90[j]:.3f} cov50 {cov50[j]:.3f} rmse {np.sqrt((err**2).mean()):.4g} medAE {np.median(abs(err)):.3g} sd {sd[:, j].mean():.4g} medsd {np.median(sd[:, j]):.3g}")
