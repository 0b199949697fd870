"""The data contract: what a vclib AnnData looks like, and the check that it does.

Every function in vclib reads cells through this contract, so it is defined once here:

* ``obs["perturbation"]``: the perturbation of each cell; the unperturbed cells carry :data:`CONTROL`.
  Combinations are written with :data:`COMBINATION_SEP` and their targets in sorted order (``"A+B"``).
* ``obs["context"]``: the biological context (cell line, cell type, donor, ...). A dataset without a context
  column is one context named :data:`DEFAULT_CONTEXT`. Every context has control cells.
* ``X``: log1p of library-size-normalised expression (``normalize_total(target_sum=1e4)`` then ``log1p``), or,
  for files opened in backed mode, raw counts that are normalised chunk by chunk when read.
  Raw counts, when known, are kept in ``layers["counts"]``.
* ``var_names``: unique gene names.
* ``uns["vclib"]``: what the loader found and did (``values``, the original keys, ...).

:func:`validate` checks an AnnData against the contract and raises :class:`VclibInputError` naming the
offending values and the fix. :func:`detect_values` tells what ``X`` holds.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

PERTURBATION_KEY = "perturbation"
CONTEXT_KEY = "context"
CONTROL = "control"
COMBINATION_SEP = "+"
DEFAULT_CONTEXT = "all"
TARGET_SUM = 1e4
# Values of uns["vclib"]["values"]: what X holds.
LOG1P = "log1p"
COUNTS = "counts"
SIGNATURE = "signature"


def normalise(adata: ad.AnnData) -> None:
    """Normalise raw counts into the contract's values, in place on an AnnData the caller owns:
    ``sc.pp.normalize_total(target_sum=1e4)`` then ``sc.pp.log1p``.

    scanpy is imported here, on first use, because importing it also imports matplotlib (about a second).

    Examples
    --------
    >>> import numpy as np, anndata as ad
    >>> a = ad.AnnData(np.array([[1.0, 3.0], [2.0, 2.0]]))
    >>> normalise(a)
    >>> np.round(np.expm1(a.X).sum(axis=1))
    array([10000., 10000.])
    """
    import scanpy as sc

    sc.pp.normalize_total(adata, target_sum=TARGET_SUM)
    sc.pp.log1p(adata)


class VclibInputError(ValueError):
    """Input that does not fit the data contract; the message names the offending values and the fix."""


class NotApplicable(VclibInputError):
    """An analysis that cannot apply to this data's shape (e.g. an unseen-context split with one context); the
    message says why in one sentence. Pipelines skip it and report the sentence instead of failing."""


def condition_id(context: str, perturbation: str) -> str:
    """The identifier of a condition, ``"context|perturbation"``, used as obs index of pseudobulks.

    Examples
    --------
    >>> condition_id("K562", "KLF1+MAP2K6")
    'K562|KLF1+MAP2K6'
    """
    return f"{context}|{perturbation}"


def targets(perturbation: str) -> list[str]:
    """The targets of a perturbation label: ``"A+B"`` gives ``["A", "B"]``, the control gives ``[]``.

    Examples
    --------
    >>> targets("KLF1+MAP2K6")
    ['KLF1', 'MAP2K6']
    >>> targets("control")
    []
    """
    if perturbation == CONTROL:
        return []
    return perturbation.split(COMBINATION_SEP)


def canonical_label(label: str, *, control: str, sep: str | None = COMBINATION_SEP) -> str:
    """Write a user's perturbation label in the contract: control as :data:`CONTROL`, targets sorted, ``+``.

    Parts equal to the control label are dropped, so GEARS' ``"KLF1+ctrl"`` becomes ``"KLF1"``. With
    ``sep=None`` every label is one perturbation. A ``+`` inside a single perturbation's name (a drug such as
    ``"(+)-JQ1"``) is written ``plus``, because ``+`` means a combination in the contract.

    Examples
    --------
    >>> canonical_label("MAP2K6_KLF1", control="ctrl", sep="_")
    'KLF1+MAP2K6'
    >>> canonical_label("KLF1+ctrl", control="ctrl")
    'KLF1'
    >>> canonical_label("(+)-JQ1", control="DMSO", sep=None)
    '(plus)-JQ1'
    """
    label = str(label).strip()
    if label == control:
        return CONTROL
    parts = [label] if sep is None else [p.strip() for p in label.split(sep)]
    if sep != COMBINATION_SEP:
        parts = [p.replace(COMBINATION_SEP, "plus") for p in parts]
    parts = sorted({p for p in parts if p and p != control})
    if not parts:
        return CONTROL
    return COMBINATION_SEP.join(parts)


def is_dask(X) -> bool:
    """Whether ``X`` is a dask array (lazy, chunked: :func:`vclib.loaders.read` with ``chunks=``). Asked without
    importing dask, which is optional: a dask array can only exist once ``dask.array`` has been imported.

    Examples
    --------
    >>> import numpy as np
    >>> is_dask(np.zeros((2, 2)))
    False
    """
    dask_array = sys.modules.get("dask.array")
    return dask_array is not None and isinstance(X, dask_array.Array)


def _sample_rows(X, n: int, seed: int = 0) -> np.ndarray:
    rows = X.shape[0]
    if rows <= n:
        return np.arange(rows)
    return np.sort(np.random.default_rng(seed).choice(rows, n, replace=False))


def _nonzero_rows(X, rows: np.ndarray) -> list[np.ndarray]:
    """The non-zero values of some rows of a dense or sparse matrix, one array per row."""
    block = X[rows]
    if is_dask(block):  # a lazy matrix: read the sampled rows only
        block = block.compute()
    if sparse.issparse(block):
        block = sparse.csr_matrix(block)
        return [block.data[block.indptr[i] : block.indptr[i + 1]] for i in range(block.shape[0])]
    block = np.asarray(block)
    return [r[r != 0] for r in block]


def _multiples_of_smallest(values: list[np.ndarray], transform) -> float:
    """Fraction of cells whose transformed non-zero values are integer multiples of one unit.

    Library-size normalisation divides a cell's integer counts by one factor, so after undoing the log,
    every non-zero value of a cell is an integer multiple of the value of one count (the smallest value,
    or a half or third of it when the cell has no gene with a single count). This holds after gene
    subsetting too, and fails for any other log base. No library offers this check, hence written here.
    """
    hits = 0
    usable = 0
    for v in values:
        if v.size < 3:
            continue
        usable += 1
        with np.errstate(over="ignore", invalid="ignore"):
            u = transform(v.astype(np.float64))
        for j in (1, 2, 3):
            ratio = u / (u.min() / j)
            if ratio.max() < 1e6 and np.mean(np.abs(ratio - np.round(ratio)) < 1e-3 + 1e-6 * ratio) > 0.95:
                hits += 1
                break
    return hits / usable if usable else 0.0


def detect_values(X, *, n_cells: int = 200, seed: int = 0) -> str:
    """Tell what an expression matrix holds, from a sample of its rows.

    Parameters
    ----------
    X
        Dense, sparse or backed (h5py-like) cells × genes matrix.
    n_cells
        Number of cells to look at.
    seed
        Seed of the row sample.

    Returns
    -------
    ``"counts"`` (non-negative integers), ``"log1p"`` (natural log1p of library-size-normalised values),
    ``"log2p"`` (log2(x + 1) of normalised values, as scater's ``logNormCounts``), ``"negative"`` (scaled or
    centred), ``"normalised"`` (normalised but not log-transformed), or ``"unknown"``.

    Examples
    --------
    >>> import numpy as np
    >>> detect_values(np.array([[0, 1, 3], [2, 0, 5]]))
    'counts'
    >>> counts = np.array([[1, 2, 5, 0], [1, 1, 3, 7]])
    >>> detect_values(np.log1p(counts / counts.sum(1, keepdims=True) * 1e4))
    'log1p'
    """
    values, flat = _sampled_values(X, n_cells, seed)
    if flat.size == 0:
        return "unknown"
    if np.any(flat < 0):
        return "negative"
    if _integers(flat):
        return COUNTS
    if _multiples_of_smallest(values, lambda v: v) > 0.9:
        return "normalised"
    if _multiples_of_smallest(values, np.expm1) > 0.9:
        return LOG1P
    if _multiples_of_smallest(values, lambda v: np.exp2(v) - 1) > 0.9:
        return "log2p"
    return "unknown"


def _sampled_values(X, n_cells: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The non-zero values of a seeded sample of rows: per row, and all together."""
    values = _nonzero_rows(X, _sample_rows(X, n_cells, seed))
    return values, np.concatenate(values) if values else np.zeros(0)


