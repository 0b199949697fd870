"""The benchmark's headline experiments, printed as tables (figures for the benchmark issue).

1. Simulator, within a context (unseen perturbation): does the learned model beat the linear / mean baselines
   by more than the noise? (paired differences with bootstrap CIs)
2. Simulator, unseen context, context_divergence swept over 0, 0.5, 1: does every method's error grow?
3. Simulator, unseen context at divergence 0.5: few-shot coverage of the target context (f = 0.1, 0.25, 0.5)
   against doubling the learned model's capacity.
4. Norman 2019 (PerturBench devel subset): held-out doubles, L2 on the top-1,000 expressed genes (all 500 here)
   for additive vs no change vs training mean.
5. McFaline-Figueroa 2023 (same subset): leave-one-cell-line-out for every baseline and the learned model.
6. Kang 2018 (muscat subset): leave-one-cell-type-out of the IFN-beta response.

Real-data parts need ../shared/real-data (skipped with a message where absent). Run:
``python benchmarks/transfer_experiments.py [--seeds 0 1 2]``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import pandas as pd

import vclib as vc

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "real-data"
BASELINES = ["no_change", "training_mean", "context_mean", "perturbation_mean", "nearest_context", "additive",
             "linear", "knn_perturbation", "mlp"]
pd.set_option("display.width", 160)
pd.set_option("display.max_columns", 20)


def _summary(scores: pd.DataFrame, metric: str, by: str = "split") -> pd.DataFrame:
    s = vc.metrics.aggregate(scores[scores["metric"] == metric], by=("model", by, "metric"))
    s["text"] = s.apply(lambda r: f"{r['mean']:.4f} [{r['ci_low']:.4f}, {r['ci_high']:.4f}]", axis=1)
    return s.pivot(index="model", columns=by, values="text")


def within_context(seeds) -> None:
    adata = vc.loaders.simulate(seed=0)
    scores = vc.benchmark.run(adata, splits=["unseen_perturbation"],
                              models=["training_mean", "perturbation_mean", "linear", "mlp"],
                              metrics=["mse_delta", "pearson_delta"], seeds=seeds, progress=False)
    print("\n## 1. Simulator, unseen perturbation (within context): mean [95% CI]")
    for metric in ("mse_delta", "pearson_delta"):
        print(f"\n{metric}\n{_summary(scores, metric)}")
    for baseline in ("linear", "training_mean", "perturbation_mean"):
        cmp = vc.metrics.compare(scores[scores["model"].isin(["mlp", baseline])], baseline=baseline)
        print(f"\nmlp − {baseline} (paired over test perturbations):")
        print(cmp[["metric", "difference", "ci_low", "ci_high", "better"]].round(4).to_string(index=False))


def divergence_sweep(seeds) -> None:
    rows = []
    for d in (0.0, 0.5, 1.0):
        adata = vc.loaders.simulate(context_divergence=d, seed=0)
        scores = vc.benchmark.run(adata, splits=["unseen_context"], models=BASELINES,
                                  metrics=["mse_delta", "pearson_delta"], seeds=seeds, progress=False)
        rows.append(scores.assign(divergence=d))
    scores = pd.concat(rows)
    print("\n## 2. Simulator, unseen context, error against context_divergence: mean [95% CI]")
    for metric in ("mse_delta", "pearson_delta"):
        print(f"\n{metric}\n{_summary(scores, metric, by='divergence')}")


def few_shot_against_capacity(seeds) -> None:
    adata = vc.loaders.simulate(context_divergence=0.5, seed=0)
    models = {"mlp": vc.models.MLP(width=64, depth=2), "mlp_2x_width": vc.models.MLP(width=128, depth=2),
              "mlp_2x_depth": vc.models.MLP(width=64, depth=4), "linear": vc.baselines.Linear(),
              "context_mean": vc.baselines.ContextMean()}
    scores = vc.benchmark.run(adata, splits=["few_shot_context"], models=models,
                              metrics=["mse_delta", "pearson_delta"], seeds=seeds, progress=False)
    # compare on the same test conditions: those still held out at the largest fraction
    print("\n## 3. Simulator (divergence 0.5), few-shot coverage against capacity: mean [95% CI]")
    for metric in ("mse_delta", "pearson_delta"):
        print(f"\n{metric}\n{_summary(scores[scores['model'] != 'ceiling'], metric)}")
    common = scores[scores["split"] == "few_shot_0.5"][["context", "perturbation"]].drop_duplicates()
    same = scores.merge(common, on=["context", "perturbation"])
    print("\nmse_delta on the conditions held out at every fraction:")
    print(_summary(same[same["model"] != "ceiling"], "mse_delta"))


def norman_doubles(seeds) -> None:
    path = REAL / "perturbench_devel_norman19_mcfaline23" / "devel.h5ad"
    if not path.exists():
        print(f"\n## 4. skipped: {path} not found")
        return
    raw = vc.loaders.read(path, perturbation_key="condition", context_key="cell_type")
    adata = raw[raw.obs["dataset"] == "norman19"].copy()
    scores = vc.benchmark.run(adata, splits=["combinations"], models=["no_change", "training_mean", "additive",
                                                                      "linear", "mlp"],
                              metrics=["l2_top_genes", "mse_delta", "pearson_delta"], seeds=seeds, progress=False,
                              split_options={"combinations": {"holdout_singles": 0.0}})
    print("\n## 4. Norman 2019, held-out doubles (all singles seen), L2 on the top-1,000 expressed genes "
          f"({adata.n_vars} genes here): mean [95% CI]")
    print(_summary(scores, "l2_top_genes"))
    cmp = vc.metrics.compare(scores[scores["metric"] == "l2_top_genes"], baseline="additive")
    print(cmp[["model", "difference", "ci_low", "ci_high", "better"]].round(4).to_string(index=False))


def leave_one_out(name: str, path: Path, options: dict, subset: tuple[str, str] | None, seeds) -> None:
    if not path.exists():
        print(f"\n## {name}: skipped, {path} not found")
        return
    adata = vc.loaders.read(path, **options)
    if subset is not None:
        adata = adata[adata.obs[subset[0]] == subset[1]].copy()
    scores = vc.benchmark.run(adata, splits=["unseen_context"], models=BASELINES,
                              metrics=["mse_delta", "pearson_delta", "l2_top_genes"], seeds=seeds, progress=False)
    print(f"\n## {name}: leave-one-context-out, mean over held-out contexts [95% CI]")
    for metric in ("mse_delta", "pearson_delta"):
        print(f"\n{metric}\n{_summary(scores, metric)}")
    per_context = vc.metrics.aggregate(scores[scores["metric"] == "pearson_delta"], by=("model", "context"))
    print("\npearson_delta per held-out context:")
    print(per_context.pivot(index="model", columns="context", values="mean").round(3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", nargs="+", default=None, help="parts to run: 1 2 3 4 5 6")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    parts = {
        "1": lambda: within_context(args.seeds),
        "2": lambda: divergence_sweep(args.seeds),
        "3": lambda: few_shot_against_capacity(args.seeds),
        "4": lambda: norman_doubles(args.seeds),
        "5": lambda: leave_one_out("5. McFaline-Figueroa 2023 (3 GBM lines)",
                                   REAL / "perturbench_devel_norman19_mcfaline23" / "devel.h5ad",
                                   {"perturbation_key": "condition", "context_key": "cell_type"},
                                   ("dataset", "mcfaline23"), args.seeds),
        "6": lambda: leave_one_out("6. Kang 2018 IFN-beta (5 PBMC cell types)",
                                   REAL / "kang2018_ifnb_pbmc_muscat_subset" / "kang2018_muscat_example_sce.h5ad",
                                   {"perturbation_key": "group_id", "context_key": "cluster_id", "control": "ctrl"},
                                   None, args.seeds),
    }
    for key, part in parts.items():
        if args.only is None or key in args.only:
            start = time.perf_counter()
            part()
            print(f"(part {key}: {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
