"""From per-condition scores to conclusions: bootstrap CIs, paired differences, noise ceiling, calibration."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from vclib import pseudobulk as pbk
from vclib.metrics._evaluate import REGISTRY, evaluate
from vclib.schema import CONTEXT_KEY, CONTROL, PERTURBATION_KEY

CEILING = "ceiling"


def _bootstrap_ci(values: np.ndarray, n_boot: int, ci: float, rng: np.random.Generator) -> np.ndarray:
    """Percentile interval of the mean over ``n_boot`` resamples of ``values``."""
    idx = rng.integers(0, values.size, size=(n_boot, values.size))
    return np.quantile(values[idx].mean(axis=1), [(1 - ci) / 2, (1 + ci) / 2])


def _group_keys(table: pd.DataFrame, by) -> list[str]:
    return [k for k in by if k in table.columns]


def aggregate(
    table: pd.DataFrame,
    *,
    by: tuple[str, ...] = ("model", "split", "metric"),
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int | None = 0,
) -> pd.DataFrame:
    """Mean of each metric with a bootstrap confidence interval over perturbations.

    Parameters
    ----------
    table
        Output of :func:`evaluate` (or several concatenated).
    by
        Grouping columns (those present are used); add ``"context"`` for per-context summaries.
    n_boot, ci, seed
        Bootstrap resamples of the rows (perturbations), interval level and seed.

    Returns
    -------
    One row per group: ``mean``, ``ci_low``, ``ci_high``, ``n`` (scored rows) and ``n_nan`` (undefined values,
    left out of the mean).

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"metric": "mse", "value": [1.0, 2.0, 3.0]})
    >>> aggregate(t)[["metric", "mean", "n"]].to_dict("records")
    [{'metric': 'mse', 'mean': 2.0, 'n': 3}]
    """
    rng = np.random.default_rng(seed)
    keys = _group_keys(table, by)
    rows = []
    for key, group in table.groupby(keys, sort=True, observed=True):
        values = group["value"].to_numpy(dtype=np.float64)
        finite = values[np.isfinite(values)]
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        if finite.size:
            low, high = _bootstrap_ci(finite, n_boot, ci, rng)
        else:
            low = high = np.nan
        row.update(mean=finite.mean() if finite.size else np.nan, ci_low=low, ci_high=high, n=finite.size,
                   n_nan=values.size - finite.size)
        rows.append(row)
    return pd.DataFrame(rows)


def compare(
    table: pd.DataFrame,
    *,
    baseline: str,
    by: tuple[str, ...] = ("split", "metric"),
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int | None = 0,
) -> pd.DataFrame:
    """Paired difference model − baseline on the same conditions, with a bootstrap CI over perturbations.

    Parameters
    ----------
    table
        Concatenated :func:`evaluate` outputs with a ``model`` column holding ``baseline``.
    baseline
        The model every other model is compared with.
    by
        Grouping columns besides ``model``.

    Returns
    -------
    One row per (model, group): ``difference`` (mean of model − baseline), ``ci_low``, ``ci_high``, ``n``,
    and ``better``: ``"yes"`` / ``"no"`` when the CI excludes 0 in the metric's good / bad direction,
    ``"tie"`` otherwise.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"model": ["a"] * 3 + ["b"] * 3, "metric": "mse", "context": "c",
    ...                   "perturbation": ["x", "y", "z"] * 2, "value": [1.0, 1.0, 1.0, 2.0, 2.1, 1.9]})
    >>> compare(t, baseline="b")[["model", "difference", "better"]].round(2).to_dict("records")
    [{'model': 'a', 'difference': -1.0, 'better': 'yes'}]
    """
    if baseline not in set(table["model"]):
        raise ValueError(f"baseline {baseline!r} not among the models: {sorted(set(table['model']))}.")
    rng = np.random.default_rng(seed)
    keys = _group_keys(table, by)
    pair = [k for k in (*keys, CONTEXT_KEY, PERTURBATION_KEY) if k in table.columns]
    base = table[table["model"] == baseline].set_index(pair)["value"]
    rows = []
    for model, own in table[table["model"] != baseline].groupby("model", sort=True):
        joined = own.set_index(pair)["value"].to_frame("model").join(base.rename("baseline"), how="inner")
        joined = joined.reset_index()
        for key, group in joined.groupby(keys, sort=True, observed=True):
            diff = (group["model"] - group["baseline"]).to_numpy(dtype=np.float64)
            diff = diff[np.isfinite(diff)]
            row = {"model": model, **dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))}
            if diff.size == 0:
                rows.append({**row, "difference": np.nan, "ci_low": np.nan, "ci_high": np.nan, "n": 0,
                             "better": "n/a"})
                continue
            low, high = _bootstrap_ci(diff, n_boot, ci, rng)
            metric = row.get("metric")
            sign = 1 if metric not in REGISTRY or REGISTRY[metric].higher_is_better else -1
            lo, hi = sorted((sign * low, sign * high))
            better = "yes" if lo > 0 else "no" if hi < 0 else "tie"
            rows.append({**row, "difference": diff.mean(), "ci_low": low, "ci_high": high, "n": diff.size,
                         "better": better})
    return pd.DataFrame(rows)


def ceiling(
    observed: ad.AnnData,
    *,
    full_size: bool = False,
    seed: int | None = 0,
    **options,
) -> pd.DataFrame:
    """Split-half noise ceiling: half of each condition's observed cells scored as the prediction of the rest.

    Every condition's cells (controls included) are split into two disjoint random halves; half 0 is the
    "prediction" (with its own control) and half 1 the observation, with DE recomputed on both.

    Parameters
    ----------
    observed
        Observed cells in the data contract.
    full_size
        Estimate the agreement of two *full-size* replicates from the two halves: Spearman–Brown
        ``2r / (1 + r)`` for correlation metrics; squared errors × 1/2 and absolute errors × 1/√2 (a half has
        twice the sampling variance of the whole). Other metrics are left as measured (see
        ``REGISTRY[name].full_size``). A model that knew the true means would score better than this
        replicate ceiling (half its squared error; correlation ``sqrt(2r/(1+r))``), so calibrated scores can
        exceed 1.
    seed
        Seed of the split.
    **options
        Passed to :func:`evaluate` (e.g. ``metrics=``, ``conditions=``).

    Returns
    -------
    The :func:`evaluate` table with ``model = "ceiling"``.

    References
    ----------
    Spearman (1910), Brown (1910); cell-eval 0.8.2 ``--ceiling``.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=6, n_genes=60, cells_per_condition=30)
    >>> c = vc.metrics.ceiling(adata, metrics=["pearson_delta"])
    >>> bool(c["value"].mean() > 0.5)
    True
    """
    half = pbk.half_labels(observed, seed=seed)
    first, second = observed[half == 0].copy(), observed[half == 1].copy()
    table = evaluate(first, second, **{**options, "predicted_control": "predicted", "model": CEILING})
    if full_size:
        table["value"] = to_full_size(table)
    return table


def to_full_size(table: pd.DataFrame) -> pd.Series:
    """Split-half values corrected to full size, per the metric's ``full_size`` rule (see :func:`ceiling`)."""
    rule = table["metric"].map(lambda m: REGISTRY[m].full_size if m in REGISTRY else None)
    r = table["value"]
    out = r.where(rule != "spearman_brown", 2 * r / (1 + r))
    out = out.where(rule != "squared", r / 2)
    return out.where(rule != "absolute", r / np.sqrt(2))