def _integers(flat: np.ndarray) -> bool:
    return bool(np.allclose(flat, np.round(flat)))


def holds_counts(X, *, n_cells: int = 200, seed: int = 0) -> bool:
    """``detect_values(X) == "counts"``, from the same rows, without telling the other kinds apart (the slow part:
    ~40 ms for 200 cells, which every evaluate paid twice to refuse counts).

    Examples
    --------
    >>> import numpy as np
    >>> holds_counts(np.array([[0, 1, 3], [2, 0, 5]])), holds_counts(np.log1p(np.array([[0.5, 1.5, 3.0]])))
    (True, False)
    """
    _, flat = _sampled_values(X, n_cells, seed)
    return flat.size > 0 and not np.any(flat < 0) and _integers(flat)  # detect_values' first three rules


def _categories_seen(series: pd.Series, n: int = 12) -> str:
    seen = pd.unique(series.astype(str))
    shown = ", ".join(repr(s) for s in seen[:n])
    return shown + (f", ... ({len(seen)} in all)" if len(seen) > n else "")


def check_columns(obs: pd.DataFrame, keys: Iterable[str]) -> None:
    """Raise if any of ``keys`` is not an obs column, naming the columns that exist."""
    missing = [k for k in keys if k not in obs.columns]
    if missing:
        raise VclibInputError(
            f"obs has no column {', '.join(repr(k) for k in missing)}; columns present: "
            f"{', '.join(repr(c) for c in obs.columns) or '(none)'}. Pass the right names with "
            "perturbation_key= / context_key=."
        )


