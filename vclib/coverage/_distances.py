"""How different are the contexts before any perturbation? Distances between their control cells.

Only control cells are used: they are what a lab has before it runs a screen in a new context.
"""

from __future__ import annotations

import warnings
from itertools import combinations

import anndata as ad
import numpy as np
import pandas as pd
from scipy import linalg, sparse

from vclib.schema import (
    CONTEXT_KEY,
    CONTROL,
    COUNTS,
    LOG1P,
    PERTURBATION_KEY,
    SIGNATURE,
    VclibInputError,
    check_cells,
    is_dask,
    normalise,
)

METRICS = ("sqeuclidean", "euclidean")
PAIR_COLUMNS = ["context_a", "context_b"]


def _euclidean_group_sums(X: np.ndarray, codes: np.ndarray, n_groups: int, block: int = 1024) -> np.ndarray:
    """Sum of the Euclidean distances between every two rows, totalled per pair of groups (groups × groups),
    self-distances exactly 0. Rows are taken ``block`` at a time against all rows: few, large BLAS calls."""
    indicator = sparse.csr_matrix((np.ones(len(X)), (codes, np.arange(len(X)))), shape=(n_groups, len(X)))
    sq = np.einsum("ij,ij->i", X, X)
    sums = np.zeros((n_groups, n_groups))
    for start in range(0, len(X), block):
        stop = min(start + block, len(X))
        d2 = sq[start:stop, None] + sq[None, :] - 2 * X[start:stop] @ X.T
        d2[np.arange(stop - start), np.arange(start, stop)] = 0.0
        per_group = indicator @ np.sqrt(np.maximum(d2, 0)).T  # groups × block rows
        sums += np.asarray(indicator[:, start:stop] @ per_group.T)
    return sums


