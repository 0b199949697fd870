"""Pseudobulk: mean log1p expression per condition, and split halves for the noise ceiling.

A condition is one (context, perturbation) pair. The pseudobulk of a condition is the mean of its cells'
log1p-normalised expression; its *delta* is that minus the same context's control pseudobulk.

Means are computed as a sparse indicator matrix (conditions × cells) times ``X``, so sparse input is never
densified, and files opened in backed mode are read in row chunks (raw counts are normalised chunk by chunk,
which is exact because library-size normalisation acts on each cell alone).

A dask ``X`` (:func:`vclib.loaders.read` with ``chunks=``) is summed chunk by chunk under whatever dask scheduler is
active: each task sums its chunk's rows into the groups present in that chunk (groups present × genes, so a chunk
of cells sorted by condition never makes a conditions × genes array), and the partial sums are added in a tree,
a few at a time. The result equals the in-memory one up to the order of floating-point additions (~1e-16).
"""

from __future__ import annotations

import anndata as ad
import numba
import numpy as np
import pandas as pd
from scipy import sparse

from vclib.schema import (
    CONTEXT_KEY,
    CONTROL,
    COUNTS,
    LOG1P,
    PERTURBATION_KEY,
    SIGNATURE,
    VclibInputError,
    check_cells,
    check_columns,
    condition_id,
    is_dask,
    normalise,
)

CHUNK_SIZE = 10_000
SPLIT_EVERY = 8  # partial sums added per task in the dask path's tree of sums


def _log1p_block(block, values: str):
    """A row block of X as log1p-normalised values (normalising raw counts with scanpy)."""
    if values == COUNTS:
        tmp = ad.AnnData(sparse.csr_matrix(block, dtype=np.float64) if sparse.issparse(block) else
                         np.asarray(block, dtype=np.float64))
        normalise(tmp)
        return tmp.X
    return block


@numba.njit(cache=True)
def _add_group_sums(indptr, indices, data, codes, sums) -> None:
    """``sums[codes[r]] += row r`` for the rows of a CSR matrix (codes -1: no group). One pass over the stored
    values; scipy's indicator product (the obvious alternative) builds a sparse result and took ~10x longer."""
    for r in range(indptr.size - 1):
        k = codes[r]
        if k < 0:
            continue
        for s in range(indptr[r], indptr[r + 1]):
            sums[k, indices[s]] += data[s]


