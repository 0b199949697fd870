"""Wall time of the default notebook-02 grid and of the linear baseline at scale.

Targets on a 2-core machine: the default grid (embedded simulator, unseen perturbation with 5 folds + unseen
context, every default model, one seed, full metric suite with DE and the noise ceiling) in <= 60 s; the linear
baseline (closed form) on a 20,000-gene x 2,000-perturbation pseudobulk in <= 20 s.
"""

import time
import warnings

import anndata as ad
import numpy as np
import pandas as pd

import vclib as vc

warnings.filterwarnings("ignore", category=UserWarning)

adata = vc.loaders.simulate()
vc.benchmark.run(vc.loaders.simulate(n_contexts=2, n_perturbations=8, n_genes=50), splits=["unseen_context"],
                 models=["linear"], progress=False)  # compile the numba kernels once (cached on disk after)
start = time.perf_counter()
scores = vc.benchmark.run(adata, progress=False)
grid = time.perf_counter() - start
cells = scores.groupby(["model", "split", "fold", "seed"]).ngroups
print(f"default notebook-02 grid: {adata.n_obs:,} cells x {adata.n_vars} genes, {cells} (model, split fold, seed) "
      f"cells, {len(scores):,} scores: {grid:.1f} s (target <= 60 s)")

rng = np.random.default_rng(0)
n_genes, n_perts = 20_000, 2_000
genes = [f"g{i}" for i in range(n_genes)]
control = rng.gamma(1.0, 1.0, n_genes)
deltas = rng.normal(0, 0.1, (n_perts, 5)) @ rng.normal(0, 1, (5, n_genes)) + rng.normal(0, 0.05, (n_perts, n_genes))
obs = pd.DataFrame({"context": "c", "perturbation": ["control"] + genes[:n_perts]})
obs.index = "c|" + obs["perturbation"]
pb = ad.AnnData(np.vstack([control, control + deltas]), obs=obs, var=pd.DataFrame(index=genes))
train = pb[obs.index[:-100]].copy()
start = time.perf_counter()
model = vc.baselines.Linear(d=10, lam=0.1).fit(train)
model.predict(list(obs.index[-100:]))
linear = time.perf_counter() - start
print(f"linear baseline, fit on {n_genes:,} genes x {n_perts - 99:,} perturbations + predict 100: "
      f"{linear:.1f} s (target <= 20 s)")
