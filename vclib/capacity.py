"""Coverage versus capacity: does measuring part of a new context help more than a bigger model?

The position paper's central experiment. The ``few_shot_context`` split holds one context out and lets the model
see a fraction ``f`` of that context's perturbations (``f = 0``: an unseen context); MLPs of several widths, from
a few hundred to tens of thousands of parameters, are scored on every fraction. If context, not scale, is what
transfer lacks, the error falls with ``f`` and stays flat along the capacity axis.

* :func:`run`: the grid (fractions × widths) through :func:`vclib.benchmark.run`, scored on the conditions held
  out at every fraction, so each coverage level is judged on the same conditions.
* :func:`summary`: mean error with its bootstrap CI per (coverage, parameters): the figure's points
  (:func:`vclib.pl.coverage_capacity`).
* :func:`verdict`: paired differences (more coverage at fixed capacity, more capacity at fixed coverage) and a
  sentence that says which helps, when capacity helps, and when the data are too few to say.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from vclib import benchmark
from vclib import splits as _splits
from vclib.metrics import MIN_N, REGISTRY, Observed, aggregate, compare, prepare
from vclib.models import MLP
from vclib.schema import NotApplicable, VclibInputError

#: MLP widths (two hidden layers): about 190, 1,500 and 26,000 parameters (140×) on a screen of 4 contexts.
WIDTHS = (2, 16, 128)
#: Seen fractions of the held-out context's perturbations.
FRACTIONS = _splits.FEW_SHOT_FRACTIONS
#: An error and a direction metric; both need no DE, so the grid costs the fits and little else.
METRICS = ("mse_delta", "pearson_delta")


def _name(width: int) -> str:
    return f"mlp_w{width}"


def run(
    data: ad.AnnData | Observed,
    *,
    widths=WIDTHS,
    depth: int = 2,
    fractions=FRACTIONS,
    metrics=METRICS,
    seeds=(0,),
    results_dir: str | Path | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Score MLPs of several widths on the few-shot-context split at several coverages of the held-out context.

    Parameters
    ----------
    data
        Observed cells in the data contract, or an :class:`vclib.metrics.Observed`.
    widths, depth
        Units per hidden layer of each MLP, and its number of hidden layers.
    fractions
        Fractions ``f`` of the held-out context's perturbations seen in training (0: an unseen context).
    metrics, seeds, results_dir, progress
        As in :func:`vclib.benchmark.run` (finished cells in ``results_dir`` are reused by a re-run).

    Returns
    -------
    The scores of :func:`vclib.benchmark.run` restricted to the conditions held out at every fraction (per fold
    and seed), with columns ``coverage`` (f), ``width`` and ``parameters`` (the network's weights and biases,
    counted on the first fold's training data: :attr:`vclib.models.MLP.n_parameters_`). Empty, with the reason
    in ``attrs["skipped"]``, when the split cannot apply (one context, or too few perturbations to hold out).

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=12, n_genes=40, cells_per_condition=10, seed=1)
    >>> table = vc.capacity.run(adata, widths=(2, 8), fractions=(0.0, 0.5), progress=False)
    >>> sorted(table["coverage"].unique().tolist()), sorted(table["width"].unique().tolist())
    ([0.0, 0.5], [2, 8])
    """
    if not len(widths):
        raise VclibInputError("widths is empty; give the MLP widths to compare, e.g. widths=(2, 16, 128).")
    obs = prepare(data)
    models = {_name(w): MLP(width=w, depth=depth) for w in widths}
    scores = benchmark.run(obs, splits=["few_shot_context"], models=models, metrics=list(metrics), seeds=seeds,
                           split_options={"few_shot_context": {"fractions": tuple(fractions)}},
                           results_dir=results_dir, include_ceiling=False, progress=progress)
    columns = [*scores.columns, "coverage", "width", "parameters"]
    if scores.empty:
        return scores.reindex(columns=columns)
    # the same conditions at every coverage: those tested in every split of their fold and seed
    keys = ["fold", "seed", "context", "perturbation"]
    tested = scores[keys + ["split"]].drop_duplicates()
    common = tested.groupby(keys)["split"].nunique()
    common = common[common == tested["split"].nunique()].reset_index()[keys]
    out = scores.merge(common, on=keys)
    coverage = {name: 0.0 if name == "unseen_context" else float(name.removeprefix("few_shot_"))
                for name in out["split"].unique()}
    out["coverage"] = out["split"].map(coverage)
    out["width"] = out["model"].map({_name(w): w for w in widths})
    out["parameters"] = out["model"].map(_parameters(obs, scores.attrs["splits"], models))
    out.attrs = scores.attrs
    return out


def _parameters(obs: Observed, tables: pd.DataFrame, models: dict) -> dict:
    """Each model's parameter count, fitted on the first fold's training data (the count depends on the data only
    through the input and output dimensions, which are the same on every fold of a screen with over 30 training
    conditions)."""
    tables = tables[tables["seed"] == tables["seed"].min()]
    split, fold = _splits.folds(tables)[0]
    train = _splits.training_data(obs.pseudobulk, tables, split, fold)
    counts = {}
    for name, model in models.items():
        try:
            counts[name] = model.fit(train).n_parameters_
        except NotApplicable:
            counts[name] = np.nan
    return counts


