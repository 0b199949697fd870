"""The statistics of vclib measured on real data, before/after style: each figure beside the value the older rule
(or the textbook formula) gives on the same data.

1. PDS of a constant predictor (the control everywhere) on the Norman K562 subset: the default exclusion (the
   union of the context's targets) against per-query exclusion (``exclude="own"``) and none.
2. E-distance on Kang PBMC control cells (50-PC PCA): vclib's default against scPerturb's ``edist`` formula
   written out as loops, and the uncorrected variant (vclib's former default).
3. Two seeds: ``compare``'s n and CI width with seeds [0] and [0, 1] on the simulator (n counts perturbations).
4. The noise ceiling per held-out cell type on Kang (unseen context, pearson_delta): the half-size replicate, the
   full-size (Spearman–Brown) ceiling, and the best models.
5. Non-additivity of the Norman doubles: raw ‖δ_AB − δ_A − δ_B‖², its noise term, corrected.
6. Distance vs transfer on Kang distinct (8 cell types, 28 pairs): textbook Spearman p against the Mantel p.

Run: ``.venv/bin/python benchmarks/statistics_figures.py`` (needs ../shared/real-data).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc
from scipy import stats

import vclib as vc

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "real-data"
NORMAN = REAL / "perturbench_devel_norman19_mcfaline23" / "devel.h5ad"
KANG = REAL / "kang2018_ifnb_pbmc_muscat_subset" / "kang2018_muscat_example_sce.h5ad"
DISTINCT = REAL / "kang2018_ifnb_pbmc_distinct_subset" / "kang2018_distinct_Kang_subset.h5ad"
PDS = ["discrimination_score_l1", "discrimination_score_l2", "discrimination_score_cosine"]


def norman() -> vc.metrics.Observed:
    adata = vc.loaders.read(NORMAN, perturbation_key="condition", context_key="cell_type", control="control")
    return vc.metrics.prepare(adata[adata.obs["context"] == "k562"].copy())


def kang():
    return vc.loaders.read(KANG, perturbation_key="group_id", context_key="cluster_id", control="ctrl")


def pds_of_a_constant(obs) -> pd.DataFrame:
    control = vc.metrics.predict_control(obs)
    rows = {}
    for exclude in ("targets", "own", None):
        scores = vc.metrics.evaluate(control, obs, metrics=PDS, exclude=exclude)
        rows[f"exclude={exclude!r}"] = scores.groupby("metric")["value"].mean()
    return pd.DataFrame(rows).T.round(4)


def _scperturb_edist(X: np.ndarray, Y: np.ndarray) -> float:
    """scPerturb's edist written as its definition: squared Euclidean, between-group mean over all pairs,
    within-group means over pairs of distinct cells (its sample_correct=True default)."""
    def mean_sq(A, B, distinct):
        d = ((A[:, None, :] - B[None, :, :]) ** 2).sum(-1)
        return d.sum() / (len(A) * (len(B) - 1)) if distinct else d.mean()

    return 2 * mean_sq(X, Y, False) - mean_sq(X, X, True) - mean_sq(Y, Y, True)


def edistance_against_scperturb(adata) -> pd.DataFrame:
    controls = adata[adata.obs["perturbation"] == "control"].copy()
    sc.pp.pca(controls, n_comps=50, random_state=0)
    X, groups = controls.obsm["X_pca"].astype(np.float64), controls.obs["context"].astype(str).to_numpy()
    default = vc.coverage.edistance(X, groups)
    plain = vc.coverage.edistance(X, groups, sample_correct=False)
    rows = []
    for i, a in enumerate(default.index):
        for b in default.index[i + 1:]:
            ref = _scperturb_edist(X[groups == a], X[groups == b])
            rows.append({"pair": f"{a} | {b}", "scPerturb formula": ref, "vclib default": default.loc[a, b],
                         "relative difference": abs(default.loc[a, b] - ref) / abs(ref),
                         "uncorrected": plain.loc[a, b],
                         "uncorrected rel. diff": abs(plain.loc[a, b] - ref) / abs(ref)})
    return pd.DataFrame(rows)


def two_seeds() -> pd.DataFrame:
    adata = vc.loaders.simulate(n_contexts=2, n_perturbations=20, n_combinations=0, n_genes=100,
                                cells_per_condition=20, seed=0)
    rows = []
    for seeds in ([0], [0, 1]):
        scores = vc.benchmark.run(adata, splits=["unseen_perturbation"], models=["training_mean", "linear"],
                                  metrics=["pearson_delta"], seeds=seeds, split_options={
                                      "unseen_perturbation": {"n_folds": 5}}, progress=False)
        row = vc.metrics.compare(scores, baseline="training_mean").iloc[0]
        rows.append({"seeds": str(seeds), "n (perturbations)": row["n"], "paired rows": row["n_pairs"],
                     "CI width": row["ci_high"] - row["ci_low"], "difference": row["difference"]})
    return pd.DataFrame(rows)


def ceilings_per_context(adata) -> pd.DataFrame:
    obs = vc.metrics.prepare(adata)
    scores = vc.benchmark.run(obs, splits=["unseen_context"], models=["nearest_context", "perturbation_mean", "mlp"],
                              metrics=["pearson_delta"], progress=False)
    table = scores.pivot_table(index="fold", columns="model", values="value")
    half = vc.metrics.ceiling(obs, metrics=["pearson_delta"], noise_free=False)
    table["ceiling (half-size replicate)"] = half.set_index("context")["value"]
    return table.round(3)


def non_additivity(obs) -> pd.DataFrame:
    effects = vc.failures.observed_effects(obs)
    doubles = effects.dropna(subset=["non_additivity_raw"])
    return doubles[["non_additivity_raw", "non_additivity_noise", "non_additivity",
                    "non_additivity_within_noise"]].round(3)


def mantel() -> pd.DataFrame:
    adata = vc.loaders.read(DISTINCT, perturbation_key="stim", context_key="cell", control="ctrl", values="log2p")
    distances = vc.coverage.control_distances(adata)
    pairs = vc.coverage.summarize_transfer(vc.coverage.transferability(adata))
    joined = vc.coverage.distance_vs_transfer(distances, pairs)
    out = vc.coverage.rank_correlation(joined)
    out["textbook p (independent pairs)"] = [
        stats.spearmanr(joined[d], joined["transfer"], nan_policy="omit").pvalue for d in out["distance"]]
    return out[["distance", "n_pairs", "n_contexts", "spearman_rho", "textbook p (independent pairs)", "p_value",
                "n_permutations", "exact"]]


def main() -> int:
    if not REAL.exists():
        print(f"{REAL} not found: nothing to measure.")
        return 0
    warnings.filterwarnings("ignore")
    pd.set_option("display.width", 200)
    obs = norman()
    sections = [
        ("1. PDS of the control-everywhere predictor, Norman K562 (0.5 = chance)", lambda: pds_of_a_constant(obs)),
        ("2. E-distance of Kang control cells vs scPerturb's edist formula",
         lambda: edistance_against_scperturb(kang())),
        ("3. compare() with one and two seeds (simulator, 20 perturbations per context)", two_seeds),
        ("4. Kang unseen cell type, pearson_delta: models and the ceiling per held-out cell type",
         lambda: ceilings_per_context(kang())),
        ("5. Non-additivity of the Norman doubles, noise-corrected", lambda: non_additivity(obs)),
        ("6. Distance vs transfer, Kang distinct: independent-pairs p vs Mantel p", mantel),
    ]
    for title, make in sections:
        print(f"\n=== {title}")
        print(make().to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
