"""Differential expression: Wilcoxon rank-sum of each condition against its context's control cells.

Written by hand because the field's implementations test one group at a time (scanpy's rank_genes_groups ranks
every group with the control again; pdex/numba-mwu re-sort the control per group). Here each context's control
column is sorted once, and every condition's cells are placed into it by binary search, which gives the
U statistic and the exact tie correction per (condition, gene) in one pass (numba, parallel over genes).
The result equals ``scipy.stats.mannwhitneyu(x, y, method="asymptotic", use_continuity=True)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import anndata as ad
import numba
import numpy as np
import pandas as pd
from scipy import sparse, stats

from vclib.schema import CONTEXT_KEY, CONTROL, LOG1P, PERTURBATION_KEY, VclibInputError, check_cells, condition_id

GENE_CHUNK = 512


@numba.njit(cache=True)
def _run_ends(values: np.ndarray) -> np.ndarray:
    """End index (exclusive) of each run of equal values in a sorted array."""
    n = values.size
    ends = np.empty(n, dtype=np.int64)
    k = 0
    for i in range(1, n + 1):
        if i == n or values[i] != values[i - 1]:
            ends[k] = i
            k += 1
    return ends[:k]


@numba.njit(parallel=True, cache=True)
def _ranksum(control, cells, offsets, tie_correction, continuity):
    """Two-sided Wilcoxon rank-sum p-values and U statistics, groups × genes.

    ``control`` is n_control × genes; ``cells`` holds the groups' cells stacked, group k in rows
    ``offsets[k]:offsets[k + 1]``.
    """
    n_genes = control.shape[1]
    n_groups = offsets.size - 1
    n2 = control.shape[0]
    pvalues = np.ones((n_groups, n_genes))
    ustats = np.zeros((n_groups, n_genes))
    for g in numba.prange(n_genes):
        ref = np.sort(control[:, g])
        ref_ties = 0.0
        start = 0
        for end in _run_ends(ref):
            t = end - start
            ref_ties += t * t * t - t
            start = end
        for k in range(n_groups):
            vals = np.sort(cells[offsets[k] : offsets[k + 1], g])
            n1 = vals.size
            u1 = 0.0
            ties = ref_ties
            start = 0
            for end in _run_ends(vals):
                tg = end - start
                v = vals[start]
                lo = np.searchsorted(ref, v, side="left")
                tc = np.searchsorted(ref, v, side="right") - lo
                u1 += tg * (lo + 0.5 * tc)
                both = tc + tg
                ties += both * both * both - both - (tc * tc * tc - tc)
                start = end
            n = n1 + n2
            ustats[k, g] = u1
            variance = n1 * n2 / 12.0 * (n + 1.0)
            if tie_correction:
                variance = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)))
            if variance <= 0:
                continue
            u = max(u1, n1 * n2 - u1)
            z = (u - n1 * n2 / 2.0 - (0.5 if continuity else 0.0)) / math.sqrt(variance)
            pvalues[k, g] = min(1.0, math.erfc(z / math.sqrt(2.0)))
    return pvalues, ustats


@dataclass(frozen=True)
class DEResult:
    """Differential expression of every condition against its context's control.

    Attributes
    ----------
    conditions
        One row per condition (index ``"context|perturbation"``): ``context``, ``perturbation``, ``n_cells``,
        ``n_control``.
    genes
        Gene names (columns of the arrays).
    lfc, pvalue, fdr
        Conditions × genes: log2 fold change, two-sided Wilcoxon p-value, Benjamini–Hochberg FDR within the
        condition.
    """

    conditions: pd.DataFrame
    genes: pd.Index
    lfc: np.ndarray
    pvalue: np.ndarray
    fdr: np.ndarray

    def significant(self, fdr: float = 0.05) -> np.ndarray:
        """Boolean conditions × genes: FDR below ``fdr`` (compared in float32, as cell-eval does)."""
        return self.fdr.astype(np.float32) < np.float32(fdr)

    def subset(self, names) -> DEResult:
        """The same result for some conditions (by ``"context|perturbation"``), in that order."""
        idx = self.conditions.index.get_indexer(list(names))
        if (idx < 0).any():
            missing = [n for n, i in zip(names, idx, strict=True) if i < 0]
            raise VclibInputError(f"no DE result for condition(s) {', '.join(map(repr, missing[:5]))}.")
        return DEResult(self.conditions.iloc[idx], self.genes, self.lfc[idx], self.pvalue[idx], self.fdr[idx])

    def to_frame(self) -> pd.DataFrame:
        """Long table: one row per (condition, gene) with ``lfc``, ``pvalue``, ``fdr``."""
        n, g = self.lfc.shape
        return pd.DataFrame({
            CONTEXT_KEY: np.repeat(self.conditions[CONTEXT_KEY].astype(str).to_numpy(), g),
            PERTURBATION_KEY: np.repeat(self.conditions[PERTURBATION_KEY].to_numpy(), g),
            "gene": np.tile(self.genes.to_numpy(), n),
            "lfc": self.lfc.ravel(), "pvalue": self.pvalue.ravel(), "fdr": self.fdr.ravel(),
        })


def log2_fold_change(mean_log1p: np.ndarray, control_log1p: np.ndarray, *, epsilon: float = 1e-9) -> np.ndarray:
    """``log2((expm1(m_p) + eps) / (expm1(m_c) + eps))`` from mean log1p values (science.md)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        lfc = np.log2((np.expm1(mean_log1p) + epsilon) / (np.expm1(control_log1p) + epsilon))
    both_zero = (np.expm1(mean_log1p) + epsilon == 0) & (np.expm1(control_log1p) + epsilon == 0)
    return np.where(both_zero, 0.0, lfc)


