"""Run a benchmark grid (model × split fold × seed) into one tidy table, resumably.

Each finished (model, split, fold, seed) cell (its scores and its predicted deltas) is written to
``results_dir/cells/`` atomically, under a name that carries a hash of everything it depends on (vclib version,
model settings, split options, metric settings, the data's fingerprint). A re-run with the same settings reads
finished cells instead of recomputing them, an interrupted run resumes where it stopped, and cells written with
other settings or another vclib version are never mixed into the result.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.base import clone
from tqdm.auto import tqdm

from vclib import __version__
from vclib import pseudobulk as pbk
from vclib import splits as _splits
from vclib.baselines import BASELINES
from vclib.metrics import CEILING, DE_METRICS, REGISTRY, aggregate, ceiling, compare, evaluate, rank_genes
from vclib.models import MODELS
from vclib.schema import CONTEXT_KEY, CONTROL, PERTURBATION_KEY, VclibInputError

DEFAULT_MODELS = ("no_change", "training_mean", "context_mean", "perturbation_mean", "nearest_context",
                  "additive", "linear", "knn_perturbation", "mlp")
DEFAULT_SPLITS = ("unseen_perturbation", "unseen_context")
INDEX_FILE = "run_index.csv"
SCORE_DTYPES = {"fold": str, "split": str, "context": str, "perturbation": str}


def estimator(name: str, **params):
    """A baseline or model by registry name, with settings.

    Examples
    --------
    >>> import vclib as vc
    >>> vc.benchmark.estimator("linear", d=5)
    Linear(d=5)
    """
    registry = {**BASELINES, **MODELS}
    if name not in registry:
        raise VclibInputError(f"unknown model {name!r}; valid models: {', '.join(registry)}.")
    return registry[name](**params)


def _models(models) -> dict:
    if isinstance(models, dict):
        return dict(models)
    return {name: estimator(name) for name in models}


def fingerprint(adata: ad.AnnData) -> str:
    """A short hash of the data: the condition labels, genes and per-condition mean expression."""
    pb = pbk.pseudobulk(adata)
    h = hashlib.sha256()
    h.update("\n".join(pb.obs_names).encode())
    h.update("\n".join(pb.var_names).encode())
    h.update(np.asarray(pb.obs["n_cells"]).tobytes())
    h.update(np.round(np.asarray(pb.X, dtype=np.float64), 10).tobytes())
    return h.hexdigest()[:16]


def _describe(model) -> dict:
    params = model.get_params() if hasattr(model, "get_params") else {}
    return {"class": type(model).__name__,
            "params": {k: v if isinstance(v, int | float | str | bool | type(None)) else repr(v)
                       for k, v in params.items()}}


def _cell_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _write_atomic(frame: pd.DataFrame, predicted: ad.AnnData, path: Path, settings: dict) -> None:
    """Write a finished cell: predictions first, the scores last, each renamed into place only when complete."""
    path.with_suffix(".json").write_text(json.dumps(settings, indent=1, sort_keys=True, default=str))
    tmp = path.with_suffix(".h5ad.tmp")
    predicted.write_h5ad(tmp)
    os.replace(tmp, path.with_suffix(".h5ad"))
    tmp = path.with_suffix(".csv.tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)


def run(
    data: ad.AnnData,
    *,
    splits: list | tuple = DEFAULT_SPLITS,
    models=DEFAULT_MODELS,
    metrics: list[str] | None = None,
    seeds: list[int] | tuple[int, ...] = (0,),
    results_dir: str | Path | None = None,
    split_options: dict | None = None,
    evaluate_options: dict | None = None,
    include_ceiling: bool = True,
    observed_de=None,
    progress: bool = True,
) -> pd.DataFrame:
    """Score every model on every split fold and seed: the tidy table of :func:`vclib.metrics.evaluate`.

    Parameters
    ----------
    data
        Observed cells in the data contract.
    splits
        Split names (:data:`vclib.splits.SPLITS`) or split tables.
    models
        Model names (baselines and models) or a dict ``{name: estimator}``. Estimators are cloned per cell; a
        ``seed`` setting is replaced by the cell's seed. :class:`vclib.models.ExternalPredictions` are bound to
        each fold with ``select``.
    metrics
        Metric names (default: all).
    seeds
        Seeds of the splits and models.
    results_dir
        Folder for the finished cells (resume and no double work). None: keep nothing on disk.
    split_options
        Options per split name, e.g. ``{"unseen_perturbation": {"n_folds": 3}}``.
    evaluate_options
        Passed to :func:`vclib.metrics.evaluate` (e.g. ``{"exclude": None}``).
    include_ceiling
        Also score the split-half noise ceiling (model ``"ceiling"``, full size) on every fold.
    observed_de
        :func:`vclib.metrics.rank_genes` of ``data`` if already computed (otherwise computed once here).
    progress
        Show a progress bar over the grid.

    Returns
    -------
    DataFrame with columns ``context``, ``perturbation``, ``metric``, ``value``, ``model``, ``split``, ``fold``,
    ``seed``.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=8, n_genes=60, cells_per_condition=20)
    >>> table = vc.benchmark.run(adata, splits=["unseen_context"], models=["no_change", "linear"],
    ...                          metrics=["mse_delta"], progress=False)
    >>> sorted(table["model"].unique())
    ['ceiling', 'linear', 'no_change']
    """
    models = _models(models)
    split_options = split_options or {}
    evaluate_options = evaluate_options or {}
    for name in splits:
        if isinstance(name, str) and name not in _splits.SPLITS:
            raise VclibInputError(f"unknown split {name!r}; valid splits: {', '.join(_splits.SPLITS)}.")
    pb = pbk.pseudobulk(data)
    data_hash = fingerprint(data)
    wants_de = metrics is None or any(m in DE_METRICS for m in metrics)
    if observed_de is None and wants_de:
        observed_de = rank_genes(data)
    cells_dir = Path(results_dir) / "cells" if results_dir is not None else None
    if cells_dir is not None:
        cells_dir.mkdir(parents=True, exist_ok=True)

    grid = []
    for seed in seeds:
        for s in splits:
            table = s if isinstance(s, pd.DataFrame) else _splits.make(s, data, seed=seed,
                                                                        **split_options.get(s, {}))
            for split, fold in _splits.folds(table):
                names = ([CEILING] if include_ceiling else []) + list(models)
                grid += [(name, table, split, fold, seed) for name in names]

    results, index = [], []
    for name, table, split, fold, seed in tqdm(grid, desc="benchmark", disable=not progress):
        model = None if name == CEILING else models[name]
        settings = {"vclib_version": __version__, "data": data_hash, "model": name,
                    "estimator": _describe(model) if model is not None else "split-half ceiling",
                    "split": split, "fold": fold, "seed": seed, "metrics": metrics, "evaluate": evaluate_options,
                    "split_table": _cell_key(table.to_dict("list"))}
        path = None
        if cells_dir is not None:
            path = cells_dir / f"{name}__{split}__{fold}__seed{seed}__{_cell_key(settings)}.csv".replace("/", "-")
            index.append({"model": name, "split": split, "fold": str(fold), "seed": seed,
                          "scores": path.name, "predictions": path.with_suffix(".h5ad").name})
            if path.exists() and path.with_suffix(".h5ad").exists():
                results.append(pd.read_csv(path, dtype=SCORE_DTYPES))
                continue
        frame, predicted = _score_cell(data, pb, model, name, table, split, fold, seed, metrics, observed_de,
                                       evaluate_options)
        if path is not None:
            _write_atomic(frame, predicted, path, settings)
        results.append(frame)
    if cells_dir is not None:
        pd.DataFrame(index).to_csv(Path(results_dir) / INDEX_FILE, index=False)
    return pd.concat(results, ignore_index=True)


def load_predictions(results_dir: str | Path) -> ad.AnnData:
    """The predicted deltas of the last :func:`run` into ``results_dir``, one row per (cell of the grid,
    condition), with obs ``model``, ``split``, ``fold``, ``seed``, ``context``, ``perturbation``.

    Predicted deltas are the prediction minus the control it was built on (the ceiling's: one half of the
    observed cells minus that half's control). Notebook 03 reads them instead of re-running the benchmark.
    """
    results_dir = Path(results_dir)
    if not (results_dir / INDEX_FILE).exists():
        raise VclibInputError(f"{str(results_dir)!r} holds no benchmark run ({INDEX_FILE} missing); run "
                              "vc.benchmark.run(..., results_dir=...) or notebook 02 first.")
    index = pd.read_csv(results_dir / INDEX_FILE, dtype={"fold": str, "split": str})
    parts = []
    for row in index.itertuples(index=False):
        part = ad.read_h5ad(results_dir / "cells" / row.predictions)
        for key in ("model", "split", "fold", "seed"):
            part.obs[key] = getattr(row, key)
        part.obs_names = [f"{row.model}|{row.split}|{row.fold}|{row.seed}|{n}" for n in part.obs_names]
        parts.append(part)
    return ad.concat(parts, merge="same")


def _predicted_deltas(predicted: ad.AnnData, controls: ad.AnnData, test: list[str]) -> ad.AnnData:
    """Prediction minus the control of its context, for the test conditions, as float32."""
    if predicted.obs.groupby([CONTEXT_KEY, PERTURBATION_KEY], observed=True).size().max() > 1:
        predicted = pbk.pseudobulk(predicted)
    rows = predicted[test]
    ctrl = np.asarray(controls[[f"{c}|{CONTROL}" for c in rows.obs[CONTEXT_KEY].astype(str)]].X)
    obs = rows.obs[[CONTEXT_KEY, PERTURBATION_KEY]].astype(str)
    return ad.AnnData(X=(np.asarray(rows.X, dtype=np.float64) - ctrl).astype(np.float32), obs=obs,
                      var=pd.DataFrame(index=rows.var_names.copy()))


def _score_cell(data, pb, model, name, table, split, fold, seed, metrics, observed_de, evaluate_options):
    test = _splits.roles(table, split, fold).get("test", [])
    if name == CEILING:
        frame = ceiling(data, full_size=True, seed=seed, conditions=test, metrics=metrics, **evaluate_options)
        half = pbk.pseudobulk(data[pbk.half_labels(data, seed=seed) == 0])  # the half ceiling() predicts with
        predicted = _predicted_deltas(half, half, test)
    else:
        train = _splits.training_data(pb, table, split, fold)
        model = model.select(split, fold) if hasattr(model, "select") else clone(model)
        if "seed" in model.get_params():
            model.set_params(seed=seed)
        model.fit(train)
        _splits.check_leakage(model.training_conditions_, table, split, fold)
        prediction = model.predict(test)
        frame = evaluate(prediction, data, conditions=test, metrics=metrics, observed_de=observed_de,
                         model=name, **evaluate_options)
        predicted = _predicted_deltas(prediction, pb, test)
    frame["model"] = name
    frame["split"] = split
    frame["fold"] = str(fold)
    frame["seed"] = seed
    return frame, predicted


def best_models(
    scores: pd.DataFrame,
    *,
    metrics: list[str] | None = None,
    baselines: list[str] | None = None,
    n_boot: int = 1000,
    seed: int | None = 0,
) -> pd.DataFrame:
    """Who wins where: per split and metric, the best model, the best baseline, and whether the first beats the
    second beyond the noise, with the calibrated score ``(u − b) / (c − b)`` against that best baseline. Models
    with more than 10% undefined values on a metric are not ranked on it.

    Parameters
    ----------
    scores
        :func:`run` output (with the ``ceiling`` rows for calibration).
    metrics
        Metrics to report (default all in ``scores``).
    baselines
        Model names that count as baselines (default: the names of :data:`vclib.baselines.BASELINES`).
    n_boot, seed
        Bootstrap resamples and seed of the paired comparison.

    Returns
    -------
    One row per (split, metric): ``best_model``, ``best_mean``, ``best_baseline``, ``baseline_mean``,
    ``ceiling``, ``beats_best_baseline`` (``yes`` / ``tie`` / ``no``, or ``a baseline is best``) with the paired
    ``difference`` and its CI, and ``calibrated``; and for the best learned (non-baseline) model, wherever it
    ranks: ``best_learned``, ``learned_mean``, ``learned_vs_baseline`` and ``learned_calibrated``.
    """
    baselines = list(BASELINES) if baselines is None else list(baselines)
    summary = aggregate(scores, n_boot=n_boot, seed=seed)
    rows = []
    for (split, metric), group in summary[summary["model"] != CEILING].groupby(["split", "metric"], sort=True):
        if metrics is not None and metric not in metrics:
            continue
        # a model scored on only some conditions (e.g. the additive baseline's correlations, undefined for
        # singles) cannot be ranked by a mean over a different set: it needs 90% of its conditions defined
        group = group[group["n"] >= 0.9 * (group["n"] + group["n_nan"])].dropna(subset=["mean"])
        base = group[group["model"].isin(baselines)]
        if group.empty or base.empty:
            continue
        pick = (lambda g: g.loc[g["mean"].idxmax()]) if REGISTRY[metric].higher_is_better else \
            (lambda g: g.loc[g["mean"].idxmin()])
        best, best_base = pick(group), pick(base)
        ceiling_rows = summary[(summary["model"] == CEILING) & (summary["split"] == split)
                               & (summary["metric"] == metric)]
        c = ceiling_rows["mean"].iloc[0] if len(ceiling_rows) else np.nan
        span = c - best_base["mean"]
        row = {"split": split, "metric": metric, "best_model": best["model"], "best_mean": best["mean"],
               "best_baseline": best_base["model"], "baseline_mean": best_base["mean"], "ceiling": c,
               "beats_best_baseline": "a baseline is best", "difference": 0.0, "ci_low": np.nan,
               "ci_high": np.nan, "calibrated": (best["mean"] - best_base["mean"]) / span if span else np.nan}
        learned = group[~group["model"].isin(baselines)]
        if len(learned):  # the best learned model, however it ranks, against the best baseline
            model = pick(learned)
            pair = scores[(scores["split"] == split) & (scores["metric"] == metric)
                          & scores["model"].isin([model["model"], best_base["model"]])]
            diff = compare(pair, baseline=best_base["model"], n_boot=n_boot, seed=seed).iloc[0]
            row.update(best_learned=model["model"], learned_mean=model["mean"], learned_vs_baseline=diff["better"],
                       learned_calibrated=(model["mean"] - best_base["mean"]) / span if span else np.nan)
            if model["model"] == best["model"]:
                row.update(beats_best_baseline=diff["better"], difference=diff["difference"],
                           ci_low=diff["ci_low"], ci_high=diff["ci_high"])
        rows.append(row)
    return pd.DataFrame(rows)
