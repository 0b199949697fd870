"""Plots of benchmark results: leaderboards and paired differences against a baseline."""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from vclib.metrics import REGISTRY
from vclib.pl._base import axes as _axes
from vclib.pl._base import (
    empty,
    grouped_differences,
    legend_outside,
    number,
    row_labels,
    verdict_legend,
    why_empty,
)


def leaderboard(summary: pd.DataFrame, *, metric: str, ax: plt.Axes | None = None) -> plt.Axes:
    """Mean score with its bootstrap 95% CI per model, one colour per split (output of
    :func:`vclib.metrics.aggregate`), each model labelled with its n (perturbations scored; per split, separated by
    "/", when they differ). The ceiling, when present, is drawn as a dashed line per split.

    Examples
    --------
    >>> import pandas as pd
    >>> s = pd.DataFrame({"model": ["a", "b"], "split": "s", "metric": "mse", "mean": [1.0, 2.0],
    ...                   "ci_low": [0.8, 1.7], "ci_high": [1.2, 2.2], "n": [20, 8]})
    >>> [t.get_text() for t in leaderboard(s, metric="mse").get_yticklabels()]
    ['a (n = 20)', 'b (n = 8)']
    """
    rows = summary[summary["metric"] == metric]
    models = rows[rows["model"] != "ceiling"]
    if models.empty:
        return empty(_axes(ax, (6, 2)), f"scores for {metric}",
                     why_empty(summary, "nothing was scored (see the skipped analyses above)"))
    order = models.groupby("model")["mean"].mean().sort_values(
        ascending=not _higher_is_better(metric)).index.tolist()
    split_names = sorted(rows["split"].unique()) if "split" in rows else [None]
    ax = _axes(ax, (6, 0.4 * len(order) + 1.8))
    offsets = np.linspace(-0.25, 0.25, len(split_names)) if len(split_names) > 1 else [0.0]
    for k, (split, dy) in enumerate(zip(split_names, offsets, strict=True)):
        part = models if split is None else models[models["split"] == split]
        part = part.set_index("model").reindex(order)
        y = np.arange(len(order)) + dy
        ax.errorbar(part["mean"], y, xerr=[part["mean"] - part["ci_low"], part["ci_high"] - part["mean"]],
                    fmt="o", color=f"C{k}", label=split, capsize=2)
        ceiling = rows[(rows["model"] == "ceiling") & ((rows["split"] == split) if split else True)]
        if len(ceiling):
            ax.axvline(ceiling["mean"].mean(), color=f"C{k}", ls="--", lw=1)
    if "n" in models:  # every row shows how many perturbations its mean rests on (per split when they differ)
        ns = models.groupby("model")["n"].agg(lambda n: "/".join(dict.fromkeys(str(int(v)) for v in n)))
        labels = [f"{m} (n = {ns[m]})" for m in order]
    else:
        labels = order
    ax.set_ylim(len(order) - 0.5, -0.5)
    row_labels(ax, np.arange(len(order)), labels)
    better = "higher" if _higher_is_better(metric) else "lower"
    ax.set_xlabel(f"{metric} ({better} is better; dashed: noise ceiling)")
    if split_names != [None]:
        legend_outside(ax, where="below", ncol=min(len(split_names), 3))
    return ax


def _higher_is_better(metric: str) -> bool:
    return REGISTRY[metric].higher_is_better if metric in REGISTRY else True


_VERDICT_COLOURS = {"yes": "C2", "no": "C3", "tie": "0.5"}


