"""Widgets: ipywidgets controls wired to :mod:`vclib.pl` calls. They compute nothing; the tables come from
:mod:`vclib.coverage` (and friends), so a notebook that runs without a browser (papermill) still works: the
widget renders its first state and stays static.
"""

from __future__ import annotations

import ipywidgets
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from vclib import pl
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
    dropdown = ipywidgets.Dropdown(options=options, value=target or options[0], description="target context",
                                   style={"description_width": "initial"})  # the label whole, not "target con…"

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


def _conditions(rows: pd.DataFrame, split: str, model: str) -> list[tuple[str, tuple[str, str, str]]]:
    """(label, (fold, context, perturbation)) of every condition ``model`` was scored on in ``split``; the label is
    ``context | perturbation``, with the fold only where one condition was tested in several folds."""
    own = rows[(rows["split"] == split) & (rows["model"] == model)]
    keys = sorted(set(zip(own["fold"].astype(str), own["context"].astype(str), own["perturbation"].astype(str),
                          strict=True)), key=lambda k: (k[1], k[2], k[0]))
    folds = pd.Series([(c, p) for _, c, p in keys], dtype=object).value_counts()
    return [(f"{c} | {p}" + (f" (fold {f})" if folds[(c, p)] > 1 else ""), (f, c, p)) for f, c, p in keys]


def failure_browser(
    table: pd.DataFrame,
    predictions,
    observed,
    *,
    metric: str = "pearson_delta",
    model: str | None = None,
    split: str | None = None,
) -> ipywidgets.VBox:
    """Browse the test conditions of a split: predicted against observed delta for a chosen model.

    Pick the split and the model first; the condition list then holds only the conditions that model was scored on
    in that split (a few dozen instead of every condition of every split), each shown whole as
    ``context | perturbation``.

    Parameters
    ----------
    table
        :func:`vclib.failures.condition_table` output (for the condition lists and the scores).
    predictions
        :func:`vclib.benchmark.load_predictions` output (predicted deltas). Models without saved predictions are not
        offered.
    observed
        Observed deltas (:func:`vclib.pseudobulk.deltas`), rows ``"context|perturbation"``.
    metric
        The score shown in the title.
    model
        The model shown first (default: the first in the table).
    split
        The split shown first (default: the first in the table).

    Returns
    -------
    An ``ipywidgets.VBox``: split and model Dropdowns, the condition Dropdown, and an Output with
    :func:`vclib.pl.prediction_scatter` of the chosen condition; its ``result`` attribute is the figure shown
    last.
    """
    rows = table[table["metric"] == metric]
    predicted = set(predictions.obs["model"].astype(str))
    models = sorted(m for m in rows["model"].unique() if m in predicted)
    if not models:
        raise VclibInputError(f"no model has both scores for metric {metric!r} in the table and saved predictions; "
                              f"scored: {sorted(rows['model'].unique())}, predicted: {sorted(predicted)}.")
    splits = sorted(rows["split"].unique())
    for name, value, allowed in (("model", model, models), ("split", split, splits)):
        if value is not None and value not in allowed:
            raise VclibInputError(f"{name} {value!r} is not in the table (with saved predictions); {name}s are: "
                                  f"{allowed}.")
    split_box = ipywidgets.Dropdown(options=splits, value=split or splits[0], description="split")
    model_box = ipywidgets.Dropdown(options=models, value=model or models[0], description="model")
    # as wide as its longest label: names are shown whole, not cut before the perturbation
    condition_box = ipywidgets.Dropdown(description="condition", layout=ipywidgets.Layout(width="max-content"))
    out = ipywidgets.Output()
    browser = ipywidgets.VBox([ipywidgets.HBox([split_box, model_box]), condition_box, out])
    browser.result = None
    refilling = []

    def show(change=None) -> None:
        if refilling:
            return
        out.outputs = ()  # IPython's clear_output prints escape codes outside Jupyter
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        chosen, which = model_box.value, split_box.value
        if condition_box.value is None:
            ax.set_axis_off()
            ax.set_title(f"{chosen} was not scored on split {which}")
        else:
            fold, context, perturbation = condition_box.value
            score = rows[(rows["model"] == chosen) & (rows["split"] == which) & (rows["fold"].astype(str) == fold)
                         & (rows["context"] == context) & (rows["perturbation"] == perturbation)]["value"]
            # drawn against what the score compared it with (for the ceiling: the other half of the cells)
            pl.prediction_scatter(predictions, observed, model=chosen, split=which, fold=fold, context=context,
                                  perturbation=perturbation, metric=metric,
                                  score=score.iloc[0] if len(score) else None, ax=ax)
        with out:
            display(fig)
        plt.close(fig)  # shown once, in the Output, not again below the cell
        browser.result = fig

    def refill(change=None) -> None:
        kept = condition_box.value
        options = _conditions(rows, split_box.value, model_box.value)
        refilling.append(True)
        try:
            condition_box.options = options
            condition_box.value = kept if kept in [v for _, v in options] else (options[0][1] if options else None)
        finally:
            refilling.clear()
        show()

    refill()
    split_box.observe(refill, "value")
    model_box.observe(refill, "value")
    condition_box.observe(show, "value")
    return browser
