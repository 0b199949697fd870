"""Plots of what was measured: coverage of perturbations × contexts and effect sizes."""

from __future__ import annotations

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from vclib.pl._base import axes as _axes
from vclib.schema import CONTEXT_KEY


def coverage_heatmap(counts: pd.DataFrame, *, ax: plt.Axes | None = None, max_rows: int = 80) -> plt.Axes:
    """Heatmap of cells per perturbation × context (output of :func:`vclib.coverage.cell_counts`).

    Unmeasured cells (0) are blank. With more than ``max_rows`` perturbations, the rows measured in the fewest
    contexts are shown first.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=4, n_genes=50, cells_per_condition=10)
    >>> ax = vc.pl.coverage_heatmap(vc.coverage.cell_counts(adata))
    """
    shown = counts
    if len(counts) > max_rows:
        shown = counts.loc[(counts > 0).sum(axis=1).sort_values(kind="stable").index[:max_rows]]
    ax = _axes(ax, (1.2 + 0.6 * shown.shape[1], 1.5 + 0.12 * len(shown)))
    sns.heatmap(shown.where(shown > 0), ax=ax, cmap="viridis", cbar_kws={"label": "cells"},
                yticklabels=len(shown) <= 80, linewidths=0.2, linecolor="white")
    measured = int((counts > 0).to_numpy().sum())
    ax.set_title(f"{measured} of {counts.size} perturbation × context conditions measured")
    return ax


def effect_sizes(deltas: ad.AnnData, *, ax: plt.Axes | None = None) -> plt.Axes:
    """Distribution of the effect size (L2 norm of the delta) of every perturbed condition, per context.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=4, n_genes=50, cells_per_condition=10)
    >>> ax = vc.pl.effect_sizes(vc.pseudobulk.deltas(vc.pseudobulk.pseudobulk(adata)))
    """
    frame = pd.DataFrame({CONTEXT_KEY: deltas.obs[CONTEXT_KEY].astype(str).to_numpy(),
                          "effect size (‖delta‖₂)": np.linalg.norm(np.asarray(deltas.X), axis=1)})
    ax = _axes(ax, (1.5 + 0.8 * frame[CONTEXT_KEY].nunique(), 3.5))
    sns.boxplot(frame, x=CONTEXT_KEY, y="effect size (‖delta‖₂)", ax=ax, color="0.85", fliersize=0)
    sns.stripplot(frame, x=CONTEXT_KEY, y="effect size (‖delta‖₂)", ax=ax, size=3, color="C0")
    ax.set_title("How strongly each perturbation moves expression")
    return ax
