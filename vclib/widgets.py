"""Widgets: ipywidgets controls wired to :mod:`vclib.pl` calls. They compute nothing; the tables come from
:mod:`vclib.coverage` (and friends), so a notebook that runs without a browser (papermill) still works: the
widget renders its first state and stays static.
"""

from __future__ import annotations

import ipywidgets
import matplotlib.pyplot as plt
import pandas as pd

from vclib import pl
from vclib.failures import predicted_delta
from vclib.schema import VclibInputError


def target_explorer(
    coverage: pd.DataFrame,
    plan: pd.DataFrame,
    *,
    target: str | None = None,
    top: int = 10,
) -> ipywidgets.interactive:
    """Pick a target context; see how each perturbation is covered for it and what to measure next.

    Parameters
    ----------
    coverage
        Output of :func:`vclib.coverage.target_coverage` for every context (``targets=None``).
    plan
        Output of :func:`vclib.coverage.next_experiments` for every context.
    target
        The context shown first; ``None``: the first of ``coverage``.
    top
        Candidate measurements shown.

    Returns
    -------
    An ``ipywidgets.interactive`` (a Dropdown above the two plots :func:`vclib.pl.target_coverage` and
    :func:`vclib.pl.next_experiments`); display it as a cell's last expression.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=3, n_perturbations=8, n_genes=80, cells_per_condition=20)
    >>> counts = vc.coverage.cell_counts(adata)
    >>> summary = vc.coverage.summarize_transfer(vc.coverage.transferability(adata))
    >>> w = vc.widgets.target_explorer(vc.coverage.target_coverage(counts, summary),
    ...                                vc.coverage.next_experiments(counts, summary), target="C3")
    >>> w.children[0].value
    'C3'
    """
    options = list(dict.fromkeys(coverage["target"].astype(str)))
    if not options:
        raise VclibInputError("the coverage table is empty: the widget needs at least one target context.")
    if target is not None and target not in options:
        raise VclibInputError(f"target {target!r} is not in the coverage table; targets are: {options}.")
    dropdown = ipywidgets.Dropdown(options=options, value=target or options[0], description="target context")

    shown = {}

    def draw(target: str) -> None:
        if "widget" in shown:  # clear the last figure (IPython's clear_output prints escape codes outside Jupyter)
            shown["widget"].out.outputs = ()
        fig, (left, right) = plt.subplots(1, 2, figsize=(13, 3.8), gridspec_kw={"width_ratios": [1.1, 1]})
        pl.target_coverage(coverage, target=target, ax=left)
        pl.next_experiments(plan, target=target, top=top, ax=right)
        fig.tight_layout()

    shown["widget"] = ipywidgets.interactive(draw, clear_output=False, target=dropdown)
    return shown["widget"]


def failure_browser(
    table: pd.DataFrame,
    predictions,
    observed,
    *,
    metric: str = "pearson_delta",
    model: str | None = None,
) -> ipywidgets.interactive:
    """Browse every test condition: predicted against observed delta for a chosen model.

    Parameters
    ----------
    table
        :func:`vclib.failures.condition_table` output (for the condition list and the scores).
    predictions
        :func:`vclib.benchmark.load_predictions` output (predicted deltas).
    observed
        Observed deltas (:func:`vclib.pseudobulk.deltas`), rows ``"context|perturbation"``.
    metric
        The score shown in the title.
    model
        The model shown first (default: the first in the table).

    Returns
    -------
    An ``ipywidgets.interactive`` with a model and a condition Dropdown above :func:`vclib.pl.delta_scatter`.
    """
    rows = table[table["metric"] == metric]
    models = sorted(rows["model"].unique())
    if not models:
        raise VclibInputError(f"no scores for metric {metric!r} in the table.")
    model_box = ipywidgets.Dropdown(options=models, value=model or models[0], description="model")
    keys = rows[["split", "fold", "context", "perturbation"]].drop_duplicates()
    labels = [f"{s} · {f} · {c}|{p}" for s, f, c, p in keys.itertuples(index=False)]
    condition_box = ipywidgets.Dropdown(options=labels, value=labels[0], description="condition")

    def show(model: str, condition: str):
        split, fold, name = condition.split(" · ")
        context, perturbation = name.split("|", 1)
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        pred = predicted_delta(predictions, model=model, split=split, fold=fold, context=context,
                               perturbation=perturbation)
        if pred is None:
            ax.set_title(f"{model} has no prediction for {name} in {split} {fold}")
            return fig
        score = rows[(rows["model"] == model) & (rows["split"] == split) & (rows["fold"].astype(str) == fold)
                     & (rows["context"] == context) & (rows["perturbation"] == perturbation)]["value"]
        title = f"{model} · {name}\n{metric} = {score.iloc[0]:.3f}" if len(score) else f"{model} · {name}"
        pl.delta_scatter(pred, observed[name].X.ravel(), title=title, genes=list(observed.var_names), ax=ax)
        return fig

    return ipywidgets.interactive(show, model=model_box, condition=condition_box)