def versus_baseline(comparison: pd.DataFrame, *, metric: str, baseline: str | None = None,
                    ax: plt.Axes | None = None) -> plt.Axes:
    """Paired difference model − baseline with 95% CI (output of :func:`vclib.metrics.compare`), one block of
    models per split.

    Points right of zero are better when higher is better (and the other way round); bars crossing zero are ties.
    The baseline is named from ``baseline``, else from the table (``attrs["baseline"]``, which
    :func:`vclib.metrics.compare` sets). Models without a paired score on a split (nothing scored, or a metric
    undefined for them, e.g. a correlation of a constant prediction) are not drawn as empty rows: the note under
    the axis names them.

    Examples
    --------
    >>> import pandas as pd
    >>> c = pd.DataFrame({"model": ["a"], "split": "s", "metric": "mse", "difference": [-0.1],
    ...                   "ci_low": [-0.2], "ci_high": [0.0], "better": ["tie"]})
    >>> ax = versus_baseline(c, metric="mse", baseline="b")
    >>> ax.get_xlabel().startswith("mse: model − b")
    True
    """
    baseline = baseline or comparison.attrs.get("baseline") or "the baseline"
    rows = comparison[comparison["metric"] == metric].copy()
    if rows.empty:
        return empty(_axes(ax, (6, 2)), f"comparison on {metric}",
                     why_empty(comparison, "nothing was compared (see the skipped analyses above)"))
    missing = rows[~np.isfinite(rows["difference"].to_numpy(dtype=float))]
    rows = rows.drop(missing.index)
    if rows.empty:
        return empty(_axes(ax, (6, 2)), f"paired differences on {metric}", _no_pairs(missing))
    rows = rows.sort_values(["split", "difference"] if "split" in rows else ["difference"], kind="stable")
    few = rows["better"].astype(str).str.startswith("too few")
    label = rows["model"].astype(str)
    if "n" in rows:
        label = label.where(~few, label + " (too few, n = " + rows["n"].map(number) + ")")
    colour = rows["better"].map(_VERDICT_COLOURS).fillna("0.8")
    ax = grouped_differences(rows, group="split", label=label, colour=colour, ax=ax)
    better = ("higher" if _higher_is_better(metric) else "lower") if metric in REGISTRY else None
    ax.set_xlabel(f"{metric}: model − {baseline}" + (f" ({better} is better)" if better else ""))
    ax.set_title(f"Each model against {baseline}, paired on the same conditions", fontsize="medium")
    verdict_legend(ax, [("better", "C2"), ("worse", "C3"), ("tie (CI crosses 0)", "0.5"),
                        ("no verdict (too few conditions)", "0.8")],
                   title=_no_pairs(missing) if len(missing) else None)
    return ax


def _no_pairs(missing: pd.DataFrame) -> str:
    """The models without a paired score, per split, in one sentence."""
    if missing.empty:
        return "no model has a paired score"
    if "split" not in missing:
        return textwrap.fill("no paired score (not scored, or undefined for the model): "
                             + ", ".join(sorted(map(str, missing["model"]))), width=80)
    by_model = missing.groupby("model", sort=True)["split"].agg(lambda s: ", ".join(sorted(map(str, s))))
    return textwrap.fill("no paired score (not scored, or undefined for the model): " + "; ".join(
        f"{m} ({splits})" if splits else m for m, splits in by_model.items()), width=80)


def coverage_capacity(summary: pd.DataFrame, *, ax: plt.Axes | None = None) -> plt.Axes:
    """Error against model size, one line per coverage of the target context, with 95% CIs (output of
    :func:`vclib.capacity.summary`): the figure the "context, not scale" thesis turns on. Flat lines that fall
    from one coverage to the next say coverage helps and capacity does not.

    Examples
    --------
    >>> import pandas as pd
    >>> s = pd.DataFrame({"coverage": [0.0, 0.0, 0.5, 0.5], "width": [4, 256] * 2, "metric": "mse_delta",
    ...                   "parameters": [350, 85000] * 2, "mean": [1.0, 0.9, 0.5, 0.5],
    ...                   "ci_low": [0.9, 0.8, 0.4, 0.4], "ci_high": [1.1, 1.0, 0.6, 0.6], "n": 20})
    >>> [t.get_text() for t in coverage_capacity(s).get_legend().get_texts()]
    ['f = 0', 'f = 0.5']
    """
    if summary.empty:
        return empty(_axes(ax, (6, 2)), "coverage × capacity scores",
                     why_empty(summary, "the few-shot-context split does not apply to these data"))
    metric = summary["metric"].iloc[0]
    ax = _axes(ax, (6.5, 4.2))
    for k, (coverage, rows) in enumerate(summary.sort_values("parameters").groupby("coverage", sort=True)):
        colour = plt.get_cmap("viridis")(0.85 * k / max(summary["coverage"].nunique() - 1, 1))  # no pale yellow
        ax.plot(rows["parameters"], rows["mean"], "o-", color=colour, label=f"f = {number(coverage)}")
        ax.fill_between(rows["parameters"], rows["ci_low"], rows["ci_high"], color=colour, alpha=0.15, lw=0)
    ax.set_xscale("log")
    sizes = summary.drop_duplicates("parameters").sort_values("parameters")
    ax.set_xticks(sizes["parameters"], [f"{int(p):,}\n(width {w})" for p, w in zip(sizes["parameters"],
                                                                                   sizes["width"], strict=True)])
    ax.minorticks_off()
    better = "higher" if _higher_is_better(metric) else "lower"
    ax.set_xlabel("MLP parameters (log scale)")
    ax.set_ylabel(f"{metric} ({better} is better)")
    n = int(summary["n"].max()) if "n" in summary else None
    ax.set_title("Coverage of the target context versus model capacity" + (f" (n = {n} conditions)" if n else ""),
                 fontsize="medium")
    legend_outside(ax, title="seen fraction of\nthe target context", title_fontsize="small")
    return ax
