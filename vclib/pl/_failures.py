"""Plots of failures: regime maps, error against covariates, hit-rate curves, spread, predicted vs observed."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from vclib.failures import predicted_delta, scored_against
from vclib.metrics import CEILING
from vclib.pl._base import axes as _axes
from vclib.pl._base import (
    bounded,
    empty,
    grouped_differences,
    legend_outside,
    number,
    place_labels,
    robust_limits,
    row_labels,
    verdict_legend,
    why_empty,
)
from vclib.schema import condition_id


def regime_map(regimes: pd.DataFrame, *, ax: plt.Axes | None = None) -> plt.Axes:
    """Model − baseline per covariate stratum with 95% CIs (output of :func:`vclib.failures.regime_map`), one
    block of strata per split, each stratum labelled with its range of the covariate and its n.

    Green: the model wins; red: it loses; grey: a tie within the noise; light grey: too few conditions for a
    verdict.

    Examples
    --------
    >>> import pandas as pd
    >>> r = pd.DataFrame({"model": "m", "split": "s", "stratum": ["0–2", "3"], "difference": [0.1, -0.1],
    ...                   "ci_low": [0.05, -0.2], "ci_high": [0.2, 0.05], "verdict": ["wins", "ties"],
    ...                   "covariate": "x", "metric": "pearson_delta", "n": [12, 9]})
    >>> [t.get_text() for t in regime_map(r).get_yticklabels()]  # the split, then its strata
    ['s', '0–2 (n = 12)', '3 (n = 9)']
    """
    rows = regimes.reset_index(drop=True)
    if rows.empty:
        return empty(_axes(ax, (6, 2)), "strata", why_empty(regimes, "no condition has this covariate"))
    label = rows["stratum"].astype(str)
    if "n" in rows:
        few = rows["verdict"].astype(str).str.startswith("too few")
        label = label + np.where(few, " (too few, n = ", " (n = ") + rows["n"].map(number) + ")"
    colour = rows["verdict"].map({"wins": "C2", "loses": "C3", "ties": "0.5"}).fillna("0.8")
    ax = grouped_differences(rows, group="split", label=label, colour=colour, ax=ax)
    covariate = rows["covariate"].iloc[0]
    baseline = rows["baseline"].iloc[0] if "baseline" in rows else "baseline"
    ax.set_xlabel(f"{rows['metric'].iloc[0]}: {rows['model'].iloc[0]} − {baseline}")
    ax.set_title(f"by {covariate.replace('_', ' ')}", fontsize="medium")
    verdict_legend(ax, [("wins", "C2"), ("loses", "C3"), ("ties", "0.5"), ("too few conditions", "0.8")])
    return ax


def error_vs_covariate(table: pd.DataFrame, *, metric: str, covariate: str, models: list[str] | None = None,
                       ax: plt.Axes | None = None) -> plt.Axes:
    """Per-condition score against a covariate, one colour per model, with the mean per bin of the covariate
    (per value when it takes few integer values, the models then side by side).

    The y axis spans the central 98% of the scores and the binned means, so a few outliers cannot flatten the
    rest: points beyond it are drawn on the edge as triangles and a note says how many there are and how far
    they reach.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"model": "m", "metric": "mse", "value": [1.0, 2.0, 3.0], "x": [0.1, 0.5, 0.9]})
    >>> ax = error_vs_covariate(t, metric="mse", covariate="x")
    """
    rows = table[table["metric"] == metric].dropna(subset=[covariate, "value"])
    if models is not None:
        rows = rows[rows["model"].isin(models)]
    ax = _axes(ax, (7, 4))
    if rows.empty:
        return empty(ax, f"conditions with {covariate}",
                     why_empty(table, f"no scored condition has a {covariate} value"))
    x_all = rows[covariate].to_numpy(dtype=float)
    distinct = np.unique(x_all)
    discrete = len(distinct) <= 12 and np.allclose(distinct, np.round(distinct))
    groups = list(rows.groupby("model", sort=True))
    width = 0.6 if discrete else 0.0
    lines = []
    for k, (model, group) in enumerate(groups):
        x = group[covariate].to_numpy(dtype=float)
        if discrete:  # models side by side around each integer value
            offset = (k + 0.5) / len(groups) * width - width / 2
            jitter = np.random.default_rng(k).uniform(-0.35, 0.35, len(x)) * width / len(groups)
            means = group.groupby(covariate).agg(x=(covariate, "mean"), y=("value", "mean"))
            means["x"] += offset
            x = x + offset + jitter
        else:
            bins = pd.qcut(group[covariate], q=min(6, group[covariate].nunique()), duplicates="drop")
            means = group.groupby(bins, observed=True).agg(x=(covariate, "mean"), y=("value", "mean"))
        lines.append((k, model, x, group["value"].to_numpy(dtype=float), means))
    low, high, n_below, n_above = robust_limits(rows["value"], always=np.concatenate([m["y"] for *_, m in lines]))
    for k, model, x, y, means in lines:
        inside = (y >= low) & (y <= high)
        ax.scatter(x[inside], y[inside], s=8, alpha=0.35, color=f"C{k}")
        above, below = y > high, y < low
        ax.scatter(x[above], np.full(above.sum(), high), marker="^", s=14, color=f"C{k}", clip_on=False, zorder=4)
        ax.scatter(x[below], np.full(below.sum(), low), marker="v", s=14, color=f"C{k}", clip_on=False, zorder=4)
        ax.plot(means["x"], means["y"], "-o", color=f"C{k}", label=model, ms=4, zorder=5)
    ax.set_ylim(low, high)
    beyond = []
    values = rows["value"].to_numpy(dtype=float)
    if n_above:
        beyond.append(f"{n_above} point{'s' if n_above > 1 else ''} above {number(high)} (up to "
                      f"{number(values.max())})")
    if n_below:
        beyond.append(f"{n_below} point{'s' if n_below > 1 else ''} below {number(low)} (down to "
                      f"{number(values.min())})")
    if beyond:  # in the title's place, clear of the points drawn on the edge
        ax.set_title("; ".join(beyond) + ",\ndrawn on the edge (▲▼)", fontsize=8, color="0.3")
    if discrete:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(distinct.min() - 0.6, distinct.max() + 0.6)
    ax.set_xlabel(covariate.replace("_", " "))
    ax.set_ylabel(metric)
    legend_outside(ax, title="model (line: mean per bin)")
    return ax


def hit_rate_curves(curves: pd.DataFrame, *, split: str | None = None, ax: plt.Axes | None = None) -> plt.Axes:
    """Hit rate at k for each model (output of :func:`vclib.failures.hit_rate_curves`), with the best possible
    ranking (dashed) and chance (dotted).

    Examples
    --------
    >>> import pandas as pd
    >>> c = pd.DataFrame({"model": "m", "split": "s", "k": [1, 2], "hit_rate": [1.0, 0.5],
    ...                   "best_possible": [1.0, 1.0], "chance": [0.4, 0.4]})
    >>> ax = hit_rate_curves(c)
    """
    rows = curves if split is None else curves[curves["split"] == split]
    ax = _axes(ax, (6, 4))
    if rows.empty:
        return empty(ax, "hit-rate curves", why_empty(curves, "no test condition has enough DE genes"))
    models = [m for m in sorted(rows["model"].unique()) if m != "ceiling"]
    for k, model in enumerate(models):
        part = rows[rows["model"] == model].groupby("k", as_index=False)["hit_rate"].mean()
        ax.plot(part["k"], part["hit_rate"], color=f"C{k}", label=model)
    if "ceiling" in set(rows["model"]):
        part = rows[rows["model"] == "ceiling"].groupby("k", as_index=False)["hit_rate"].mean()
        ax.plot(part["k"], part["hit_rate"], color="k", lw=2, label="ceiling (replicate half)")
    ref = rows.groupby("k", as_index=False)[["best_possible", "chance"]].mean()
    ax.plot(ref["k"], ref["best_possible"], "k--", lw=1, label="best possible")
    ax.plot(ref["k"], ref["chance"], "k:", lw=1, label="chance")
    ax.set_xlabel("k (perturbations predicted to act most strongly)")
    ax.set_ylabel("fraction of the top k that are real hits")
    ax.set_ylim(0, 1.05)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    legend_outside(ax, where="below", ncol=3)
    return ax


def spread(collapse: pd.DataFrame, *, ax: plt.Axes | None = None) -> plt.Axes:
    """Spread of predictions relative to observations per model (output of :func:`vclib.failures.mode_collapse`);
    1 = as varied as the data, 0 = the same prediction for every perturbation (such bars, too thin to see, are
    written "0").

    Examples
    --------
    >>> import pandas as pd
    >>> c = pd.DataFrame({"model": ["a", "b"], "split": "s", "spread_ratio": [0.1, 0.9]})
    >>> ax = spread(c)
    """
    ax = _axes(ax, (6.5, 0.45 * collapse["model"].nunique() + 1.5))
    if collapse.empty:
        return empty(ax, "spread of predictions", why_empty(collapse, "no fold has two test conditions"))
    order = collapse.groupby("model")["spread_ratio"].mean().sort_values().index
    data = collapse if "split" in collapse else collapse.assign(split="")
    splits = list(dict.fromkeys(data["split"]))
    sns.barplot(data, y="model", x="spread_ratio", hue="split", order=order, hue_order=splits, ax=ax, errorbar=None)
    ax.axvline(1, color="k", lw=0.8, ls="--")
    means = data.groupby(["model", "split"])["spread_ratio"].mean()
    right = max(1.1, float(np.nanmax(means)) * 1.08) if means.notna().any() else 1.1
    ax.set_xlim(0, right)
    height = 0.8 / len(splits)
    for (model, split), value in means.items():  # a zero-width bar is invisible: write its value
        if np.isfinite(value) and abs(value) < 0.005 * right:
            y = list(order).index(model) - 0.4 + (splits.index(split) + 0.5) * height
            ax.text(0.01 * right, y, "0", va="center", fontsize=7, color="0.3")
    row_labels(ax, range(len(order)), list(order))
    ax.set_ylabel("")
    ax.set_xlabel("spread of predicted deltas / spread of observed deltas (dashed: as varied as the data)")
    if ax.get_legend() is not None:
        ax.get_legend().remove()
        if splits != [""]:
            legend_outside(ax, title="split")
    return ax


def delta_scatter(predicted: np.ndarray, observed: np.ndarray, *, title: str = "", genes=None,
                  ax: plt.Axes | None = None, label_top: int = 5, xlabel: str = "observed delta",
                  ylabel: str = "predicted delta", r_label: str = "Pearson r") -> plt.Axes:
    """Predicted against observed delta of one condition, one point per gene, with the diagonal; the genes that
    change most are named where their label has room (labels never overlap). The title ends with the Pearson r
    of the points drawn (``r_label`` names it).

    Examples
    --------
    >>> import numpy as np
    >>> ax = delta_scatter(np.array([0.1, -0.2, 0.5]), np.array([0.2, -0.1, 0.9]), genes=["a", "b", "c"])
    """
    predicted, observed = np.asarray(predicted, dtype=float).ravel(), np.asarray(observed, dtype=float).ravel()
    ax = _axes(ax, (4, 4))
    ax.scatter(observed, predicted, s=6, alpha=0.5)
    lim = np.nanmax(np.abs(np.r_[predicted, observed, 1e-9])) * 1.08
    ax.plot([-lim, lim], [-lim, lim], color="k", lw=0.8)
    ax.axhline(0, color="0.8", lw=0.5)
    ax.axvline(0, color="0.8", lw=0.5)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal", adjustable="box")
    if genes is not None and label_top:
        top = np.argsort(-np.abs(observed))[:label_top]
        place_labels(ax, observed[top], predicted[top], [genes[i] for i in top])
    r = np.corrcoef(predicted, observed)[0, 1] if np.ptp(predicted) > 0 and np.ptp(observed) > 0 else np.nan
    line = f"{r_label} = {r:.2f}" if np.isfinite(r) else f"{r_label} undefined (a constant side)"
    ax.set_title(f"{title}\n{line}" if title else line, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return ax


def prediction_scatter(predictions, observed, *, model: str, split: str, fold, context: str, perturbation: str,
                       metric: str | None = None, score: float | None = None, label_top: int = 5,
                       ax: plt.Axes | None = None) -> plt.Axes:
    """One saved prediction against what it was scored against, so that the plot and the score agree.

    A model's predicted delta is drawn against the condition's observed delta. The noise ceiling's "prediction" is
    one half of the cells, scored against the other half: it is drawn against that half (from
    :func:`vclib.failures.scored_against`), with the half-vs-half r and its noise-corrected value (the ceiling's
    ``pearson_delta``). Drawing it against the whole data, which contains the same cells, would show their shared
    noise as agreement (r = 0.84 where the ceiling scores 0.56).

    Parameters
    ----------
    predictions
        :func:`vclib.benchmark.load_predictions` output.
    observed
        Observed deltas (:func:`vclib.pseudobulk.deltas`), rows ``"context|perturbation"``.
    model, split, fold, context, perturbation
        The prediction to show.
    metric, score
        The condition's score, shown in the title (e.g. ``"pearson_delta"``, 0.561).
    label_top
        Genes named (those that change most).
    """
    ax = _axes(ax, (4.5, 4.5))
    name = condition_id(context, perturbation)
    pred = predicted_delta(predictions, model=model, split=split, fold=fold, context=context,
                           perturbation=perturbation)
    against = scored_against(predictions, observed, model=model, split=split, fold=fold, context=context,
                             perturbation=perturbation)
    if pred is None or against is None:
        why = (f"{model} has no prediction for {name} in {split} fold {fold}" if pred is None else
               "the ceiling's other half was not saved by this benchmark run (re-run notebook 02 with this vclib)"
               if model == CEILING else f"{name} has no observed delta")
        return empty(ax, "scatter", why)
    genes = list(observed.var_names)
    head = f"{model} · {split}\n{name}"
    stated = f"{metric} = {score:.3f}" if metric is not None and score is not None and np.isfinite(score) else ""
    if model == CEILING:
        delta_scatter(pred, against, genes=genes, ax=ax, label_top=label_top, title=head,
                      xlabel="observed delta, replicate half B", ylabel="observed delta, half A (the 'prediction')",
                      r_label="half vs half r")
        r = np.corrcoef(pred, against)[0, 1] if np.ptp(pred) > 0 and np.ptp(against) > 0 else np.nan
        corrected = math.sqrt(max(2 * r / (1 + r), 0)) if np.isfinite(r) and r > -1 else np.nan
        ax.set_title(f"{ax.get_title()}, noise-corrected {corrected:.2f}" + (f"\n({stated})" if stated else ""),
                     fontsize=9)
        return ax
    if metric == "pearson_delta" and stated:  # the r of the points is the score: say it once
        return delta_scatter(pred, against, genes=genes, ax=ax, label_top=label_top, title=head,
                             r_label="pearson_delta")
    return delta_scatter(pred, against, genes=genes, ax=ax, label_top=label_top,
                         title=f"{head}\n{stated}" if stated else head)


def failure_gallery(worst: pd.DataFrame, predictions, observed, *, model: str, axes=None,
                    ncols: int = 3) -> np.ndarray:
    """Predicted against observed delta for each row of :func:`vclib.failures.worst_conditions` (what each
    prediction was scored against: see :func:`prediction_scatter`), ``ncols`` panels a row, the score in each
    title; returns the Axes used.

    Examples
    --------
    >>> import anndata as ad, numpy as np, pandas as pd
    >>> obs = pd.DataFrame({"model": "m", "split": "s", "fold": "0", "context": "c", "perturbation": "p"},
    ...                    index=["m|p"])
    >>> pred = ad.AnnData(np.ones((1, 3), dtype=np.float32), obs=obs)
    >>> observed = ad.AnnData(np.ones((1, 3), dtype=np.float32), obs=pd.DataFrame(index=["c|p"]))
    >>> axes = failure_gallery(obs.reset_index(drop=True), pred, observed, model="m")
    """
    n = max(len(worst), 1)
    if axes is None:
        ncols = max(1, min(ncols, n))
        nrows = math.ceil(n / ncols)
        fig, grid = plt.subplots(nrows, ncols, figsize=bounded((3.9 * ncols, 4.0 * nrows + 0.3)), squeeze=False)
        fig.subplots_adjust(left=0.08, right=0.98, bottom=0.07, top=0.92, wspace=0.45, hspace=0.6)
        for ax in grid.ravel()[n:]:
            ax.remove()
        axes = grid.ravel()[:n]
    axes = np.asarray(axes).ravel()
    if worst.empty:
        empty(axes[0], "conditions to show", why_empty(worst, "nothing was scored for this model"))
    for ax, row in zip(axes, worst.itertuples(index=False), strict=False):
        prediction_scatter(predictions, observed, model=model, split=row.split, fold=row.fold, context=row.context,
                           perturbation=row.perturbation, metric=getattr(row, "metric", None),
                           score=getattr(row, "value", None), ax=ax)
    return axes
