"""The observed side, prepared once: what every scorer needs, computed on first use and then kept.

Scoring a model, the noise ceiling, reliabilities and the observed effects all need the same things from the
observed cells: their pseudobulk, each context's control, the deltas, the DE result, and for the ceiling the two
split halves of every condition with their own pseudobulks and DE. :class:`Observed` validates the cells once and
computes each of those the first time it is asked for, so a benchmark grid of many (model, fold, seed) cells pays
for them once (per seed, for the halves).
"""

from __future__ import annotations

import hashlib
from functools import cached_property

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from vclib import pseudobulk as pbk
from vclib.metrics._de import DEResult, rank_genes
from vclib.schema import (
    CONTEXT_KEY,
    CONTROL,
    COUNTS,
    DEFAULT_CONTEXT,
    LOG1P,
    PERTURBATION_KEY,
    SIGNATURE,
    NotApplicable,
    VclibInputError,
    canonical_label,
    check_columns,
    check_labels,
    condition_id,
    holds_counts,
    is_dask,
)


def in_contract(adata: ad.AnnData, perturbation_key: str, context_key: str | None, control: str, *,
                side: str) -> ad.AnnData:
    """A light copy with the contract's obs columns (labels canonical), X untouched (not copied). Backed data
    and cells without a label are refused, naming ``side`` ("observed" or "predicted")."""
    if adata.isbacked:
        raise VclibInputError(
            f"{side} data is opened in backed mode ({adata.filename}); scoring needs it in memory (metrics rank "
            "every gene of every cell). Load it with vc.loaders.read(path) without backed=True, read it lazily with "
            "vc.loaders.read(path, chunks=20_000) (dask: pip install vclib[dask]), or subset it first "
            "(adata[rows].to_memory())."
        )
    keys = [perturbation_key] + ([context_key] if context_key else [])
    check_columns(adata.obs, keys)
    check_labels(adata.obs, keys, control=control)
    obs = pd.DataFrame(index=adata.obs_names.copy())
    labels = adata.obs[perturbation_key].astype(str)
    mapping = {x: canonical_label(x, control=control) for x in labels.unique()}
    obs[PERTURBATION_KEY] = labels.map(mapping).to_numpy()
    obs[CONTEXT_KEY] = adata.obs[context_key].astype(str).to_numpy() if context_key else DEFAULT_CONTEXT
    return ad.AnnData(X=adata.X, obs=obs, var=pd.DataFrame(index=adata.var_names.copy()),
                      uns={"vclib": dict(adata.uns.get("vclib", {}))})


def _value_summary(block, *, whole: bool = False) -> np.ndarray:
    """1 × 3 for a row block: its number of NaN/inf values, its largest finite value (-inf if none), and whether
    every finite value is an integer (for the ``whole`` matrix only asked when the largest exceeds 20)."""
    data = block.data if sparse.issparse(block) else np.asarray(block)
    finite = np.isfinite(data)
    values = data if finite.all() else data[finite]
    top = values.max(initial=-np.inf)
    integers = (whole and top <= 20) or np.allclose(values, np.round(values))
    return np.array([[values.size < data.size and (~finite).sum(), top, integers]], dtype=np.float64)


def _nonfinite_row_flags(block) -> np.ndarray:
    """Whether each row of a dense or sparse block holds NaN or inf."""
    if not sparse.issparse(block):
        return ~np.isfinite(np.asarray(block)).all(axis=1)
    coo = sparse.coo_matrix(block)
    flags = np.zeros(block.shape[0], dtype=bool)
    flags[coo.row[~np.isfinite(coo.data)]] = True
    return flags


def _nonfinite_rows(X) -> np.ndarray:
    """Rows holding NaN or inf of a dense, sparse or dask matrix."""
    if is_dask(X):
        return np.flatnonzero(X.rechunk({1: -1}).map_blocks(_nonfinite_row_flags, drop_axis=1, dtype=bool,
                                                            meta=np.empty(0, bool)).compute())
    return np.flatnonzero(_nonfinite_row_flags(X))