MISSING_LABELS = ("", "nan", "NaN", "NAN", "None", "<NA>")  # missing values written as text (pandas, scPerturb)


def check_labels(obs: pd.DataFrame, keys: Iterable[str] = (PERTURBATION_KEY, CONTEXT_KEY), *,
                 control: str = CONTROL) -> None:
    """Raise if some cell has no label in one of ``keys``: NaN, empty, or missing written as text (``'nan'``,
    ``'None'``, ... as scPerturb's files have), naming the cells and how many there are. The control label is
    never taken for a missing one (a screen may call its controls ``"None"``)."""
    for key in keys:
        col = obs[key]
        text = col.astype(str).str.strip()
        blank = col.isna().to_numpy() | (text.isin(MISSING_LABELS) & (text != control)).to_numpy()
        if blank.any():
            seen = sorted({"NaN" if pd.isna(v) else repr(t) for v, t in zip(col[blank], text[blank], strict=True)})
            raise VclibInputError(
                f"{int(blank.sum())} cells have an empty {key} label ({', '.join(seen)}) (e.g. cells "
                f"{', '.join(map(repr, obs.index[blank][:3]))}); every cell needs a {key}: label them or drop them."
            )


def check_cells(adata: ad.AnnData, *, perturbation_key: str = PERTURBATION_KEY, context_key: str = CONTEXT_KEY,
                what: str = "this function") -> str:
    """Raise unless ``adata`` holds cells vclib can average and rank; return what ``X`` holds.

    Data loaded with :func:`vclib.loaders.read` carries its contract in ``uns["vclib"]["values"]`` and is
    trusted. Data without it (built by hand, or a model's predictions) is checked on a sample of rows: raw counts
    are refused, naming :func:`vclib.loaders.read`, so they never reach a pseudobulk or a DE test as if they were
    log1p.

    Examples
    --------
    >>> import vclib as vc
    >>> check_cells(vc.loaders.simulate(n_perturbations=4, n_genes=50, cells_per_condition=10))
    'log1p'
    """
    check_columns(adata.obs, [perturbation_key, context_key])
    stamped = (adata.uns.get("vclib") or {}).get("values")
    if stamped is not None:
        return stamped
    if holds_counts(adata.X):
        raise VclibInputError(
            f"{what} needs log1p-normalised expression, but X holds integers (raw counts?) and this AnnData was not "
            "loaded with vc.loaders.read() (no uns['vclib']). Load it with "
            "vc.loaders.read(adata, perturbation_key=..., context_key=..., control=...), which detects counts and "
            "normalises them."
        )
    return LOG1P


def check_controls(obs: pd.DataFrame, *, control: str = CONTROL, kind: str = "cells") -> None:
    """Raise if some context has no cells labelled ``control``, naming the context and the labels seen."""
    is_control = obs[PERTURBATION_KEY].astype(str) == control
    contexts = obs[CONTEXT_KEY].astype(str)
    lacking = sorted(set(contexts) - set(contexts[is_control]))
    if lacking:
        ctx = lacking[0]
        raise VclibInputError(
            f"context {ctx!r} has no control {kind} (control label {control!r} not found in "
            f"obs[{PERTURBATION_KEY!r}]; labels seen: {_categories_seen(obs.loc[contexts == ctx, PERTURBATION_KEY])})"
            + (f"; {len(lacking) - 1} more contexts lack controls" if len(lacking) > 1 else "")
            + ". Pass the right control= label, or drop that context."
        )