def summary(scores: pd.DataFrame, *, metric: str = "mse_delta", **options) -> pd.DataFrame:
    """Mean ``metric`` with its bootstrap CI per coverage and model size (:func:`vclib.metrics.aggregate`;
    ``options`` go to it): columns ``coverage``, ``width``, ``parameters``, ``mean``, ``ci_low``, ``ci_high``,
    ``n``."""
    rows = scores[scores["metric"] == metric]
    if rows.empty:
        table = pd.DataFrame(columns=["coverage", "width", "parameters", "metric", "mean", "ci_low", "ci_high", "n"])
    else:
        table = aggregate(rows, by=("coverage", "width", "parameters", "metric"), **options)
        table = table.sort_values(["coverage", "parameters"], ignore_index=True)
    table.attrs["skipped"] = scores.attrs.get("skipped", [])  # why a table is empty, for the plot to say
    return table


def _paired(rows: pd.DataFrame, *, along: str, low, high, min_n: int) -> pd.Series:
    """The paired difference (high − low) of ``along`` on the same conditions, via :func:`vclib.metrics.compare`."""
    pair = rows[rows[along].isin([low, high])].assign(model=lambda t: t[along].astype(str), split="")
    return compare(pair, baseline=str(low), by=("metric",), min_n=min_n).iloc[0]


def verdict(scores: pd.DataFrame, *, metric: str = "mse_delta", min_n: int = MIN_N) -> str:
    """What the grid says, in sentences: the change from no to the most coverage at the smallest and the largest
    model, the change from the smallest to the largest model at no and at the most coverage (paired over the same
    conditions, with 95% CIs), at which coverages capacity helps beyond the noise, and which helps more (or that
    they help only together).

    Examples
    --------
    >>> import pandas as pd
    >>> rows = [{"context": "c", "perturbation": f"p{i}", "metric": "mse_delta", "fold": "c", "seed": 0,
    ...          "coverage": f, "width": w, "parameters": 10 * w, "value": 1.0 - f + 0.01 * (i % 3)}
    ...         for i in range(8) for f in (0.0, 0.5) for w in (1, 100)]
    >>> print(verdict(pd.DataFrame(rows)).splitlines()[-1])
    More coverage of the target context helped more than more capacity.
    """
    rows = scores[scores["metric"] == metric]
    if rows.empty or rows["coverage"].nunique() < 2 or rows["width"].nunique() < 2:
        return (f"No verdict on coverage versus capacity for {metric}: it needs at least two coverages and two "
                "model sizes scored on the same conditions.")
    f0, f1 = rows["coverage"].min(), rows["coverage"].max()
    small, large = rows["width"].min(), rows["width"].max()
    size = rows.groupby("width")["parameters"].first()
    n = rows[["context", "perturbation"]].drop_duplicates().shape[0]
    if n < min_n:
        return (f"No verdict on coverage versus capacity: only {n} conditions were held out at every coverage "
                f"(fewer than {min_n}).")
    better = "higher" if REGISTRY[metric].higher_is_better else "lower"

    def said(d) -> str:
        return f"{d['difference']:+.3g} [{d['ci_low']:.3g}, {d['ci_high']:.3g}], {_word(d['better'])}"

    cover = {w: _paired(rows[rows["width"] == w], along="coverage", low=f0, high=f1, min_n=min_n)
             for w in (small, large)}
    grow = {f: _paired(rows[rows["coverage"] == f], along="width", low=small, high=large, min_n=min_n)
            for f in sorted(rows["coverage"].unique())}
    helps = [f"{f:g}" for f, d in grow.items() if d["better"] == "yes"]
    lines = [
        f"On {n} conditions held out at every coverage ({metric}, {better} is better; paired differences with "
        "95% CIs):",
        f"- coverage f = {f0:g} → {f1:g}: {said(cover[small])} with {size[small]:,.0f} parameters; "
        f"{said(cover[large])} with {size[large]:,.0f};",
        f"- capacity {size[small]:,.0f} → {size[large]:,.0f} parameters ({size[large] / size[small]:.0f}×): "
        f"{said(grow[f0])} at f = {f0:g}; {said(grow[f1])} at f = {f1:g}.",
        ("Capacity helped beyond the noise at f = " + ", ".join(helps) + "." if helps
         else "Capacity helped beyond the noise at no coverage."),
    ]
    gain_cover = min(_gain(cover[w], metric) for w in (small, large))
    gain_grow = max(_gain(d, metric) for d in grow.values())
    covered = all(d["better"] == "yes" for d in cover.values())
    if covered and gain_cover > gain_grow:
        lines.append("More coverage of the target context helped more than more capacity.")
    elif cover[large]["better"] == "yes" and grow[f1]["better"] == "yes" and grow[f0]["better"] != "yes":
        lines.append("Coverage and capacity helped together: the larger model used the measured part of the target "
                     f"context, and capacity did not help where none of it was measured (f = {f0:g}).")
    elif helps and gain_grow > max(_gain(d, metric) for d in cover.values()):
        lines.append("More capacity helped more than more coverage of the target context.")
    else:
        lines.append("Neither more coverage nor more capacity helped clearly more than the other.")
    return "\n".join(lines)


def _gain(row: pd.Series, metric: str) -> float:
    """A paired difference as an improvement (positive is better, whatever the metric's direction)."""
    return row["difference"] if REGISTRY[metric].higher_is_better else -row["difference"]


def _word(better: str) -> str:
    return {"yes": "better", "no": "worse", "tie": "a tie within the noise"}.get(better, better)