def edistance(
    X: np.ndarray,
    groups: np.ndarray,
    *,
    metric: str = "sqeuclidean",
    sample_correct: bool = True,
) -> pd.DataFrame:
    """E-distance between every two groups of rows of ``X`` (e.g. cells in a PCA embedding).

    ``E(X, Y) = 2·mean d(x, y) − mean d(x, x') − mean d(y, y')`` (Székely's energy statistic; scPerturb,
    Peidli et al.). The between-group mean is over all ``nx·ny`` pairs; the within-group means are over the
    ``n(n − 1)`` ordered pairs of *distinct* rows with ``sample_correct=True`` (the default), over all ``n²``
    pairs, self-pairs included, with ``sample_correct=False``. The variants, by name:

    * **scPerturb's** ``edist`` (the default; scperturb 0.1.0: ``dist="sqeuclidean"``,
      ``sample_correct=True``): ``metric="sqeuclidean", sample_correct=True``. In closed form
      ``2·||μx − μy||² − 2 tr Σx/(nx − 1) − 2 tr Σy/(ny − 1)`` with Σ the population covariance: an unbiased
      estimate of ``2·||μx − μy||²``, so two samples of one population score about 0 and can score below 0.
    * **uncorrected** (vclib's earlier default; pertpy 0.6's ``Edistance``; scPerturb's
      ``edist(..., sample_correct=False)``): ``metric="sqeuclidean", sample_correct=False``, which is exactly
      ``2·||μx − μy||²``. Biased upwards by ``2 tr Σx/nx + 2 tr Σy/ny``: small or spread-out groups look
      farther apart.
    * **pertpy's** ``Edistance`` (pertpy 1.0: ``cell_wise_metric="euclidean"``, plain means over all
      pairs): ``metric="euclidean", sample_correct=False``, the energy distance of Székely & Rizzo as a
      V-statistic. ``metric="euclidean", sample_correct=True`` is scPerturb's ``edist(dist="euclidean")``.

    ``"sqeuclidean"`` is computed in closed form from each group's mean and total variance,
    ``mean ||x − y||² = ||μx − μy||² + tr Σx + tr Σy``, so 50 groups × 2,000 rows take milliseconds.
    ``"euclidean"`` is exact, from all pairwise distances computed in blocks: quadratic in the number of rows,
    so subsample large groups first.

    Parameters
    ----------
    X
        Rows × dimensions, dense.
    groups
        Group label of every row.
    metric
        ``"sqeuclidean"`` or ``"euclidean"``.
    sample_correct
        Divide within-group sums by ``n(n − 1)`` (self-pairs excluded; scPerturb's default) instead of ``n²``.
        Needs at least 2 rows per group.

    Returns
    -------
    Square symmetric DataFrame, groups (sorted) × groups, 0 on the diagonal.

    References
    ----------
    Peidli S. et al., scPerturb: harmonized single-cell perturbation data, Nat Methods 21, 531–540 (2024);
    Székely G. J. & Rizzo M. L., Energy statistics, J Stat Plan Inference 143, 1249–1272 (2013).

    Examples
    --------
    >>> import numpy as np
    >>> import vclib as vc
    >>> X = np.array([[0.0, 0], [0, 2], [3, 0], [3, 2]])
    >>> groups = np.array(["a", "a", "b", "b"])
    >>> vc.coverage.edistance(X, groups, sample_correct=False).loc["a", "b"]  # 2 × ||(0, 1) − (3, 1)||²
    np.float64(18.0)
    >>> vc.coverage.edistance(X, groups).loc["a", "b"]  # 18 − 2·1/(2 − 1) − 2·1/(2 − 1)
    np.float64(14.0)
    """
    if metric not in METRICS:
        raise VclibInputError(f"metric={metric!r} is not one of {', '.join(map(repr, METRICS))}.")
    X = np.asarray(X, dtype=np.float64)
    groups = np.asarray(groups).astype(str)
    if X.ndim != 2 or len(groups) != len(X):
        raise VclibInputError(f"X has shape {X.shape} but groups has {len(groups)} labels; give one per row.")
    names, codes = np.unique(groups, return_inverse=True)
    n = np.bincount(codes, minlength=len(names)).astype(float)
    if sample_correct and (n < 2).any():
        raise VclibInputError(
            f"group {str(names[n < 2][0])!r} has a single row; sample_correct=True needs at least 2 per group: "
            "drop that group (control_distances: raise min_cells) or pass sample_correct=False."
        )
    within_pairs = n * (n - 1) if sample_correct else n**2
    if metric == "sqeuclidean":
        indicator = sparse.csr_matrix((np.ones(len(X)), (codes, np.arange(len(X)))), shape=(len(names), len(X)))
        means = np.asarray(indicator @ X) / n[:, None]
        second = np.asarray(indicator @ (X**2).sum(axis=1)).ravel() / n  # mean ||x||²
        total_var = second - (means**2).sum(axis=1)  # tr Σ (population)
        sq = (means**2).sum(axis=1)
        between = sq[:, None] + sq[None, :] - 2 * means @ means.T + total_var[:, None] + total_var[None, :]
        within = 2 * total_var * n**2 / within_pairs  # sum over all ordered pairs is 2 n² tr Σ
    else:
        sums = _euclidean_group_sums(X, codes, len(names))
        within = np.diag(sums) / within_pairs
        between = sums / np.outer(n, n)
    E = 2 * between - within[:, None] - within[None, :]
    E = (E + E.T) / 2  # exactly symmetric despite rounding
    np.fill_diagonal(E, 0.0)
    out = pd.DataFrame(E, index=names, columns=names)
    out.index.name = out.columns.name = CONTEXT_KEY
    return out


def _log1p_rows(block, values: str):
    """Rows of X as float64 log1p values (CSR if sparse), normalising raw counts as the loader does: exact block by
    block, since library-size normalisation and log1p act on each cell alone."""
    if values == COUNTS:
        tmp = ad.AnnData(sparse.csr_matrix(block, dtype=np.float64) if sparse.issparse(block) else
                         np.asarray(block, dtype=np.float64))
        normalise(tmp)
        block = tmp.X
    return sparse.csr_matrix(block, dtype=np.float64) if sparse.issparse(block) else np.asarray(block, dtype=np.float64)