def check_genes(var_names: pd.Index) -> None:
    """Raise on duplicated gene names, naming them."""
    dup = var_names[var_names.duplicated()].unique()
    if len(dup):
        raise VclibInputError(
            f"{len(dup)} gene names occur more than once: {', '.join(map(repr, dup[:10]))}. "
            "Make them unique (adata.var_names_make_unique()) or aggregate the duplicates."
        )


def _iter_row_blocks(X, chunk_size: int = 20_000):
    for start in range(0, X.shape[0], chunk_size):
        yield start, X[start : start + chunk_size]


def _has_problem(block, allow_nan: bool) -> np.ndarray:
    """1 × 1: whether a row block holds values :func:`check_finite` refuses."""
    data = block.data if sparse.issparse(block) else np.asarray(block)
    bad = np.isinf(data) if allow_nan else ~np.isfinite(data) | (data < 0)
    return np.array([[bad.any()]])


def _first_problem_block(X, allow_nan: bool):
    """The first row block of a dask array holding values :func:`check_finite` refuses, as ``(start, block)`` in
    memory; one parallel pass (whatever dask scheduler is active) finds it, then only that block is read again."""
    X = X.rechunk({1: -1})
    flags = X.map_blocks(_has_problem, allow_nan, chunks=(1, 1), dtype=bool, meta=np.empty((0, 0), bool))
    starts = np.cumsum((0, *X.chunks[0]))
    for i in np.flatnonzero(flags.compute().ravel())[:1]:
        yield int(starts[i]), X.blocks[i].compute()


def check_finite(X, *, allow_nan: bool = False, obs_names: pd.Index | None = None) -> None:
    """Raise if ``X`` holds NaN, inf or negative values (chunk by chunk, so backed files work; a dask array in one
    parallel pass over its chunks)."""
    blocks = _first_problem_block(X, allow_nan) if is_dask(X) else _iter_row_blocks(X)
    for start, block in blocks:
        data = block.data if sparse.issparse(block) else np.asarray(block)
        bad = ~np.isfinite(data) if not allow_nan else np.isinf(data)
        if bad.any():
            rows = _bad_rows(block, bad, start)
            names = [str(obs_names[r]) if obs_names is not None else str(r) for r in rows[:3]]
            raise VclibInputError(
                f"X holds {'NaN or ' if not allow_nan else ''}infinite values ({int(bad.sum())} entries, "
                f"e.g. in cells {', '.join(names)}). Remove or re-compute those cells before loading."
            )
        if not allow_nan and np.any(data < 0):
            rows = _bad_rows(block, data < 0, start)
            names = [str(obs_names[r]) if obs_names is not None else str(r) for r in rows[:3]]
            raise VclibInputError(
                f"X holds negative values (e.g. in cells {', '.join(names)}, min {data.min():.3g}). vclib needs "
                "raw counts or log1p-normalised expression, not scaled/centred data: load the counts layer "
                "(layer='counts') or the matrix from before sc.pp.scale / regress_out."
            )


def _bad_rows(block, mask: np.ndarray, start: int) -> np.ndarray:
    if sparse.issparse(block):
        coo = sparse.coo_matrix(block)
        return np.unique(coo.row[mask]) + start
    return np.unique(np.nonzero(mask)[0]) + start


def validate(adata: ad.AnnData, *, control: str = CONTROL) -> None:
    """Check that an AnnData follows the data contract; raise :class:`VclibInputError` if not.

    Checks the obs columns, empty labels, control cells in every context, unique gene names, and, for cells,
    that ``X`` is finite, non-negative and log1p-normalised (or counts, for backed files). Nothing is modified.

    Parameters
    ----------
    adata
        AnnData as returned by :func:`vclib.loaders.read`.
    control
        The control label.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_perturbations=4, n_genes=50, cells_per_condition=10)
    >>> vc.schema.validate(adata)
    """
    check_columns(adata.obs, [PERTURBATION_KEY, CONTEXT_KEY])
    check_labels(adata.obs)
    check_genes(adata.var_names)
    values = adata.uns.get("vclib", {}).get("values", LOG1P)
    if values == SIGNATURE:
        check_finite(adata.X, allow_nan=True, obs_names=adata.obs_names)
        return
    check_controls(adata.obs, control=control)
    check_finite(adata.X, obs_names=adata.obs_names)
    found = detect_values(adata.X)
    if found not in (values, "unknown"):  # "unknown": the user stated values='log1p' for data detection cannot place
        raise VclibInputError(
            f"X should hold {values} but looks like {found}. Load the data with vclib.loaders.read(), which "
            "detects raw counts and converts them, instead of changing X afterwards."
        )
