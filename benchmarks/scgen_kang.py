"""scGen beside the baselines on Kang 2018's IFN-beta PBMCs (muscat subset), leave one cell type out.

scGen (models/scgen, its own environment made from pinned requirements on first use) is trained per fold through
the fold protocol (``vc.splits.export`` → ``vclib external scgen`` → ``vc.models.ExternalPredictions``) and
scored with nearest_context, perturbation_mean and no_change on the same held-out cell types. Prints, per held-out
cell type, pearson_delta, mse_delta and R² of mean expression (all genes and the 100 genes of largest observed
change) for each model with the split-half noise ceiling, and scGen's training time and epochs per fold.

Needs ../shared/real-data (skipped with a message where absent). Run:
``python benchmarks/scgen_kang.py [--epochs 100] [--seed 0] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import anndata as ad
import pandas as pd

import vclib as vc

KANG = (Path(__file__).resolve().parents[1].parent / "shared" / "real-data" / "kang2018_ifnb_pbmc_muscat_subset"
        / "kang2018_muscat_example_sce.h5ad")
METRICS = ["pearson_delta", "mse_delta", "r2_mean", "r2_mean_top100"]
BASELINES = ["nearest_context", "perturbation_mean", "no_change"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", default="100", help="scGen's most epochs (early stopping ends sooner)")
    parser.add_argument("--seed", default="0")
    parser.add_argument("--keep", type=Path, default=None, help="folder for the folds and scGen's answers (resumes)")
    args = parser.parse_args()
    if not KANG.exists():
        print(f"skipped: {KANG} not found")
        return
    adata = vc.loaders.read(KANG, perturbation_key="group_id", context_key="cluster_id", control="ctrl")
    table = vc.splits.unseen_context(adata)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="scgen-kang-")) / "folds"
    if not (folder / "manifest.json").exists():
        vc.splits.export(adata, table, folder)
    start = time.perf_counter()
    print("load average at the start (1, 5, 15 min): " + ", ".join(f"{v:.1f}" for v in os.getloadavg()))
    vc.external.predict("scgen", folder, options=["--epochs", args.epochs, "--seed", args.seed])
    print(f"scGen, all folds: {time.perf_counter() - start:.0f} s (folds answered before are not redone); load "
          "average now: " + ", ".join(f"{v:.1f}" for v in os.getloadavg()))

    models = {"scgen": vc.models.ExternalPredictions(folder), **{n: vc.benchmark.estimator(n) for n in BASELINES}}
    scores = vc.benchmark.run(adata, splits=table, models=models, metrics=METRICS, progress=False)
    mean = scores.groupby(["metric", "model", "context"])["value"].mean().unstack("context")
    pd.set_option("display.width", 200)
    print(f"\n# Kang 2018 IFN-beta, leave one cell type out ({adata.n_obs} cells x {adata.n_vars} genes); "
          "one condition per held-out cell type, so each value is that cell type's score")
    for metric in METRICS:
        print(f"\n{metric} ({'higher' if vc.metrics.REGISTRY[metric].higher_is_better else 'lower'} is better)")
        print(mean.loc[metric].reindex(["scgen", *BASELINES, "ceiling"]).round(3).to_string())

    rows = []
    for path in sorted((folder / "predictions").glob("*.h5ad")):
        info = ad.read_h5ad(path).uns["model"]
        rows.append({"fold": path.stem, "train_seconds": info["train_seconds"],
                     "epochs_trained": info["epochs_trained"], "seed": info["seed"]})
    print("\nscGen training per fold\n" + pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
