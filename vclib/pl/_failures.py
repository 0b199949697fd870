"""Plots of failures: regime maps, error against covariates, hit-rate curves, spread, predicted vs observed."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from vclib.failures import predicted_delta
from vclib.pl._base import axes as _axes
from vclib.pl._base import differences, empty, why_empty


def regime_map(regimes: pd.DataFrame, *, ax: plt.Axes | None = None) -> plt.Axes:
    """Model − baseline per covariate stratum with 95% CIs (output of :func:`vclib.failures.regime_map`).

    Green: the model wins; red: it loses; grey: a tie within the noise.

    Examples
    --------
    >>> import pandas as pd
    >>> r = pd.DataFrame({"model": "m", "split": "s", "stratum": ["low", "high"], "difference": [0.1, -0.1],
    ...                   "ci_low": [0.05, -0.2], "ci_high": [0.2, 0.05], "verdict": ["wins", "ties"],
    ...                   "covariate": "x", "metric": "pearson_delta"})
    >>> ax = regime_map(r)
    """
    rows = regimes.reset_index(drop=True)
    if rows.empty:
        return empty(_axes(ax, (6, 2)), "strata", why_empty(regimes, "no condition has this covariate"))
    labels = (rows["split"] + " · " if "split" in rows else "") + rows["stratum"].astype(str)
    ax = _axes(ax, (6, 0.4 * len(rows) + 1.5))
    colours = rows["verdict"].map({"wins": "C2", "loses": "C3", "ties": "0.5"}).fillna("0.8")
    differences(rows, labels, colours, ax=ax)
    covariate = rows["covariate"].iloc[0] if len(rows) else ""
    metric = rows["metric"].iloc[0] if len(rows) else ""
    ax.set_xlabel(f"{metric}: {rows['model'].iloc[0] if len(rows) else 'model'} − baseline")
    ax.set_title(f"by {covariate}")
    return ax


def error_vs_covariate(table: pd.DataFrame, *, metric: str, covariate: str, models: list[str] | None = None,
                       ax: plt.Axes | None = None) -> plt.Axes:
    """Per-condition score against a covariate, one colour per model, with a lowess-free binned mean line.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"model": "m", "metric": "mse", "value": [1.0, 2.0, 3.0], "x": [0.1, 0.5, 0.9]})
    >>> ax = error_vs_covariate(t, metric="mse", covariate="x")
    """
    rows = table[table["metric"] == metric].dropna(subset=[covariate, "value"])
    if models is not None:
        rows = rows[rows["model"].isin(models)]
    ax = _axes(ax, (6, 4))
    if rows.empty:
        return empty(ax, f"conditions with {covariate}",
                     why_empty(table, f"no scored condition has a {covariate} value"))
    for k, (model, group) in enumerate(rows.groupby("model", sort=True)):
        ax.scatter(group[covariate], group["value"], s=8, alpha=0.35, color=f"C{k}")
        bins = pd.qcut(group[covariate], q=min(6, group[covariate].nunique()), duplicates="drop")
        means = group.groupby(bins, observed=True).agg(x=(covariate, "mean"), y=("value", "mean"))
        ax.plot(means["x"], means["y"], "-o", color=f"C{k}", label=model, ms=4)
    ax.set_xlabel(covariate)
    ax.set_ylabel(metric)
    ax.legend(fontsize="small")
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
    ax.legend(fontsize="small", ncol=2)
    return ax


def spread(collapse: pd.DataFrame, *, ax: plt.Axes | None = None) -> plt.Axes:
    """Spread of predictions relative to observations per model (output of :func:`vclib.failures.mode_collapse`);
    1 = as varied as the data, 0 = the same prediction for every perturbation.

    Examples
    --------
    >>> import pandas as pd
    >>> c = pd.DataFrame({"model": ["a", "b"], "split": "s", "spread_ratio": [0.1, 0.9]})
    >>> ax = spread(c)
    """
    ax = _axes(ax, (6, 0.35 * collapse["model"].nunique() + 1.5))
    if collapse.empty:
        return empty(ax, "spread of predictions", why_empty(collapse, "no fold has two test conditions"))
    order = collapse.groupby("model")["spread_ratio"].mean().sort_values().index
    sns.barplot(collapse, y="model", x="spread_ratio", hue="split" if "split" in collapse else None, order=order,
                ax=ax, errorbar=None)
    ax.axvline(1, color="k", lw=0.8, ls="--")
    ax.set_xlabel("spread of predicted deltas / spread of observed deltas")
    return ax


def delta_scatter(predicted: np.ndarray, observed: np.ndarray, *, title: str = "", genes=None,
                  ax: plt.Axes | None = None, label_top: int = 5) -> plt.Axes:
    """Predicted against observed delta of one condition, one point per gene, with the diagonal.

    Examples
    --------
    >>> import numpy as np
    >>> ax = delta_scatter(np.array([0.1, -0.2, 0.5]), np.array([0.2, -0.1, 0.9]), genes=["a", "b", "c"])
    """
    predicted, observed = np.asarray(predicted, dtype=float).ravel(), np.asarray(observed, dtype=float).ravel()
    ax = _axes(ax, (4, 4))
    ax.scatter(observed, predicted, s=6, alpha=0.5)
    lim = np.nanmax(np.abs(np.r_[predicted, observed, 1e-9])) * 1.05
    ax.plot([-lim, lim], [-lim, lim], color="k", lw=0.8)
    ax.axhline(0, color="0.8", lw=0.5)
    ax.axvline(0, color="0.8", lw=0.5)
    if genes is not None:
        for i in np.argsort(-np.abs(observed))[:label_top]:
            ax.annotate(str(genes[i]), (observed[i], predicted[i]), fontsize=7)
    r = np.corrcoef(predicted, observed)[0, 1] if np.ptp(predicted) > 0 and np.ptp(observed) > 0 else np.nan
    ax.set_title(f"{title}\nPearson r = {r:.2f}" if title else f"Pearson r = {r:.2f}", fontsize=9)
    ax.set_xlabel("observed delta")
    ax.set_ylabel("predicted delta")
    return ax


def failure_gallery(worst: pd.DataFrame, predictions, observed, *, model: str, axes=None) -> np.ndarray:
    """Predicted against observed delta for each row of :func:`vclib.failures.worst_conditions`; returns the Axes.

    Examples
    --------
    >>> import anndata as ad, numpy as np, pandas as pd
    >>> obs = pd.DataFrame({"model": "m", "split": "s", "fold": "0", "context": "c", "perturbation": "p"},
    ...                    index=["m|p"])
    >>> pred = ad.AnnData(np.ones((1, 3), dtype=np.float32), obs=obs)
    >>> observed = ad.AnnData(np.ones((1, 3), dtype=np.float32), obs=pd.DataFrame(index=["c|p"]))
    >>> axes = failure_gallery(obs.reset_index(drop=True), pred, observed, model="m")
    """
    if axes is None:
        _, axes = plt.subplots(1, max(len(worst), 1), figsize=(3.6 * max(len(worst), 1), 3.8), squeeze=False)
        axes = axes[0]
    if worst.empty:
        empty(axes[0], "conditions to show", why_empty(worst, "nothing was scored for this model"))
    for ax, row in zip(axes, worst.itertuples(index=False), strict=False):
        name = f"{row.context}|{row.perturbation}"
        pred = predicted_delta(predictions, model=model, split=row.split, fold=row.fold, context=row.context,
                               perturbation=row.perturbation)
        if pred is None:
            ax.set_title(f"no prediction for {name}")
            continue
        delta_scatter(pred, observed[name].X.ravel(), genes=list(observed.var_names), title=f"{row.split}\n{name}",
                      ax=ax)
    return np.asarray(axes)