def check_values(adata: ad.AnnData, side: str) -> None:
    """Refuse NaN/inf (naming the conditions) and raw counts where log1p values are expected; stamp the
    (:func:`in_contract`) copy as log1p when it was not stamped. A dask ``X`` is summarised chunk by chunk in one
    parallel pass."""
    X = adata.X
    if is_dask(X):
        summary = X.rechunk({1: -1}).map_blocks(_value_summary, chunks=(1, 3), dtype=np.float64,
                                                 meta=np.empty((0, 0))).compute()
        n_bad, top, integers = int(summary[:, 0].sum()), summary[:, 1].max(), bool(summary[:, 2].all())
    else:
        n_bad, top, integers = _value_summary(X, whole=True)[0]
    if n_bad:
        rows = _nonfinite_rows(X)
        names = sorted({condition_id(c, p) for c, p in adata.obs.iloc[rows][[CONTEXT_KEY, PERTURBATION_KEY]]
                        .itertuples(index=False)})
        raise VclibInputError(
            f"{side} values hold NaN or inf in {len(names)} condition(s): {', '.join(map(repr, names[:8]))}."
        )
    stamped = adata.uns["vclib"].get("values")
    if stamped == COUNTS or (top > 20 and integers) or (stamped is None and holds_counts(X)):
        raise VclibInputError(
            f"{side} values look like raw counts (integers up to {top:.0f}); metrics compare "
            "log1p-normalised expression. Load the data with vc.loaders.read(), which normalises counts "
            "(or apply sc.pp.normalize_total(target_sum=1e4) and sc.pp.log1p first)."
        )
    if stamped is None:  # checked once here; the pseudobulk and DE of this copy then trust it
        adata.uns["vclib"]["values"] = LOG1P


def _hash_values(h, X) -> None:
    """Feed every value of a dense or sparse matrix to the hash ``h`` (exact bytes, with their dtypes)."""
    parts = (X.data, X.indices, X.indptr) if sparse.issparse(X) else (np.asarray(X),)
    for part in parts:
        h.update(str(part.dtype).encode())
        h.update(np.ascontiguousarray(part).tobytes())


def _chunk_digest(block) -> np.ndarray:
    """1 × 32: the sha256 of a chunk's values."""
    h = hashlib.sha256()
    _hash_values(h, block)
    return np.frombuffer(h.digest(), dtype=np.uint8)[None, :]


class Observed:
    """Observed cells prepared for scoring: validated once, everything else computed on first use and kept.

    Pass it wherever vclib takes observed cells (:func:`vclib.metrics.evaluate`, :func:`vclib.metrics.ceiling`,
    :func:`vclib.benchmark.run`, :func:`vclib.coverage.reliability`, :func:`vclib.failures.observed_effects`):
    none of them then recomputes what it holds. Build it with :func:`prepare`.

    Attributes
    ----------
    cells
        The cells in the data contract (obs ``perturbation`` / ``context`` only; ``X`` is the caller's, not copied
        and never modified).
    pseudobulk
        :func:`vclib.pseudobulk.pseudobulk` of the cells (every condition, controls included).
    deltas
        :func:`vclib.pseudobulk.deltas` of the pseudobulk.
    de
        :func:`vclib.metrics.rank_genes` of the cells, with the DE options given to :func:`prepare`.
    fingerprint
        A short hash of the content: every cell's condition label, the genes and every value of ``X`` (for a dask
        ``X``, of its chunks' hashes: the same data in other chunks gives another fingerprint).
    not_applicable
        Why this data cannot be scored (response signatures have no cells), or ``""``.
    """

    def __init__(self, cells: ad.AnnData, *, epsilon: float = 1e-9, de_options: dict | None = None,
                 de: DEResult | None = None, pseudobulk: ad.AnnData | None = None, not_applicable: str = ""):
        self.cells = cells
        self.not_applicable = not_applicable  # why this data cannot be scored (e.g. signatures without cells)
        self.epsilon = float(epsilon)
        self.de_options = dict(de_options or {})
        self._halves: dict = {}
        if de is not None:
            self.__dict__["de"] = de
        if pseudobulk is not None:
            self.__dict__["pseudobulk"] = pseudobulk

    def __repr__(self) -> str:
        done = [k for k in ("pseudobulk", "deltas", "de", "fingerprint") if k in self.__dict__]
        return (f"Observed({self.cells.n_obs} cells × {self.cells.n_vars} genes, "
                f"{self.cells.obs[CONTEXT_KEY].nunique()} contexts; computed: {', '.join(done) or 'nothing yet'}"
                f"{'; halves for seeds ' + str(sorted(self._halves)) if self._halves else ''})")

    @property
    def var_names(self) -> pd.Index:
        return self.cells.var_names

    def _need_cells(self) -> None:
        if self.not_applicable:
            raise NotApplicable(self.not_applicable)

    @cached_property
    def pseudobulk(self) -> ad.AnnData:
        self._need_cells()
        return pbk.pseudobulk(self.cells)

    @cached_property
    def deltas(self) -> ad.AnnData:
        return pbk.deltas(self.pseudobulk)

    @cached_property
    def de(self) -> DEResult:
        self._need_cells()
        return rank_genes(self.cells, epsilon=self.epsilon, **self.de_options)

    @cached_property
    def controls(self) -> ad.AnnData:
        """The control cells of every context."""
        return self.cells[self.cells.obs[PERTURBATION_KEY].to_numpy() == CONTROL]

    @cached_property
    def fingerprint(self) -> str:
        """A hash of the content: labels of every cell, genes, and every value of X (exact bytes)."""
        h = hashlib.sha256()
        obs = self.cells.obs
        h.update("\n".join(obs[CONTEXT_KEY].astype(str) + "|" + obs[PERTURBATION_KEY].astype(str)).encode())
        h.update("\n".join(map(str, self.cells.var_names)).encode())
        X = self.cells.X
        if is_dask(X):  # each chunk's hash, in order: one parallel pass (the value then depends on the chunking too)
            h.update(X.rechunk({1: -1}).map_blocks(_chunk_digest, chunks=(1, 32), dtype=np.uint8,
                                                   meta=np.empty((0, 0), np.uint8)).compute().tobytes())
        else:
            _hash_values(h, X)
        return h.hexdigest()[:16]

    def check_de_options(self, epsilon: float, de_options: dict | None) -> None:
        """Raise if scoring asks for other DE settings than the ones this object was prepared with."""
        if float(epsilon) != self.epsilon or dict(de_options or {}) != self.de_options:
            raise VclibInputError(
                f"the observed data was prepared with epsilon={self.epsilon}, de_options={self.de_options}, but "
                f"scoring asks for epsilon={epsilon}, de_options={de_options or {}}; prepare it with the same "
                "settings (vc.metrics.prepare(adata, epsilon=..., de_options=...))."
            )

    def halves(self, seed: int | None = 0) -> tuple[Observed, Observed]:
        """The two random halves of every condition's cells (:func:`vclib.pseudobulk.half_labels` with ``seed``),
        each prepared like this object; computed once per seed. Their pseudobulks hold the conditions with cells
        in both halves (:func:`vclib.pseudobulk.split_halves`)."""
        self._need_cells()
        if seed not in self._halves:
            half = pbk.half_labels(self.cells, seed=seed)
            pseudobulks = pbk.split_halves(self.cells, seed=seed)  # both halves in one pass over the cells
            self._halves[seed] = tuple(
                Observed(self.cells[half == h], epsilon=self.epsilon, de_options=self.de_options,
                         pseudobulk=pseudobulks[h]) for h in (0, 1))
        return self._halves[seed]


