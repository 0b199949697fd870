"""Read a user's h5ad or AnnData into the data contract."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
from scipy import sparse

from vclib import schema
from vclib.schema import (
    CONTEXT_KEY,
    CONTROL,
    COUNTS,
    DEFAULT_CONTEXT,
    LOG1P,
    PERTURBATION_KEY,
    SIGNATURE,
    VclibInputError,
    is_dask,
)

VALUES = ("auto", COUNTS, LOG1P, "log2p", SIGNATURE)

_REFUSALS = {
    "log2p": (
        "X looks like log2(x + 1) of normalised values (as scater's logNormCounts writes), not natural log1p. "
        "Pass values='log2p' to convert it exactly (log1p(x) = ln(2) * log2(1 + x)), or load raw counts."
    ),
    "negative": (
        "X holds negative values, so it is scaled or centred (e.g. after sc.pp.scale). vclib needs raw counts "
        "or log1p-normalised expression: pass layer='counts' or the matrix from before scaling."
    ),
    "normalised": (
        "X looks library-size normalised but not log-transformed. Apply sc.pp.log1p first, or load raw counts."
    ),
    "unknown": (
        "X is neither raw counts nor recognisably log1p(normalised) values. If you know it is log1p of "
        "library-size-normalised expression, pass values='log1p'; otherwise load raw counts (layer=...)."
    ),
}


def _open(data: str | Path | ad.AnnData, *, backed: bool) -> tuple[ad.AnnData, str]:
    if isinstance(data, ad.AnnData):
        if backed:  # backed mode writes its contract columns onto the object it opened: open our own
            if not data.isbacked:
                raise VclibInputError("backed=True opens a file with X on disk; this AnnData is already in memory: "
                                      "pass backed=False (or the path of its .h5ad file).")
            return ad.read_h5ad(data.filename, backed="r"), str(data.filename)
        return data, "AnnData in memory"
    path = Path(data)
    if not path.exists():
        raise VclibInputError(f"file {str(path)!r} does not exist.")
    if path.suffix != ".h5ad":
        raise VclibInputError(
            f"cannot read {str(path)!r}: vclib reads AnnData .h5ad files (convert other formats with "
            "scanpy.read_10x_h5 / anndata.read_loom and adata.write_h5ad first)."
        )
    try:
        return ad.read_h5ad(path, backed="r" if backed else None), str(path)
    except Exception as err:  # h5py/anndata raise many types for corrupt files
        raise VclibInputError(
            f"cannot read {str(path)!r} as h5ad ({type(err).__name__}: {err}). Is the file complete and "
            "written by anndata?"
        ) from err


def _open_lazy(data: str | Path | ad.AnnData, *, chunks: int) -> tuple[ad.AnnData, str]:
    """An AnnData whose X and layers are dask arrays of ``chunks`` rows (all genes per chunk), obs and var in
    memory. A file is opened with anndata's own lazy reader (:func:`anndata.experimental.read_elem_lazy`): each
    chunk is read from the file by the task that needs it, on whatever worker runs it (h5ad files are reopened per
    task, so the graph travels to a ``distributed`` cluster). An AnnData in memory is wrapped chunk-wise."""
    import dask.array as da
    from anndata.experimental import read_elem_lazy

    if not isinstance(chunks, int) or isinstance(chunks, bool) or chunks < 1:
        raise VclibInputError(f"chunks={chunks!r}: pass the number of cells per chunk, a positive integer (e.g. "
                              "chunks=20_000; all genes of a cell stay in one chunk).")
    if isinstance(data, ad.AnnData):
        if data.isbacked:
            raise VclibInputError("chunks= reads lazily from a file: pass the path of this backed AnnData's file "
                                  f"({data.filename}) instead of the object.")

        def lazy(m):
            return m.rechunk((chunks, -1)) if is_dask(m) else da.from_array(m, chunks=(chunks, -1), asarray=False)

        return ad.AnnData(X=lazy(data.X), obs=data.obs, var=data.var, uns=data.uns,
                          layers={k: lazy(v) for k, v in data.layers.items()}), "AnnData (chunked)"
    path = Path(data)
    if not path.exists():
        raise VclibInputError(f"file {str(path)!r} does not exist.")
    if path.suffix not in (".h5ad", ".zarr"):
        raise VclibInputError(f"cannot read {str(path)!r} lazily: chunks= reads AnnData .h5ad files and .zarr stores.")
    try:
        if path.suffix == ".zarr":
            import zarr

            store = zarr.open_group(path, mode="r")
        else:
            import h5py

            store = h5py.File(path, "r")
        parts = {k: ad.io.read_elem(store[k]) for k in ("obs", "var", "uns") if k in store}
        layers = store["layers"] if "layers" in store else {}
        out = ad.AnnData(X=read_elem_lazy(store["X"], chunks=(chunks, -1)), **parts,
                         layers={k: read_elem_lazy(layers[k], chunks=(chunks, -1)) for k in layers})
    except Exception as err:  # h5py/zarr/anndata raise many types for corrupt stores
        raise VclibInputError(
            f"cannot read {str(path)!r} lazily ({type(err).__name__}: {err}). Is the store complete and written "
            "by anndata (write_h5ad / write_zarr)?"
        ) from err
    if path.suffix == ".h5ad":
        store.close()  # anndata's lazy chunks reopen the file in each task
    return out, str(path)


def _normalised_block(block):
    """Raw counts of a row block as the contract's log1p values, in float32 as the in-memory read computes them.
    Exact chunk by chunk: library-size normalisation and log1p act on each cell alone."""
    tmp = ad.AnnData(block.astype(np.float32))
    schema.normalise(tmp)
    return sparse.csr_matrix(tmp.X) if sparse.issparse(tmp.X) else tmp.X


def _check_values(matrix, values: str) -> str:
    """What the matrix holds: detected for ``values="auto"``; a stated value is checked against the detection,
    so log1p data read as counts (or counts as log1p) is refused instead of transformed twice (or never)."""
    detected = schema.detect_values(matrix)
    if values == "auto":
        return detected
    if values == COUNTS and detected != COUNTS:
        raise VclibInputError(f"values='counts', but X does not hold integer counts (it looks like {detected}). "
                              "Pass values='auto' to detect what it holds, or layer='counts' if counts are in a layer.")
    if values != COUNTS and detected == COUNTS:
        raise VclibInputError(f"values={values!r}, but X holds non-negative integers, i.e. raw counts. Pass "
                              "values='auto' (or 'counts'): vclib then normalises them.")
    return values


def read(
    data: str | Path | ad.AnnData,
    *,
    perturbation_key: str = PERTURBATION_KEY,
    context_key: str | None = CONTEXT_KEY,
    control: str = CONTROL,
    combination_sep: str | None = schema.COMBINATION_SEP,
    layer: str | None = None,
    values: str = "auto",
    backed: bool = False,
    chunks: int | None = None,
) -> ad.AnnData:
    """Read an h5ad file or AnnData into the vclib data contract, validated.

    The input is never modified: the result is a new AnnData whose obs has the standard ``perturbation`` and
    ``context`` columns (your original columns are kept), the control written as ``"control"``, combinations
    as sorted ``"A+B"``, and ``X`` holding log1p-normalised expression. Raw counts are detected, kept in
    ``layers["counts"]`` and converted with ``sc.pp.normalize_total(target_sum=1e4)`` and ``sc.pp.log1p``.

    Parameters
    ----------
    data
        Path to an ``.h5ad`` file, or an AnnData.
    perturbation_key
        obs column with the perturbation of each cell.
    context_key
        obs column with the biological context (cell line, cell type, donor). ``None`` if the data has one
        context; it is then named ``"all"``.
    control
        Label of the unperturbed cells in ``perturbation_key`` (e.g. ``"ctrl"``, ``"non-targeting"``).
    combination_sep
        Separator of combination labels in your data (e.g. ``"_"``); written as ``"+"`` in the contract.
        ``None``: every label is a single perturbation (drug screens: a ``+`` in a name such as ``"(+)-JQ1"`` is
        then written ``plus``). Relabelled perturbations keep their original label in
        ``obs["perturbation_original"]``.
    layer
        Take the expression matrix from this layer instead of ``X`` (e.g. ``"counts"``).
    values
        What the matrix holds: ``"auto"`` (detect raw counts or log1p), ``"counts"``, ``"log1p"``,
        ``"log2p"`` (log2(x+1) normalised values, converted exactly to natural log1p), or ``"signature"``
        (one response vector per condition, e.g. logFC or gene ranks; NaN allowed, no controls needed).
    backed
        Open the file in backed mode (``X`` stays on disk; for files larger than memory). Raw counts are then
        normalised chunk by chunk by :mod:`vclib.pseudobulk`.
    chunks
        Read lazily with dask (``pip install vclib[dask]``): ``X`` becomes a dask array of ``chunks`` cells per
        chunk (all genes), read from an ``.h5ad`` file or ``.zarr`` store by the task that needs it, under whatever
        dask scheduler is active (a ``distributed.Client`` when one exists). obs and var are read into memory.
        Checks run chunk-wise in parallel (finite, non-negative, one pass) and on a sample (what ``X`` holds). Raw
        counts stay lazy in ``layers["counts"]`` and ``X`` is their normalisation, applied per chunk when a chunk
        is computed (exact: it acts on each cell alone). :mod:`vclib.pseudobulk` and
        :func:`vclib.metrics.rank_genes` compute on it without loading the matrix.

    Returns
    -------
    AnnData in the data contract, with ``uns["vclib"]`` recording the source, the keys and what ``X`` held.

    Examples
    --------
    >>> import vclib as vc
    >>> sim = vc.loaders.simulate(n_perturbations=4, n_genes=50, cells_per_condition=10)
    >>> counts = sim.copy()
    >>> counts.X = counts.layers["counts"]
    >>> adata = vc.loaders.read(counts)
    >>> adata.uns["vclib"]["found"]
    'counts'
    """
    if values not in VALUES:
        raise VclibInputError(f"values={values!r} is not one of {', '.join(map(repr, VALUES))}.")
    if chunks is not None and backed:
        raise VclibInputError("pass backed=True (h5py, one process) or chunks= (dask, lazy), not both.")
    source, where = _open(data, backed=backed) if chunks is None else _open_lazy(data, chunks=chunks)
    keys = [perturbation_key] + ([context_key] if context_key is not None else [])
    try:
        schema.check_columns(source.obs, keys)
    except VclibInputError as err:
        hint = "" if context_key is None else " (context_key=None if the data has a single context)"
        raise VclibInputError(f"{err}{hint}") from None
    if layer is not None and layer not in source.layers:
        raise VclibInputError(f"layer {layer!r} not found; layers present: {list(source.layers) or '(none)'}.")
    schema.check_genes(source.var_names)

    obs = source.obs.copy()
    obs[PERTURBATION_KEY] = obs[perturbation_key]
    obs[CONTEXT_KEY] = obs[context_key] if context_key is not None else DEFAULT_CONTEXT
    schema.check_labels(obs, control=control)
    for key in (PERTURBATION_KEY, CONTEXT_KEY):
        obs[key] = obs[key].astype(str).astype("category").cat.remove_unused_categories()

    if source.n_obs == 0 or source.n_vars == 0:
        raise VclibInputError(f"{where} holds {source.n_obs} cells × {source.n_vars} genes: nothing to analyse. Check "
                              "the subsetting that made it (e.g. a filter that removed every cell or gene).")
    matrix = source.layers[layer] if layer is not None else source.X
    half = getattr(matrix, "dtype", None) == np.float16
    if half:  # scipy.sparse and scanpy do not compute in float16; float32 holds every float16 value exactly
        if backed:  # (dask casts lazily, chunk by chunk)
            raise VclibInputError("X is float16, which backed mode cannot read chunk by chunk; pass backed=False.")
        matrix = matrix.astype(np.float32)
    found = SIGNATURE if values == SIGNATURE else _check_values(matrix, values)
    schema.check_finite(matrix, allow_nan=found == SIGNATURE, obs_names=source.obs_names)
    if found != SIGNATURE:
        schema.check_controls(obs, control=control)
        if control != CONTROL and CONTROL in obs[PERTURBATION_KEY].cat.categories:
            raise VclibInputError(
                f"cells labelled {CONTROL!r} would be mistaken for the control cells (your control label is "
                f"{control!r}, written {CONTROL!r} in vclib's contract); rename that perturbation first."
            )
    labels = obs[PERTURBATION_KEY].cat.categories
    mapping = {x: schema.canonical_label(x, control=control, sep=combination_sep) for x in labels}
    if any(k != v for k, v in mapping.items() if k != control) and "perturbation_original" not in obs:
        obs["perturbation_original"] = obs[PERTURBATION_KEY].copy()
    obs[PERTURBATION_KEY] = obs[PERTURBATION_KEY].map(mapping).astype("category")
    if values == "auto" and found not in (COUNTS, LOG1P):
        hint = (" X is stored as float16, whose 3 significant digits can hide log1p values: if it is log1p, pass "
                "values='log1p'.") if half else ""
        raise VclibInputError(_REFUSALS[found] + hint)

    info = {"source": where, "found": found, "perturbation_key": perturbation_key,
            "context_key": context_key or "", "control": control, "layer": layer or "",
            "values": LOG1P if found != SIGNATURE else SIGNATURE}
    if backed:
        if found not in (COUNTS, LOG1P):
            raise VclibInputError(f"backed mode reads raw counts or log1p values, not {found}; load it in memory.")
        if layer is not None:
            raise VclibInputError("backed mode reads X only; pass backed=False to use a layer.")
        source.obs = obs
        source.uns["vclib"] = {**info, "values": found}
        return source
    if chunks is not None:
        return _lazy_contract(source, matrix, obs, found=found, info=info)

    out = ad.AnnData(
        X=matrix.copy(), obs=obs, var=source.var.copy(), uns={**source.uns}, obsm=dict(source.obsm),
        layers={k: v.copy() for k, v in source.layers.items()},
    )
    if found == COUNTS:
        out.layers[COUNTS] = out.X.copy()
        out.X = out.X.astype(np.float32)
        schema.normalise(out)
    elif found == "log2p":
        out.X = out.X * np.log(2)
    if sparse.issparse(out.X):
        out.X = sparse.csr_matrix(out.X)
    out.uns["vclib"] = info
    schema.validate(out)
    return out


def _lazy_contract(source: ad.AnnData, matrix, obs, *, found: str, info: dict) -> ad.AnnData:
    """The contract's AnnData around a dask matrix: the same values as the in-memory read, computed chunk by
    chunk when asked for (nothing is read here but a sample)."""
    out = ad.AnnData(X=matrix, obs=obs, var=source.var.copy(), uns={**source.uns}, layers=dict(source.layers))
    if found == COUNTS:
        out.layers[COUNTS] = matrix
        meta = sparse.csr_matrix((0, 0), dtype=np.float32) if sparse.issparse(matrix._meta) else \
            np.empty((0, 0), np.float32)
        out.X = matrix.map_blocks(_normalised_block, dtype=np.float32, meta=meta)
    elif found == "log2p":
        out.X = matrix * np.log(2)
    out.uns["vclib"] = info
    if found != SIGNATURE and schema.detect_values(out.X) != LOG1P:  # validate()'s last check, on a sample
        raise VclibInputError(f"X should hold log1p values after reading {found}, but a sample does not look like "
                              "log1p; please report this with the file.")
    return out
