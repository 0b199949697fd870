"""Coverage tables: which perturbations were measured in which contexts, and how much the contexts overlap."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from vclib.schema import CONTEXT_KEY, CONTROL, PERTURBATION_KEY, check_columns


def cell_counts(
    adata: ad.AnnData,
    *,
    perturbation_key: str = PERTURBATION_KEY,
    context_key: str = CONTEXT_KEY,
) -> pd.DataFrame:
    """Cells per perturbation (rows) and context (columns); 0 where a perturbation was not measured.

    Parameters
    ----------
    adata
        Cells in the data contract. For response signatures (``values="signature"``) every measured condition
        counts one.
    perturbation_key, context_key
        obs columns.

    Returns
    -------
    DataFrame of int, index ``perturbation`` sorted with the control first, columns ``context``.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=4, n_genes=50, cells_per_condition=10)
    >>> vc.coverage.cell_counts(adata).loc["control"].tolist()
    [200, 200]
    """
    check_columns(adata.obs, [perturbation_key, context_key])
    table = pd.crosstab(adata.obs[perturbation_key].astype(str), adata.obs[context_key].astype(str))
    table.index.name, table.columns.name = PERTURBATION_KEY, CONTEXT_KEY
    order = sorted(table.index, key=lambda p: (p != CONTROL, p))
    return table.loc[order]


def _measured(counts: pd.DataFrame, min_cells: int) -> pd.DataFrame:
    """Boolean perturbation × context table of the perturbed conditions with at least ``min_cells`` cells."""
    return counts.drop(index=CONTROL, errors="ignore") >= min_cells


def summarize_contexts(counts: pd.DataFrame, *, min_cells: int = 1) -> pd.DataFrame:
    """Per context: its control cells, how many perturbations it measured, and how many of them were also
    measured elsewhere.

    Parameters
    ----------
    counts
        Output of :func:`cell_counts`.
    min_cells
        A condition counts as measured with at least this many cells.

    Returns
    -------
    DataFrame indexed by ``context`` with columns ``control_cells``, ``perturbed_cells``, ``n_perturbations``,
    ``n_shared`` (also measured in at least one other context), ``n_unique`` (measured only here) and
    ``fraction_shared``.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=3, n_perturbations=8, n_genes=50, cells_per_condition=10)
    >>> table = vc.coverage.summarize_contexts(vc.coverage.cell_counts(adata))
    >>> table.columns.tolist()
    ['control_cells', 'perturbed_cells', 'n_perturbations', 'n_shared', 'n_unique', 'fraction_shared']
    """
    measured = _measured(counts, min_cells)
    elsewhere = measured.sum(axis=1).to_numpy()[:, None] - measured.to_numpy() > 0
    n = measured.sum()
    shared = pd.Series((measured.to_numpy() & elsewhere).sum(axis=0), index=counts.columns)
    control = counts.loc[CONTROL] if CONTROL in counts.index else pd.Series(0, index=counts.columns)
    table = pd.DataFrame({
        "control_cells": control.astype(int),
        "perturbed_cells": counts.drop(index=CONTROL, errors="ignore").sum().astype(int),
        "n_perturbations": n.astype(int),
        "n_shared": shared.astype(int),
        "n_unique": (n - shared).astype(int),
        "fraction_shared": (shared / n.replace(0, np.nan)).round(3),
    })
    table.index.name = CONTEXT_KEY
    return table


def summarize_perturbations(counts: pd.DataFrame, *, min_cells: int = 1) -> pd.DataFrame:
    """Per perturbation: in how many and which contexts it was measured, with how many cells.

    Parameters
    ----------
    counts
        Output of :func:`cell_counts`.
    min_cells
        A condition counts as measured with at least this many cells.

    Returns
    -------
    DataFrame indexed by ``perturbation`` (control excluded) with columns ``n_contexts``, ``contexts``
    (comma-separated names) and ``cells`` (in all contexts), sorted by ``n_contexts`` then name.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=4, n_genes=50, cells_per_condition=10)
    >>> int(vc.coverage.summarize_perturbations(vc.coverage.cell_counts(adata))["n_contexts"].max())
    2
    """
    measured = _measured(counts, min_cells)
    cols = np.asarray(measured.columns)
    table = pd.DataFrame({
        "n_contexts": measured.sum(axis=1).astype(int),
        "contexts": [", ".join(cols[row]) for row in measured.to_numpy()],
        "cells": counts.drop(index=CONTROL, errors="ignore").sum(axis=1).astype(int),
    })
    table.index.name = PERTURBATION_KEY
    return table.sort_values(["n_contexts"], kind="stable")


def context_overlap(counts: pd.DataFrame, *, min_cells: int = 1) -> pd.DataFrame:
    """Jaccard overlap of the perturbation sets of every two contexts (|A ∩ B| / |A ∪ B|).

    Parameters
    ----------
    counts
        Output of :func:`cell_counts`.
    min_cells
        A condition counts as measured with at least this many cells.

    Returns
    -------
    Square DataFrame, contexts × contexts, 1 on the diagonal (NaN for a context that measured nothing).

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=4, n_genes=50, cells_per_condition=10)
    >>> float(vc.coverage.context_overlap(vc.coverage.cell_counts(adata)).iloc[0, 0])
    1.0
    """
    m = _measured(counts, min_cells).to_numpy().astype(float)
    both = m.T @ m
    size = m.sum(axis=0)
    union = size[:, None] + size[None, :] - both
    with np.errstate(invalid="ignore", divide="ignore"):
        jaccard = np.where(union > 0, both / union, np.nan)
    out = pd.DataFrame(jaccard, index=counts.columns, columns=counts.columns)
    out.index.name = out.columns.name = CONTEXT_KEY
    return out


def overview(counts: pd.DataFrame, *, min_cells: int = 1) -> str:
    """A few sentences on what the coverage analysis can say about this dataset, and what it cannot.

    A single-context dataset is explained here (coverage analysis compares contexts and needs at least two);
    the pairwise tables of :mod:`vclib.coverage` are then empty rather than an error, so a notebook still shows
    the parts that make sense.

    Parameters
    ----------
    counts
        Output of :func:`cell_counts`.
    min_cells
        A condition counts as measured with at least this many cells.

    Returns
    -------
    str

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=1, n_perturbations=4, n_genes=50, cells_per_condition=10)
    >>> print(vc.coverage.overview(vc.coverage.cell_counts(adata)))  # doctest: +ELLIPSIS
    1 context ('C1') and 10 perturbations. Coverage analysis compares contexts and needs at least 2...
    """
    measured = _measured(counts, min_cells)
    n_ctx, n_pert = measured.shape[1], measured.shape[0]
    per_pert = measured.sum(axis=1)
    if n_ctx < 2:
        name = counts.columns[0] if n_ctx else "none"
        return (
            f"{n_ctx} context ({name!r}) and {n_pert} perturbations. Coverage analysis compares contexts and needs "
            "at least 2: context distances, transferability between contexts and the next-experiment ranking "
            "are skipped (their tables are empty). What still makes sense, and is shown: cells per "
            "perturbation, the pseudobulk responses and their split-half reliability. Pass context_key= with "
            "the obs column that holds cell types, cell lines or donors if your data has several."
        )
    shared = int((per_pert >= 2).sum())
    everywhere = int((per_pert == n_ctx).sum())
    text = (
        f"{n_ctx} contexts and {n_pert} perturbations; {shared} perturbations were measured in at least 2 "
        f"contexts (transfer between contexts can be checked on these), {everywhere} in all {n_ctx}, "
        f"{int((per_pert == 1).sum())} in only one."
    )
    if CONTROL in counts.index:
        few = counts.columns[counts.loc[CONTROL] < 10]
        if len(few):
            text += f" Contexts with fewer than 10 control cells: {', '.join(map(repr, few))}."
    return text