def prepare(
    adata: ad.AnnData | Observed,
    *,
    perturbation_key: str = PERTURBATION_KEY,
    context_key: str | None = CONTEXT_KEY,
    control: str = CONTROL,
    epsilon: float = 1e-9,
    de_options: dict | None = None,
    de: DEResult | None = None,
) -> Observed:
    """Validate observed cells once for scoring; see :class:`Observed`.

    Parameters
    ----------
    adata
        Observed cells with log1p-normalised ``X`` (:func:`vclib.loaders.read`), control cells in every context.
        An :class:`Observed` is returned as it is.
    perturbation_key, context_key, control
        Column names and control label (cell-eval's layout: ``"target_gene"``, ``None``, ``"non-targeting"``).
    epsilon, de_options
        lfc pseudocount and :func:`vclib.metrics.rank_genes` options of the observed DE.
    de
        A DE result of these cells computed earlier (:func:`vclib.metrics.rank_genes`), to reuse.

    Returns
    -------
    :class:`Observed`.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=6, n_genes=60, cells_per_condition=30)
    >>> observed = vc.metrics.prepare(adata)
    >>> observed.pseudobulk.shape, observed.de.lfc.shape
    ((30, 60), (28, 60))
    """
    if isinstance(adata, Observed):
        return adata
    if not isinstance(adata, ad.AnnData):
        raise VclibInputError(f"observed data must be an AnnData of cells, got {type(adata).__name__}.")
    cells = in_contract(adata, perturbation_key, context_key, control, side="observed")
    if cells.uns["vclib"].get("values") == SIGNATURE:
        return Observed(cells, epsilon=epsilon, de_options=de_options, not_applicable=(
            "these are response signatures without cells: scoring predictions against observations, the noise "
            "ceiling and DE need observed cells (notebook 01 analyses signatures)"))
    check_values(cells, "observed")
    contexts = set(cells.obs[CONTEXT_KEY])
    with_control = set(cells.obs.loc[cells.obs[PERTURBATION_KEY] == CONTROL, CONTEXT_KEY])
    lacking = sorted(contexts - with_control)
    if lacking:
        raise VclibInputError(f"context {lacking[0]!r} has no observed control cells (label {control!r}); every "
                              "context needs its control to compute deltas.")
    if de is not None and not de.genes.equals(cells.var_names):
        raise VclibInputError("the given DE result is for other genes than the observed cells; recompute it with "
                              "vc.metrics.rank_genes on these cells.")
    return Observed(cells, epsilon=epsilon, de_options=de_options, de=de)
