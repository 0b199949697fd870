"""Wall time of the context E-distance: 50 contexts x 2,000 control cells each (target: <= 5 s).

Three timings: the E-distance itself on a 50-PC embedding (the target; scPerturb's squared-Euclidean definition,
closed form), the whole ``control_distances`` call on cells (PCA on 100,000 control cells x 500 genes included),
and the exact Euclidean variant (pertpy's current default, quadratic in cells) on 200 cells per context.
"""

import time

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

import vclib as vc

N_CONTEXTS, N_CELLS, N_PCS, N_GENES = 50, 2_000, 50, 500
rng = np.random.default_rng(0)
groups = np.repeat([f"ctx{i:02d}" for i in range(N_CONTEXTS)], N_CELLS)
embedding = rng.normal(0, 1, (len(groups), N_PCS)) + rng.normal(0, 0.5, (N_CONTEXTS, N_PCS)).repeat(N_CELLS, axis=0)

start = time.perf_counter()
E = vc.coverage.edistance(embedding, groups)
elapsed = time.perf_counter() - start
print(f"edistance, {N_CONTEXTS} contexts x {N_CELLS:,} cells x {N_PCS} PCs (sqeuclidean, closed form): "
      f"{elapsed:.3f} s for {N_CONTEXTS * (N_CONTEXTS - 1) // 2} pairs (target <= 5 s)")

counts = sparse.csr_matrix(rng.poisson(np.exp(rng.normal(0, 1, N_GENES)) * rng.gamma(5, 0.2, (len(groups), 1)))
                           .astype(np.float32))
cells = ad.AnnData(counts, obs=pd.DataFrame({"perturbation": "control", "context": groups},
                                            index=[f"c{i}" for i in range(len(groups))]))
cells = vc.loaders.read(cells)
start = time.perf_counter()
table = vc.coverage.control_distances(cells, n_pcs=N_PCS)
elapsed = time.perf_counter() - start
print(f"control_distances on {cells.n_obs:,} control cells x {N_GENES} genes (PCA + E-distance + correlation "
      f"distance): {elapsed:.1f} s, {len(table)} pairs")

sub = np.concatenate([np.flatnonzero(groups == g)[:200] for g in np.unique(groups)])
start = time.perf_counter()
vc.coverage.edistance(embedding[sub], groups[sub], metric="euclidean")
elapsed = time.perf_counter() - start
print(f"edistance, euclidean (exact pairwise), {N_CONTEXTS} contexts x 200 cells: {elapsed:.1f} s")