def _control_matrix(adata: ad.AnnData, rows: np.ndarray):
    """log1p-normalised expression of some rows (normalising raw counts of backed files as the loader would). For a
    dask X, a lazy dask array: the rows are selected and normalised chunk by chunk when it is computed."""
    values = adata.uns.get("vclib", {}).get("values", LOG1P)
    X = adata.X[rows]
    if is_dask(X):
        meta = sparse.csr_matrix((0, 0)) if sparse.issparse(X._meta) else np.empty((0, 0))
        return X.rechunk({1: -1}).map_blocks(_log1p_rows, values, dtype=np.float64, meta=meta)
    return _log1p_rows(X, values)


def _moments(block, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Column sums of the rows of each group, then column sums of all rows' squares: (n_groups + 1) × genes."""
    codes = np.ravel(codes)
    indicator = sparse.csr_matrix((np.ones(codes.size), (codes, np.arange(codes.size))), shape=(n_groups, codes.size))
    sums = indicator @ block
    squares = block.multiply(block) if sparse.issparse(block) else block**2
    return np.vstack([sums.toarray() if sparse.issparse(sums) else np.asarray(sums),
                      np.asarray(squares.sum(axis=0)).reshape(1, -1)])


def _gram(block, genes: np.ndarray) -> np.ndarray:
    """``Xg.T @ Xg`` of the genes' columns, from dense row blocks of ~4M values: BLAS products, bounded memory."""
    Xg = block[:, genes]
    gram = np.zeros((len(genes), len(genes)))
    rows = max(1, 2**22 // max(len(genes), 1))
    for start in range(0, Xg.shape[0], rows):
        part = Xg[start : start + rows]
        part = part.toarray() if sparse.issparse(part) else np.asarray(part)
        gram += part.T @ part
    return gram


def _project(block, genes: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """``Xg @ vectors`` of the genes' columns (uncentred PCA scores)."""
    return np.asarray(block[:, genes] @ vectors)


def _chunk_term(*blocks, summand):
    """One chunk's term of a sum over chunks, with a leading axis of length 1 to sum over."""
    return summand(*blocks)[None]


def _summed(summand, X, *args, shape: tuple[int, int], codes: np.ndarray | None = None):
    """``summand(X, [codes,] *args)``, a ``shape`` array additive over rows: one call in memory; for a dask X, one
    call per chunk and a tree of sums, left lazy so that :func:`_computed` computes several in one pass."""
    if not is_dask(X):
        return summand(X, *args) if codes is None else summand(X, codes, *args)
    import dask
    import dask.array as da

    inputs = [X] if codes is None else [X, da.from_array(codes[:, None], chunks=(X.chunks[0], 1))]
    args = [dask.delayed(a, pure=True) if isinstance(a, np.ndarray) else a for a in args]  # one copy in the graph
    parts = da.map_blocks(_chunk_term, *inputs, *args, summand=summand, new_axis=2, dtype=np.float64,
                          chunks=((1,) * X.numblocks[0], (shape[0],), (shape[1],)), meta=np.empty((0, 0, 0)))
    return parts.sum(axis=0)


def _computed(*values) -> tuple:
    """The values, the dask arrays among them computed together (one pass, the active dask scheduler)."""
    if not any(is_dask(v) for v in values):
        return values
    import dask

    return dask.compute(*values)


def _covariance(X, moments: np.ndarray, *, n_top_genes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``n_top_genes`` most variable columns of X (sorted), their means and their covariance matrix (÷ n − 1),
    from ``moments`` (:func:`_moments`: column sums, sums of squares in the last row) and the Gram matrix."""
    n = X.shape[0]
    mean = moments[:-1].sum(axis=0) / n
    variance = moments[-1] / n - mean**2
    genes = np.sort(np.argsort(-variance, kind="stable")[: min(n_top_genes, X.shape[1])])
    (gram,) = _computed(_summed(_gram, X, genes, shape=(len(genes), len(genes))))
    mg = mean[genes]
    return genes, mg, (gram - n * np.outer(mg, mg)) / max(n - 1, 1)


def _pca(X, moments: np.ndarray, *, n_pcs: int, n_top_genes: int) -> np.ndarray:
    """Exact PCA scores of the rows of X (dense, sparse or dask) on its ``n_top_genes`` most variable columns.

    The covariance matrix (genes × genes) is formed from the column moments and the Gram matrix, summed over row
    blocks (over chunks for a dask X), and diagonalised in memory with LAPACK: exact, deterministic (each
    component's sign fixed by its largest loading), and fast for many cells. The scores (rows × components) are
    computed in memory.
    """
    genes, mg, cov = _covariance(X, moments, n_top_genes=n_top_genes)
    k = int(max(1, min(n_pcs, X.shape[0] - 1, len(genes))))
    _, vectors = linalg.eigh(cov, subset_by_index=[len(genes) - k, len(genes) - 1])
    vectors = vectors[:, ::-1]
    vectors *= np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(k)])
    if is_dask(X):
        import dask

        scores = X.map_blocks(_project, dask.delayed(genes, pure=True), dask.delayed(vectors, pure=True),
                              chunks=(X.chunks[0], (k,)), dtype=np.float64, meta=np.empty((0, 0)))
        (scores,) = _computed(scores)
    else:
        scores = _project(X, genes, vectors)
    return scores - mg @ vectors


def control_distances(
    adata: ad.AnnData,
    *,
    perturbation_key: str = PERTURBATION_KEY,
    context_key: str = CONTEXT_KEY,
    control: str = CONTROL,
    n_pcs: int = 50,
    n_top_genes: int = 2000,
    min_cells: int = 10,
    metric: str = "sqeuclidean",
    sample_correct: bool = True,
    max_cells: int | None = None,
    seed: int | None = 0,
) -> pd.DataFrame:
    """Distances between the contexts' control cells: E-distance in a shared PCA, and correlation distance of
    their control pseudobulks.

    The PCA (``n_pcs`` components, exact) is fitted on the control cells of all contexts pooled: log1p
    expression of the ``n_top_genes`` genes most variable across those cells. Contexts with fewer than
    ``min_cells`` control cells are skipped for the distance: they keep their rows (NaN) with a ``note`` naming
    the reason, and a warning names them.

    A dask ``X`` (:func:`vclib.loaders.read` with ``chunks=``) is never held whole: the control rows are selected
    and normalised chunk by chunk, the column moments and the Gram matrix of the chosen genes are sums over chunks,
    and the PCA scores (control cells × ``n_pcs``) are the only per-cell result brought into memory. Three passes
    over the file under the active dask scheduler; the results equal the in-memory ones up to rounding
    (tests/test_dask_distances.py checks 1e-10 for several chunkings).

    Parameters
    ----------
    adata
        Cells in the data contract (in memory, backed, or read lazily with ``chunks=``).
    perturbation_key, context_key, control
        Column names and control label.
    n_pcs
        PCA components (fewer if there are fewer control cells or genes).
    n_top_genes
        Genes used for the PCA: the most variable across the pooled control cells.
    min_cells
        Control cells a context needs for a distance (at least 2 for the default sample-size correction).
    metric, sample_correct
        E-distance options, see :func:`edistance`: the default is scPerturb's ``edist`` (squared Euclidean,
        within-group means over distinct pairs); ``sample_correct=False`` is the uncorrected
        ``2·||μa − μb||²``; ``metric="euclidean", sample_correct=False`` is pertpy's ``Edistance``.
    max_cells
        Use at most this many control cells per context (a seeded random subset) for the E-distance; useful with
        ``metric="euclidean"``, which is quadratic in cells. ``None``: all.
    seed
        Seed of the subsets (``max_cells``).

    Returns
    -------
    DataFrame with one row per pair of contexts (``context_a`` < ``context_b``): ``edistance``,
    ``correlation_distance`` (1 − Pearson r over genes of the two control pseudobulks), ``n_control_a``,
    ``n_control_b``, ``note``. Empty (same columns) for a single context.

    References
    ----------
    Peidli S. et al., Nat Methods 21, 531–540 (2024) (E-distance on control and perturbed populations).

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=3, n_perturbations=4, n_genes=50, cells_per_condition=10)
    >>> table = vc.coverage.control_distances(adata, n_pcs=10)
    >>> table[["context_a", "context_b"]].values.tolist()
    [['C1', 'C2'], ['C1', 'C3'], ['C2', 'C3']]
    """
    columns = PAIR_COLUMNS + ["edistance", "correlation_distance", "n_control_a", "n_control_b", "note"]
    if adata.uns.get("vclib", {}).get("values") == SIGNATURE:  # a shape to report, not an error
        out = pd.DataFrame(columns=columns)
        out.attrs["skipped"] = [{"analysis": "context distances", "reason": (
            "these are response signatures without cells: context distances need control cells")}]
        return out
    check_cells(adata, perturbation_key=perturbation_key, context_key=context_key, what="control_distances")
    is_control = (adata.obs[perturbation_key].astype(str) == control).to_numpy()
    contexts = adata.obs[context_key].astype(str).to_numpy()
    names = sorted(set(contexts))
    n_control = pd.Series({c: int((is_control & (contexts == c)).sum()) for c in names})
    usable = [c for c in names if n_control[c] >= min_cells]
    skipped = {c: f"{c!r} has {n_control[c]} control cells (< min_cells={min_cells}): no distance"
               for c in names if c not in usable}
    if skipped:
        warnings.warn("skipped for context distances: " + "; ".join(skipped.values()), UserWarning, stacklevel=2)
    rows = []
    for a, b in combinations(names, 2):
        note = "; ".join(skipped[c] for c in (a, b) if c in skipped)
        rows.append({"context_a": a, "context_b": b, "edistance": np.nan, "correlation_distance": np.nan,
                     "n_control_a": n_control[a], "n_control_b": n_control[b], "note": note})
    table = pd.DataFrame(rows, columns=columns)
    if len(usable) < 2:
        return table

    rng = np.random.default_rng(seed)
    take = []
    for c in usable:
        idx = np.flatnonzero(is_control & (contexts == c))
        if max_cells is not None and len(idx) > max_cells:
            idx = np.sort(rng.choice(idx, max_cells, replace=False))
        take.append(idx)
    order_sorted = np.sort(np.concatenate(take))
    X = _control_matrix(adata, order_sorted)  # lazy for a dask X: three passes below, nothing held whole
    labels = contexts[order_sorted]
    codes = pd.Index(usable).get_indexer(labels)
    (moments,) = _computed(_summed(_moments, X, len(usable), codes=codes, shape=(len(usable) + 1, X.shape[1])))
    E = edistance(_pca(X, moments, n_pcs=n_pcs, n_top_genes=n_top_genes), labels, metric=metric,
                  sample_correct=sample_correct)

    pb = moments[:-1] / np.bincount(codes, minlength=len(usable))[:, None]
    corr = pd.DataFrame(np.corrcoef(pb), index=usable, columns=usable)
    ok = table["context_a"].isin(usable) & table["context_b"].isin(usable)
    table.loc[ok, "edistance"] = [E.loc[a, b] for a, b in zip(table.loc[ok, "context_a"], table.loc[ok, "context_b"],
                                                               strict=True)]
    table.loc[ok, "correlation_distance"] = [1 - corr.loc[a, b] for a, b in
                                             zip(table.loc[ok, "context_a"], table.loc[ok, "context_b"], strict=True)]
    if max_cells is not None:
        table.loc[ok, "note"] = f"E-distance on at most {max_cells} control cells per context"
    return table


def distance_matrix(distances: pd.DataFrame, *, value: str = "edistance") -> pd.DataFrame:
    """A pairwise table (e.g. :func:`control_distances`) as a symmetric context × context matrix.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=3, n_perturbations=4, n_genes=50, cells_per_condition=10)
    >>> vc.coverage.distance_matrix(vc.coverage.control_distances(adata, n_pcs=10)).shape
    (3, 3)
    """
    names = sorted(set(distances["context_a"]) | set(distances["context_b"]))
    out = pd.DataFrame(np.nan, index=names, columns=names)
    for a, b, v in zip(distances["context_a"], distances["context_b"], distances[value], strict=True):
        out.loc[a, b] = out.loc[b, a] = v
    for c in names:
        out.loc[c, c] = 0.0
    out.index.name = out.columns.name = CONTEXT_KEY
    return out
