"""Failure characterisation figures: does the error track distance from the training data?

For each dataset, the benchmark grid is run, each test condition gets its covariates (distance of its context to
the nearest training context, number of training contexts that measured its perturbation, effect size, DE genes,
reliability, for doubles the seen singles and the non-additivity), and the error drivers are printed as rank
correlations with bootstrap 95% CIs, in words ("no clear relation" where the CI includes 0).

1. Simulator: 6 contexts at graded distances, context_divergence 0.6, 60% coverage (unseen context + unseen
   perturbation).
2. McFaline-Figueroa 2023 (3 GBM lines, leave one out), 3. Kang 2018 (5 PBMC cell types, leave one out),
4. Norman 2019 (held-out doubles). Real parts need ../shared/real-data (skipped with a message where absent).
Run ``python benchmarks/failure_figures.py [1 2 3 4]`` (default: all parts).
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import pandas as pd

import vclib as vc

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "real-data"
MODELS = ["training_mean", "perturbation_mean", "nearest_context", "additive", "linear", "mlp"]
COVARIATES = ["distance_to_training", "n_training_contexts", "effect_size", "n_de_genes", "reliability",
              "n_seen_singles", "non_additivity"]
pd.set_option("display.width", 160)


def analyse(name: str, adata, splits: list[str], split_options=None) -> None:
    start = time.perf_counter()
    de = vc.metrics.rank_genes(adata)
    tables = [vc.splits.make(s, adata, **(split_options or {}).get(s, {})) for s in splits]
    scores = vc.benchmark.run(adata, splits=tables, models=MODELS, metrics=["mse_delta", "pearson_delta"],
                              observed_de=de, progress=False)
    distances = vc.coverage.control_distances(adata) if adata.obs["context"].nunique() > 1 else None
    covariates = vc.failures.split_covariates(pd.concat(tables), distances)
    reliability = vc.coverage.reliability(adata)
    table = vc.failures.condition_table(scores, covariates, vc.failures.observed_effects(adata, de=de),
                                        reliability=reliability)
    print(f"\n## {name} ({time.perf_counter() - start:.0f} s)")
    for metric in ("mse_delta", "pearson_delta"):
        for split in splits:
            part = table[table["split"] == split]
            rows = []
            for model in MODELS:
                drivers = vc.failures.error_drivers(part, model=model, metric=metric, covariates=COVARIATES)
                for r in drivers.itertuples(index=False):
                    rows.append({"model": model, "covariate": r.covariate,
                                 "spearman": f"{r.spearman:+.2f} [{r.spearman_low:+.2f}, {r.spearman_high:+.2f}]",
                                 "partial": f"{r.coefficient:+.3f} [{r.coef_low:+.3f}, {r.coef_high:+.3f}]"})
            n = int((part["model"].eq(MODELS[0]) & part["metric"].eq(metric)).sum())
            if not rows:
                print(f"\n{metric}, {split}: too few conditions or no varying covariate")
                continue
            frame = pd.DataFrame(rows)
            print(f"\n{metric}, {split} (n = {n} test conditions): rank correlation [95% CI]")
            print(frame.pivot(index="model", columns="covariate", values="spearman").to_string())
            print("standardised regression coefficient, all covariates together [95% CI]:")
            print(frame.pivot(index="model", columns="covariate", values="partial").to_string())
            own = vc.failures.error_drivers(part, model="mlp", metric=metric, covariates=COVARIATES)
            print("\n".join("  " + s for s in vc.failures.describe_drivers(own, model="mlp", metric=metric)))


def main() -> None:
    warnings.filterwarnings("ignore")
    parts = sys.argv[1:] or ["1", "2", "3", "4"]
    if "1" in parts:
        sim = vc.loaders.simulate(n_contexts=6, context_divergence=0.6, coverage=0.6, seed=0)
        analyse("1. Simulator (6 graded contexts, divergence 0.6)", sim, ["unseen_context", "unseen_perturbation"])
    if not {"2", "3", "4"} & set(parts):
        return
    devel = REAL / "perturbench_devel_norman19_mcfaline23" / "devel.h5ad"
    kang = REAL / "kang2018_ifnb_pbmc_muscat_subset" / "kang2018_muscat_example_sce.h5ad"
    if devel.exists():
        raw = vc.loaders.read(devel, perturbation_key="condition", context_key="cell_type")
        analyse("2. McFaline-Figueroa 2023", raw[raw.obs["dataset"] == "mcfaline23"].copy(), ["unseen_context"])
        analyse("4. Norman 2019 doubles", raw[raw.obs["dataset"] == "norman19"].copy(), ["combinations"],
                split_options={"combinations": {"holdout_singles": 0.3}})
    else:
        print(f"\n## 2 and 4 skipped: {devel} not found")
    if kang.exists():
        adata = vc.loaders.read(kang, perturbation_key="group_id", context_key="cluster_id", control="ctrl")
        analyse("3. Kang 2018 IFN-beta", adata, ["unseen_context"])
    else:
        print(f"\n## 3 skipped: {kang} not found")


if __name__ == "__main__":
    main()