def group_means(X, codes: np.ndarray, n_groups: int, *, values: str = LOG1P,
                chunk_size: int = CHUNK_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the rows of ``X`` in each group, and the group sizes.

    Parameters
    ----------
    X
        Cells × genes, dense, sparse, backed (read in row chunks of ``chunk_size``) or a dask array (summed chunk
        by chunk with the active dask scheduler).
    codes
        Group index of each row, ``-1`` for rows in no group.
    n_groups
        Number of groups.
    values
        ``"log1p"`` (use X as is) or ``"counts"`` (normalise and log1p each chunk first).

    Returns
    -------
    ``(means, sizes)``: a dense ``n_groups × genes`` float64 array (NaN for empty groups) and the row counts.
    """
    sizes = np.bincount(codes[codes >= 0], minlength=n_groups)
    sums = _dask_group_sums(X, codes, n_groups, values) if is_dask(X) else _group_sums(X, codes, n_groups, values,
                                                                                         chunk_size)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / sizes[:, None]
    return means, sizes


def _add_rows(block, codes: np.ndarray, sums: np.ndarray) -> None:
    """``sums[codes[r]] += row r`` of a dense or sparse block (codes -1: no group)."""
    if sparse.issparse(block):
        block = sparse.csr_matrix(block)
        _add_group_sums(block.indptr, block.indices, block.data, codes, sums)
        return
    keep = np.flatnonzero(codes >= 0)
    indicator = sparse.csr_matrix((np.ones(keep.size), (codes[keep], keep)), shape=(sums.shape[0], codes.size))
    sums += indicator @ np.asarray(block)


def _group_sums(X, codes: np.ndarray, n_groups: int, values: str, chunk_size: int) -> np.ndarray:
    sums = np.zeros((n_groups, X.shape[1]), dtype=np.float64)
    # log1p in memory: one pass over X itself, no row-block copies; backed files and counts go by row blocks
    whole = values == LOG1P and (isinstance(X, np.ndarray) or sparse.issparse(X))
    step = max(X.shape[0], 1) if whole else chunk_size
    for start in range(0, X.shape[0], step):
        stop = min(start + step, X.shape[0])
        c = codes[start:stop]
        keep = np.flatnonzero(c >= 0)
        if keep.size == 0:
            continue
        _add_rows(X if whole else _log1p_block(X[start:stop], values), c, sums)
    return sums


def _chunk_sums(block, codes: np.ndarray, values: str) -> tuple[np.ndarray, np.ndarray]:
    """The groups present in a chunk and their sums (groups present × genes)."""
    present = codes >= 0
    groups, local = np.unique(codes[present], return_inverse=True)
    local_codes = np.full(codes.size, -1)
    local_codes[present] = local
    sums = np.zeros((groups.size, block.shape[1]))
    if groups.size:
        _add_rows(_log1p_block(block, values), local_codes, sums)
    return groups, sums


def _add_partial_sums(*parts: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Partial sums ``(groups, sums)`` of several chunks added into one."""
    groups = np.unique(np.concatenate([g for g, _ in parts]))
    sums = np.zeros((groups.size, parts[0][1].shape[1]))
    for g, s in parts:
        sums[np.searchsorted(groups, g)] += s
    return groups, sums


def _dask_group_sums(X, codes: np.ndarray, n_groups: int, values: str) -> np.ndarray:
    """Group sums of a dask array: one task per row chunk, then a tree of sums (see the module docstring)."""
    import dask

    X = X.rechunk({1: -1})
    bounds = np.cumsum((0, *X.chunks[0]))
    parts = [dask.delayed(_chunk_sums)(block, codes[a:b], values)
             for block, a, b in zip(X.to_delayed()[:, 0], bounds[:-1], bounds[1:], strict=True)]
    while len(parts) > 1:
        parts = [dask.delayed(_add_partial_sums)(*parts[i : i + SPLIT_EVERY])
                 for i in range(0, len(parts), SPLIT_EVERY)]
    groups, partial = dask.compute(parts[0])[0]
    sums = np.zeros((n_groups, X.shape[1]))
    sums[groups] = partial
    return sums


def _conditions(obs: pd.DataFrame, perturbation_key: str, context_key: str) -> tuple[pd.DataFrame, np.ndarray]:
    check_columns(obs, [perturbation_key, context_key])
    frame = pd.DataFrame({CONTEXT_KEY: obs[context_key].astype(str).to_numpy(),
                          PERTURBATION_KEY: obs[perturbation_key].astype(str).to_numpy()})
    keys = frame[CONTEXT_KEY] + "|" + frame[PERTURBATION_KEY]
    codes, uniques = pd.factorize(keys, sort=True)
    table = frame.drop_duplicates().assign(_key=lambda d: d[CONTEXT_KEY] + "|" + d[PERTURBATION_KEY])
    table = table.set_index("_key").loc[uniques].reset_index(drop=True)
    return table, codes


def pseudobulk(
    adata: ad.AnnData,
    *,
    perturbation_key: str = PERTURBATION_KEY,
    context_key: str = CONTEXT_KEY,
    control: str = CONTROL,
    chunk_size: int = CHUNK_SIZE,
) -> ad.AnnData:
    """Mean log1p expression and cell count of every condition, controls included.

    Parameters
    ----------
    adata
        Cells in the data contract (see :func:`vclib.loaders.read`); may be opened in backed mode, or read lazily
        with ``chunks=`` (a dask ``X``, summed chunk by chunk on the active dask scheduler).
    perturbation_key, context_key, control
        Column names and control label (the contract's defaults).
    chunk_size
        Rows read at a time from a backed file.

    Returns
    -------
    AnnData with one row per condition, index ``"context|perturbation"``, ``X`` the mean log1p expression
    (dense float64) and obs columns ``context``, ``perturbation``, ``n_cells``, ``is_control``. Rows are sorted
    by context, then perturbation. ``var`` is a copy of the input's var; ``uns["vclib"]["values"]`` is
    ``"signature"`` for response signatures (each row a response already), else ``"log1p"``.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=4, n_genes=50, cells_per_condition=10)
    >>> pb = vc.pseudobulk.pseudobulk(adata)
    >>> pb.obs.columns.tolist()
    ['context', 'perturbation', 'n_cells', 'is_control']
    """
    values = check_cells(adata, perturbation_key=perturbation_key, context_key=context_key, what="pseudobulk")
    table, codes = _conditions(adata.obs, perturbation_key, context_key)
    means, sizes = group_means(adata.X, codes, len(table), values=values, chunk_size=chunk_size)
    out = _as_anndata(table.assign(n_cells=sizes), means, adata.var, control=control)
    out.uns["vclib"] = {"values": SIGNATURE if values == SIGNATURE else LOG1P}  # what a row is: a response or a mean
    return out


def _as_anndata(table: pd.DataFrame, means: np.ndarray, var: pd.DataFrame, *, control: str) -> ad.AnnData:
    table = table.assign(is_control=table[PERTURBATION_KEY] == control)
    table.index = [condition_id(c, p) for c, p in zip(table[CONTEXT_KEY], table[PERTURBATION_KEY], strict=True)]
    table[CONTEXT_KEY] = table[CONTEXT_KEY].astype("category")
    return ad.AnnData(X=means, obs=table, var=var.copy())


def _halves(codes: np.ndarray, seed: int | None) -> np.ndarray:
    """0/1 per cell: each group's cells shuffled, the first floor(n/2) in half 0."""
    rng = np.random.default_rng(seed)
    half = np.zeros(codes.size, dtype=np.int64)
    order = np.argsort(codes, kind="stable")
    for members in np.split(order, np.flatnonzero(np.diff(codes[order])) + 1):
        members = rng.permutation(members)
        half[members[len(members) // 2 :]] = 1
    return half


def half_labels(
    adata: ad.AnnData,
    *,
    perturbation_key: str = PERTURBATION_KEY,
    context_key: str = CONTEXT_KEY,
    seed: int | None = 0,
) -> np.ndarray:
    """Assign every cell to half 0 or 1, splitting each condition's cells at random into two disjoint halves.

    The same assignment :func:`split_halves` uses for the same seed; use it to split cells themselves (e.g.
    for a cell-level noise ceiling).

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=4, n_genes=50, cells_per_condition=10)
    >>> half = vc.pseudobulk.half_labels(adata, seed=0)
    >>> int(half.sum()), adata.n_obs
    (290, 580)
    """
    return _halves(_conditions(adata.obs, perturbation_key, context_key)[1], seed)


def split_halves(
    adata: ad.AnnData,
    *,
    perturbation_key: str = PERTURBATION_KEY,
    context_key: str = CONTEXT_KEY,
    control: str = CONTROL,
    seed: int | None = 0,
    chunk_size: int = CHUNK_SIZE,
) -> tuple[ad.AnnData, ad.AnnData]:
    """Pseudobulks of two disjoint random halves of every condition's cells (for the noise ceiling).

    Each condition's cells are shuffled and split into halves of ``floor(n/2)`` and ``ceil(n/2)`` cells;
    conditions with fewer than two cells are left out.

    Parameters
    ----------
    adata
        Cells in the data contract; may be opened in backed mode or read lazily with ``chunks=``.
    perturbation_key, context_key, control
        Column names and control label.
    seed
        Seed of the random halves.
    chunk_size
        Rows read at a time from a backed file.

    Returns
    -------
    Two AnnData objects with the same rows (conditions) as :func:`pseudobulk`, ``n_cells`` counting the half.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=4, n_genes=50, cells_per_condition=10)
    >>> a, b = vc.pseudobulk.split_halves(adata, seed=0)
    >>> bool((a.obs_names == b.obs_names).all())
    True
    """
    table, codes = _conditions(adata.obs, perturbation_key, context_key)
    half = _halves(codes, seed)
    n = len(table)
    values = adata.uns.get("vclib", {}).get("values", LOG1P)
    means, sizes = group_means(adata.X, codes * 2 + half, 2 * n, values=values, chunk_size=chunk_size)
    keep = (sizes[0::2] > 0) & (sizes[1::2] > 0)
    if not keep.any():
        raise VclibInputError("no condition has two or more cells, so no condition can be split in halves.")
    return tuple(
        _as_anndata(table.assign(n_cells=sizes[h::2])[keep].reset_index(drop=True), means[h::2][keep],
                    adata.var, control=control)
        for h in (0, 1)
    )


def deltas(pb: ad.AnnData, *, control: str = CONTROL) -> ad.AnnData:
    """Each perturbed condition's pseudobulk minus its context's control pseudobulk.

    Parameters
    ----------
    pb
        Output of :func:`pseudobulk` (must hold one control row per context).
    control
        The control label.

    Returns
    -------
    AnnData of the perturbed conditions only, ``X`` = delta, same obs columns.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=4, n_genes=50, cells_per_condition=10)
    >>> d = vc.pseudobulk.deltas(vc.pseudobulk.pseudobulk(adata))
    >>> bool(d.obs["is_control"].any())
    False
    """
    obs = pb.obs
    is_control = obs[PERTURBATION_KEY] == control
    ctrl = pd.Series(np.flatnonzero(is_control.to_numpy()), index=obs.loc[is_control, CONTEXT_KEY].astype(str))
    contexts = obs.loc[~is_control, CONTEXT_KEY].astype(str)
    missing = sorted(set(contexts) - set(ctrl.index))
    if missing:
        raise VclibInputError(f"context {missing[0]!r} has no control pseudobulk; deltas need one per context.")
    X = np.asarray(pb.X)
    out = pb[~is_control.to_numpy()].copy()
    out.X = X[~is_control.to_numpy()] - X[ctrl.loc[contexts].to_numpy()]
    return out