def _dense_columns(X, start: int, stop: int) -> np.ndarray:
    block = X[:, start:stop]
    return block.toarray().astype(np.float64) if sparse.issparse(block) else np.asarray(block, dtype=np.float64)


def rank_genes(
    adata: ad.AnnData,
    *,
    perturbation_key: str = PERTURBATION_KEY,
    context_key: str = CONTEXT_KEY,
    control: str = CONTROL,
    epsilon: float = 1e-9,
    tie_correction: bool = True,
    continuity: bool = True,
) -> DEResult:
    """Wilcoxon rank-sum DE of every perturbed condition against the same context's control cells.

    Parameters
    ----------
    adata
        Cells with log1p-normalised ``X`` (observed, or a model's predicted cells).
    perturbation_key, context_key, control
        Column names and control label.
    epsilon
        Pseudocount of the log2 fold change ``log2((m_p + eps)/(m_c + eps))``, ``m = expm1(mean log1p)``.
        cell-eval uses 0 (one-sided zeros give ±inf).
    tie_correction, continuity
        The variance's tie correction and the 0.5 continuity correction of the normal approximation (both on,
        as in scipy's and cell-eval's defaults).

    Returns
    -------
    :class:`DEResult` with conditions sorted by context, then perturbation.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=4, n_genes=50, cells_per_condition=30)
    >>> de = vc.metrics.rank_genes(adata)
    >>> de.lfc.shape[1], bool((de.conditions["perturbation"] != "control").all())
    (50, True)
    """
    if adata.isbacked:
        raise VclibInputError("rank_genes ranks every cell of every gene, so it needs the cells in memory; this "
                              f"AnnData is backed by {adata.filename}. Read it with vc.loaders.read(path) (without "
                              "backed=True), or subset it first (adata[rows].to_memory()).")
    values = check_cells(adata, perturbation_key=perturbation_key, context_key=context_key, what="rank_genes")
    if values != LOG1P:
        raise VclibInputError(f"rank_genes ranks log1p-normalised expression; uns['vclib'] says X holds {values}. "
                              "Read the data with vc.loaders.read(path) (in memory), which normalises raw counts.")
    contexts = adata.obs[context_key].astype(str).to_numpy()
    labels = adata.obs[perturbation_key].astype(str).to_numpy()
    X = adata.X
    if sparse.issparse(X):
        X = sparse.csr_matrix(X)
    rows, lfcs, pvals = [], [], []
    for ctx in sorted(set(contexts)):
        in_ctx = contexts == ctx
        ctrl_rows = np.flatnonzero(in_ctx & (labels == control))
        if ctrl_rows.size == 0:
            raise VclibInputError(
                f"context {ctx!r} has no control cells (label {control!r}); DE needs them. Labels seen: "
                f"{', '.join(map(repr, sorted(set(labels[in_ctx]))[:10]))}."
            )
        perturbed = np.flatnonzero(in_ctx & (labels != control))
        if perturbed.size == 0:
            continue
        order = perturbed[np.argsort(labels[perturbed], kind="stable")]
        names, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
        offsets = np.append(starts, order.size).astype(np.int64)
        ctrl, cells = X[ctrl_rows], X[order]
        if sparse.issparse(X):
            ctrl, cells = ctrl.tocsc(), cells.tocsc()
        p = np.empty((names.size, X.shape[1]))
        for start in range(0, X.shape[1], GENE_CHUNK):
            stop = min(start + GENE_CHUNK, X.shape[1])
            p[:, start:stop], _ = _ranksum(_dense_columns(ctrl, start, stop), _dense_columns(cells, start, stop),
                                          offsets, tie_correction, continuity)
        ctrl_mean = np.asarray(ctrl.mean(axis=0), dtype=np.float64).ravel()
        indicator = sparse.csr_matrix((np.ones(order.size) / np.repeat(counts, counts),
                                       (np.repeat(np.arange(names.size), counts), np.arange(order.size))))
        means = indicator @ cells
        means = means.toarray() if sparse.issparse(means) else np.asarray(means)
        lfcs.append(log2_fold_change(means, ctrl_mean[None, :], epsilon=epsilon))
        pvals.append(p)
        rows.append(pd.DataFrame({CONTEXT_KEY: ctx, PERTURBATION_KEY: names, "n_cells": counts,
                                  "n_control": ctrl_rows.size}))
    if not rows:
        raise VclibInputError("no perturbed cells to test: every cell is a control.")
    conditions = pd.concat(rows, ignore_index=True)
    conditions.index = [condition_id(c, p) for c, p in
                        zip(conditions[CONTEXT_KEY], conditions[PERTURBATION_KEY], strict=True)]
    pvalue = np.vstack(pvals)
    fdr = stats.false_discovery_control(pvalue, axis=1, method="bh")
    return DEResult(conditions, adata.var_names.copy(), np.vstack(lfcs), pvalue, fdr)