def calibrate(summary: pd.DataFrame, *, baseline: str, ceiling_model: str = CEILING) -> pd.DataFrame:
    """Calibrated score ``(u − b) / (c − b)`` per model: 0 = the baseline, 1 = the noise ceiling.

    Not clipped: below 0 is worse than the baseline, above 1 beyond the replicate agreement. Where the
    ceiling equals the baseline the score is undefined (NaN).

    Parameters
    ----------
    summary
        Output of :func:`aggregate` holding the models, ``baseline`` and ``ceiling_model``.
    baseline
        Name of the baseline model ``b``.
    ceiling_model
        Name of the ceiling rows ``c``.

    Returns
    -------
    ``summary`` for the other models with columns ``baseline_mean``, ``ceiling_mean`` and ``calibrated``.

    Examples
    --------
    >>> import pandas as pd
    >>> s = pd.DataFrame({"model": ["m", "b", "ceiling"], "metric": "pearson_delta", "mean": [0.5, 0.2, 0.8]})
    >>> calibrate(s, baseline="b")["calibrated"].round(3).tolist()
    [0.5]
    """
    keys = [k for k in summary.columns if k not in ("model", "mean", "ci_low", "ci_high", "n", "n_nan")]
    for name in (baseline, ceiling_model):
        if name not in set(summary["model"]):
            raise ValueError(f"{name!r} not among the models of the summary: {sorted(set(summary['model']))}.")
    ref = lambda name: summary[summary["model"] == name].set_index(keys)["mean"]  # noqa: E731
    out = summary[~summary["model"].isin([baseline, ceiling_model])].join(
        ref(baseline).rename("baseline_mean"), on=keys).join(ref(ceiling_model).rename("ceiling_mean"), on=keys)
    span = out["ceiling_mean"] - out["baseline_mean"]
    out["calibrated"] = (out["mean"] - out["baseline_mean"]) / span.where(span != 0)
    return out.reset_index(drop=True)


def predict_control(observed: ad.AnnData, conditions: list[str] | None = None) -> ad.AnnData:
    """Pseudobulk "prediction" that every perturbation leaves its context's control unchanged.

    Useful as the trivial reference: its delta metrics take their no-change values.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=4, n_genes=50, cells_per_condition=10)
    >>> pred = vc.metrics.predict_control(adata)
    >>> float(vc.metrics.evaluate(pred, adata, metrics=["mse_delta"])["value"].min()) > 0
    True
    """
    pb = pbk.pseudobulk(observed)
    perturbed = pb[~pb.obs["is_control"].to_numpy()]
    if conditions is not None:
        perturbed = perturbed[list(conditions)]
    controls = pb[[f"{c}|{CONTROL}" for c in perturbed.obs[CONTEXT_KEY].astype(str)]]
    return ad.AnnData(X=np.asarray(controls.X).copy(), obs=perturbed.obs.copy(), var=pb.var.copy())
