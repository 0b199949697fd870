"""Transferability: does a perturbation's response measured in one context predict its response in another?

For every two contexts and every perturbation measured in both, the correlation over genes of the two deltas
(or signatures). Noise in either delta lowers that correlation even when the biology is identical, so for cells
each side's split-half reliability corrects it (Spearman's disattenuation). The same correlation between
*different* perturbations of the two contexts is the chance level: deltas share a systematic component (the
response to being perturbed at all, Systema), so transfer only means something above it.
"""

from __future__ import annotations

import math
from itertools import combinations, permutations

import anndata as ad
import numpy as np
import pandas as pd
from scipy import stats

from vclib.metrics import Observed, prepare
from vclib.pseudobulk import deltas, pseudobulk
from vclib.schema import (
    CONTEXT_KEY,
    CONTROL,
    PERTURBATION_KEY,
    SIGNATURE,
    VclibInputError,
    check_columns,
)

METHODS = ("pearson", "spearman")
MIN_GENES = 3


def _unit_rows(A: np.ndarray, method: str) -> np.ndarray:
    """Rows centred and scaled to unit length (ranked first for Spearman), so dot products are correlations."""
    A = stats.rankdata(A, axis=1) if method == "spearman" else np.asarray(A, dtype=np.float64)
    A = A - A.mean(axis=1, keepdims=True)
    norm = np.sqrt((A * A).sum(axis=1, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, A / norm, np.nan)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1 with ties at their mean rank (scipy's rankdata, without its per-call overhead)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new = np.empty(len(x), dtype=bool)
    new[0], new[1:] = True, xs[1:] != xs[:-1]
    if new.all():  # no ties
        ranks = np.empty(len(x))
        ranks[order] = np.arange(1, len(x) + 1)
        return ranks
    starts = np.flatnonzero(new)
    counts = np.diff(np.append(starts, len(x)))
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(starts + (counts + 1) / 2, counts)
    return ranks


def _corr_one(a: np.ndarray, b: np.ndarray, method: str) -> tuple[float, int]:
    """Correlation of two vectors over the entries finite in both, and how many entries that was."""
    keep = np.isfinite(a) & np.isfinite(b)
    n = int(keep.sum())
    if n < MIN_GENES:
        return np.nan, n
    x, y = a[keep], b[keep]
    if method == "spearman":
        x, y = _ranks(x), _ranks(y)
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return (float((x * y).sum() / denom) if denom > 0 else np.nan), n


def _corr_rows(A: np.ndarray, B: np.ndarray, method: str) -> np.ndarray:
    """Correlation of row i of A with row i of B, for every i (NaN-aware)."""
    if np.isfinite(A).all() and np.isfinite(B).all():
        return (_unit_rows(A, method) * _unit_rows(B, method)).sum(axis=1)
    return np.array([_corr_one(a, b, method)[0] for a, b in zip(A, B, strict=True)])


def _finite_row_mean(M: np.ndarray) -> np.ndarray:
    """Mean of the finite entries of each row (NaN where a row has none), without warnings."""
    finite = np.isfinite(M)
    count = finite.sum(axis=1)
    total = np.where(finite, M, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def _ratio_rows(R: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the sum of R over the entries where R and W are finite, divided by the sum of W there (NaN when
    nothing is defined), and that sum of W."""
    ok = np.isfinite(R) & np.isfinite(W)
    num = np.where(ok, R, 0.0).sum(axis=1)
    den = np.where(ok, W, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan), den


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise VclibInputError(f"method={method!r} is not one of {', '.join(map(repr, METHODS))}.")


def _is_signature(data: ad.AnnData) -> bool:
    return data.uns.get("vclib", {}).get("values") == SIGNATURE


def reliability(
    adata: ad.AnnData,
    *,
    perturbation_key: str = PERTURBATION_KEY,
    context_key: str = CONTEXT_KEY,
    control: str = CONTROL,
    method: str = "pearson",
    n_splits: int = 3,
    seed: int | None = 0,
) -> pd.DataFrame:
    """Split-half reliability of every perturbed condition's delta.

    Each condition's cells, and its context's control cells, are split at random into two halves; each half
    gives a delta against its own half of the controls; the correlation of the two half-deltas over genes,
    averaged over ``n_splits`` random splits, is corrected to the full number of cells with Spearman–Brown,
    ``2r / (1 + r)``.

    Parameters
    ----------
    adata
        Cells in the data contract, or a prepared :class:`vclib.metrics.Observed` (its pseudobulk and split
        halves are reused).
    perturbation_key, context_key, control
        Column names and control label.
    method
        ``"pearson"`` or ``"spearman"`` (use the one you correlate deltas with).
    n_splits
        Random splits averaged.
    seed
        Seed of the splits.

    Returns
    -------
    DataFrame indexed by condition (``"context|perturbation"``) with columns ``context``, ``perturbation``,
    ``n_cells``, ``split_half_r``, ``reliability`` and ``note`` (why a value is missing). Conditions with fewer
    than 2 cells have NaN.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=4, n_genes=50, cells_per_condition=10)
    >>> table = vc.coverage.reliability(adata)
    >>> bool(table["reliability"].between(-1, 1).all())
    True
    """
    _check_method(method)
    if not isinstance(adata, Observed) and _is_signature(adata):  # a shape to report, not an error
        out = pd.DataFrame(columns=[CONTEXT_KEY, PERTURBATION_KEY, "n_cells", "split_half_r", "reliability", "note"])
        out.attrs["skipped"] = [{"analysis": "reliability", "reason": "these are response signatures without cells: "
                                 "split-half reliability needs cells"}]
        return out
    obs = adata if isinstance(adata, Observed) else prepare(
        adata, perturbation_key=perturbation_key, context_key=context_key, control=control)
    pb = obs.pseudobulk
    table = pb.obs.loc[~pb.obs["is_control"], [CONTEXT_KEY, PERTURBATION_KEY, "n_cells"]].copy()
    table[CONTEXT_KEY] = table[CONTEXT_KEY].astype(str)
    rng = np.random.default_rng(seed)
    rs = []
    for _ in range(n_splits):
        a, b = (half.pseudobulk for half in obs.halves(int(rng.integers(2**32))))
        with_controls = set(a.obs.loc[a.obs["is_control"], CONTEXT_KEY].astype(str))
        keep = a.obs[CONTEXT_KEY].astype(str).isin(with_controls).to_numpy()
        da, db = deltas(a[keep]), deltas(b[keep])
        rs.append(pd.Series(_corr_rows(np.asarray(da.X), np.asarray(db.X), method), index=da.obs_names))
    r = pd.concat(rs, axis=1).mean(axis=1).reindex(table.index)
    table["split_half_r"] = r
    table["reliability"] = 2 * r / (1 + r)
    table["note"] = np.where(table["n_cells"] < 2, "fewer than 2 cells: no split halves",
                             np.where(r.isna(), "half-deltas have no variance", ""))
    return table


def transferability(
    data: ad.AnnData,
    *,
    perturbation_key: str = PERTURBATION_KEY,
    context_key: str = CONTEXT_KEY,
    control: str = CONTROL,
    method: str | None = None,
    reliabilities: pd.DataFrame | None = None,
    n_splits: int = 3,
    n_mismatched: int = 50,
    seed: int | None = 0,
) -> pd.DataFrame:
    """Correlation of each perturbation's response between every two contexts that both measured it, raw and
    corrected for noise, beside the chance level of mismatched perturbations.

    Works on cells (deltas of pseudobulks; corrected with :func:`reliability`) and on response signatures
    (``values="signature"``: one vector per condition, e.g. logFC or gene ranks, NaN for genes not reported;
    correlations over the genes reported in both; no cells, so no reliability correction: reported raw).

    ``r_corrected = r / sqrt(reliability_a · reliability_b)`` is never clipped: noisy reliabilities can push it
    above 1 (counted in :func:`summarize_transfer`), and it is undefined (NaN) when a reliability is ≤ 0.
    ``chance`` is the mean correlation of this perturbation's response in ``context_a`` with *other* shared
    perturbations' responses in ``context_b`` (all of them for complete data; ``n_mismatched`` random ones when
    values are missing, where each correlation has its own gene set). ``chance_corrected`` is the same corrected
    as a ratio, ``Σ r / Σ sqrt(rel_a · rel_b)`` over those partners, and ``chance_weight`` that denominator.

    Parameters
    ----------
    data
        Cells or signatures in the data contract.
    perturbation_key, context_key, control
        Column names and control label.
    method
        ``"pearson"`` or ``"spearman"``; default Pearson for cells, Spearman for signatures (rank correlation).
    reliabilities
        Output of :func:`reliability`, to reuse; computed when ``None`` (cells only).
    n_splits
        Random splits for the reliabilities.
    n_mismatched
        Mismatched partners per perturbation when values are missing.
    seed
        Seed of the splits and of the mismatched partners.

    Returns
    -------
    DataFrame with one row per (``context_a`` < ``context_b``, ``perturbation``) measured in both: ``r``,
    ``reliability_a``, ``reliability_b``, ``r_corrected``, ``chance``, ``chance_corrected``, ``chance_weight``,
    ``n_mismatched``, ``n_genes``, ``method``. Empty (same columns) with fewer than two contexts.

    References
    ----------
    Spearman C., The proof and measurement of association between two things, Am J Psychol 15, 72–101 (1904);
    Viñas Torné R. et al., Systema, Nat Biotechnol (2025) (the systematic component shared by perturbations).

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=6, n_genes=80, cells_per_condition=20)
    >>> table = vc.coverage.transferability(adata)
    >>> table.columns[:4].tolist()
    ['context_a', 'context_b', 'perturbation', 'r']
    """
    columns = ["context_a", "context_b", "perturbation", "r", "reliability_a", "reliability_b", "r_corrected",
               "chance", "chance_corrected", "chance_weight", "n_mismatched", "n_genes", "method"]
    check_columns(data.obs, [perturbation_key, context_key])
    signature = _is_signature(data)
    method = method or ("spearman" if signature else "pearson")
    _check_method(method)
    if signature:
        obs = pd.DataFrame({CONTEXT_KEY: data.obs[context_key].astype(str).to_numpy(),
                            PERTURBATION_KEY: data.obs[perturbation_key].astype(str).to_numpy()})
        keep = (obs[PERTURBATION_KEY] != control).to_numpy()
        obs, V = obs[keep].reset_index(drop=True), np.asarray(data.X[keep], dtype=np.float64)
        dup = obs.duplicated()
        if dup.any():
            raise VclibInputError(
                f"{int(dup.sum())} conditions have more than one signature (e.g. {obs[dup].iloc[0].tolist()}); "
                "keep one row per (context, perturbation)."
            )
        rel = pd.Series(np.nan, index=obs[CONTEXT_KEY] + "|" + obs[PERTURBATION_KEY])
    else:
        d = deltas(pseudobulk(data, perturbation_key=perturbation_key, context_key=context_key, control=control),
                   control=control)
        obs = d.obs[[CONTEXT_KEY, PERTURBATION_KEY]].astype(str).reset_index(drop=True)
        V = np.asarray(d.X, dtype=np.float64)
        if reliabilities is None:
            reliabilities = reliability(data, perturbation_key=perturbation_key, context_key=context_key,
                                        control=control, method=method, n_splits=n_splits, seed=seed)
        rel = reliabilities["reliability"].reindex(d.obs_names.to_numpy())
        rel.index = obs[CONTEXT_KEY] + "|" + obs[PERTURBATION_KEY]
    rel_values = rel.to_numpy()
    row = pd.Series(np.arange(len(obs)), index=pd.MultiIndex.from_frame(obs))
    rng = np.random.default_rng(seed)
    complete = bool(np.isfinite(V).all())
    parts = []
    contexts = sorted(obs[CONTEXT_KEY].unique())
    for a, b in combinations(contexts, 2):
        shared = sorted(set(obs.loc[obs[CONTEXT_KEY] == a, PERTURBATION_KEY])
                        & set(obs.loc[obs[CONTEXT_KEY] == b, PERTURBATION_KEY]))
        if not shared:
            continue
        ia = row.loc[[(a, p) for p in shared]].to_numpy()
        ib = row.loc[[(b, p) for p in shared]].to_numpy()
        rel_a, rel_b = rel_values[ia], rel_values[ib]
        with np.errstate(invalid="ignore"):
            scale = np.sqrt(np.where(rel_a > 0, rel_a, np.nan)[:, None] * np.where(rel_b > 0, rel_b, np.nan)[None, :])
        k = len(shared)
        if complete:
            C = _unit_rows(V[ia], method) @ _unit_rows(V[ib], method).T
            r = np.diag(C).copy()
            W = scale.copy()
            np.fill_diagonal(C, np.nan)
            np.fill_diagonal(W, np.nan)
            chance, (chance_c, chance_w) = _finite_row_mean(C), _ratio_rows(C, W)
            n_mis, n_genes = np.full(k, k - 1), np.full(k, V.shape[1])
        else:
            r, n_genes = map(np.array, zip(*(_corr_one(V[i], V[j], method) for i, j in zip(ia, ib, strict=True)),
                                           strict=True))
            chance, chance_c, chance_w = np.full(k, np.nan), np.full(k, np.nan), np.zeros(k)
            n_mis = np.zeros(k, dtype=int)
            for s in range(k):
                others = np.delete(np.arange(k), s)
                if others.size == 0:
                    continue
                partners = np.sort(rng.choice(others, min(n_mismatched, others.size), replace=False))
                cs = np.array([[_corr_one(V[ia[s]], V[ib[q]], method)[0] for q in partners]])
                (chance_c[s],), (chance_w[s],) = _ratio_rows(cs, scale[s, partners][None, :])
                chance[s], n_mis[s] = _finite_row_mean(cs)[0], partners.size
        with np.errstate(invalid="ignore"):
            r_corr = r / np.diag(scale)
        parts.append(pd.DataFrame({
            "context_a": a, "context_b": b, "perturbation": shared, "r": r, "reliability_a": rel_a,
            "reliability_b": rel_b, "r_corrected": r_corr, "chance": chance, "chance_corrected": chance_c,
            "chance_weight": chance_w, "n_mismatched": n_mis.astype(int), "n_genes": n_genes.astype(int),
            "method": method,
        }))
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)[columns]


def summarize_transfer(transfer: pd.DataFrame) -> pd.DataFrame:
    """One row per pair of contexts: mean transfer of the same perturbation vs the chance level, raw and
    corrected.

    Parameters
    ----------
    transfer
        Output of :func:`transferability` (optionally with ``r_true`` from :func:`true_transfer`).

    Returns
    -------
    DataFrame with ``context_a``, ``context_b``, ``n_shared``, ``method``, ``same_raw`` / ``chance_raw`` (means
    of ``r`` / ``chance``), ``same_median``, ``same_corrected`` / ``chance_corrected`` (noise-corrected, as
    ratios ``Σ r / Σ sqrt(rel_a · rel_b)`` over the perturbations where the correction is defined: the
    reliability-weighted mean of ``r_corrected``, which does not explode on perturbations whose responses are
    near noise), ``transfer`` and ``chance`` (the corrected values where
    available, else raw; ``kind`` says which), ``beyond_chance`` = ``transfer − chance``,
    ``n_corrected_above_1`` (corrections that exceeded 1 because reliabilities are noisy; kept, not clipped),
    ``n_correction_undefined``, ``reliability_a`` / ``reliability_b`` (medians), ``note``, and when
    :func:`true_transfer` added the truth: ``true_transfer`` (mean ``r_true`` over the shared perturbations),
    ``true_transfer_weighted`` (the same with the weights of ``same_corrected``, what it estimates: a
    perturbation whose response is near noise says little about its own transfer) and ``mechanism_overlap``.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=6, n_genes=80, cells_per_condition=20)
    >>> vc.coverage.summarize_transfer(vc.coverage.transferability(adata))["kind"].tolist()
    ['corrected']
    """
    rows = []
    for (a, b), g in transfer.groupby(["context_a", "context_b"], sort=True):
        corrected = g["r_corrected"].astype(float)
        ok = corrected.notna().to_numpy()
        defined = int(ok.sum())
        kind = "corrected" if defined else "raw"
        product = (g["reliability_a"].astype(float) * g["reliability_b"].astype(float)).to_numpy()
        weight = np.sqrt(np.where(ok, product, 0.0))
        chance_w = g["chance_weight"].astype(float).fillna(0).to_numpy() if "chance_weight" in g else np.zeros(len(g))
        chance_ok = chance_w > 0
        row = {
            "context_a": a, "context_b": b, "n_shared": len(g), "method": g["method"].iloc[0],
            "same_raw": g["r"].mean(), "chance_raw": g["chance"].mean(), "same_median": g["r"].median(),
            "same_corrected": g["r"].to_numpy()[ok].sum() / weight[ok].sum() if defined else np.nan,
            "chance_corrected": ((g["chance_corrected"].to_numpy()[chance_ok] * chance_w[chance_ok]).sum()
                                 / chance_w[chance_ok].sum()) if chance_ok.any() else np.nan,
        }
        row["transfer"] = row["same_corrected"] if defined else row["same_raw"]
        row["chance"] = row["chance_corrected"] if defined else row["chance_raw"]
        row["beyond_chance"] = row["transfer"] - row["chance"]
        row["kind"] = kind
        row["n_corrected_above_1"] = int((corrected > 1).sum())
        row["n_correction_undefined"] = len(g) - defined
        for side in ("reliability_a", "reliability_b"):
            values = g[side].astype(float).dropna()
            row[side] = values.median() if len(values) else np.nan
        if "r_true" in g:
            row["true_transfer"] = g["r_true"].mean()
            row["true_transfer_weighted"] = ((g["r_true"].to_numpy()[ok] * weight[ok]).sum() / weight[ok].sum()
                                             if defined else np.nan)
        if "mechanism_overlap" in g:
            row["mechanism_overlap"] = g["mechanism_overlap"].iloc[0]
        notes = []
        if not defined:
            notes.append("no cells (signatures) or no reliable halves: uncorrected")
        elif len(g) - defined:
            notes.append(f"{len(g) - defined} perturbations without a defined correction (reliability ≤ 0)")
        if row["n_corrected_above_1"]:
            notes.append(f"{row['n_corrected_above_1']} corrected r > 1 (noisy reliabilities; not clipped)")
        if len(g) < 2:
            notes.append("one shared perturbation: no chance level")
        row["note"] = "; ".join(notes)
        rows.append(row)
    columns = ["context_a", "context_b", "n_shared", "method", "same_raw", "chance_raw", "same_median",
               "same_corrected", "chance_corrected", "transfer", "chance", "beyond_chance", "kind",
               "n_corrected_above_1", "n_correction_undefined", "reliability_a", "reliability_b"]
    columns += [c for c, source in (("true_transfer", "r_true"), ("true_transfer_weighted", "r_true"),
                                    ("mechanism_overlap", "mechanism_overlap")) if source in transfer]
    return pd.DataFrame(rows, columns=columns + ["note"])


def true_transfer(adata: ad.AnnData, transfer: pd.DataFrame | None = None) -> pd.DataFrame:
    """The simulator's true transferability: the correlation of the true deltas of each perturbation in two
    contexts (noise-free, from ``uns["simulation"]``).

    Parameters
    ----------
    adata
        Output of :func:`vclib.loaders.simulate`.
    transfer
        Output of :func:`transferability`, to add the truth to its rows (same pairs and perturbations, same
        method). ``None``: every pair of contexts and every perturbation measured in both, Pearson.

    Returns
    -------
    ``transfer`` with columns ``r_true`` and ``mechanism_overlap`` (the fraction of regulatory mechanisms the two
    contexts share) added (a new table), or a table ``context_a``, ``context_b``, ``perturbation``, ``r_true``,
    ``mechanism_overlap``. :func:`summarize_transfer` then adds ``true_transfer`` and ``mechanism_overlap`` per
    pair.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=2, n_perturbations=6, n_genes=80, context_divergence=0)
    >>> float(vc.coverage.true_transfer(adata)["r_true"].min()) > 0.9
    True
    """
    sim = adata.uns.get("simulation")
    if sim is None or "truth" not in sim:
        raise VclibInputError("no ground truth: uns['simulation'] is written by vclib.loaders.simulate() only.")
    truth = pd.DataFrame(np.asarray(sim["truth"], dtype=np.float64), index=np.asarray(sim["truth_conditions"]))
    if transfer is None:
        measured = pd.Series(np.asarray(sim["truth_measured"]), index=truth.index)
        parts = [i.split("|", 1) for i in measured.index[measured.to_numpy()]]
        frame = pd.DataFrame(parts, columns=[CONTEXT_KEY, PERTURBATION_KEY])
        frame = frame[frame[PERTURBATION_KEY] != CONTROL]
        rows = []
        for a, b in combinations(sorted(frame[CONTEXT_KEY].unique()), 2):
            shared = sorted(set(frame.loc[frame[CONTEXT_KEY] == a, PERTURBATION_KEY])
                            & set(frame.loc[frame[CONTEXT_KEY] == b, PERTURBATION_KEY]))
            rows += [{"context_a": a, "context_b": b, "perturbation": p, "method": "pearson"} for p in shared]
        out = pd.DataFrame(rows, columns=["context_a", "context_b", "perturbation", "method"])
    else:
        out = transfer.copy()
    missing = sorted({f"{c}|{p}" for c, p in zip(pd.concat([out["context_a"], out["context_b"]]),
                                                   pd.concat([out["perturbation"], out["perturbation"]]),
                                                   strict=True)} - set(truth.index))
    if missing:
        raise VclibInputError(f"conditions {missing[:3]} are not in the simulator's truth; was the data relabelled?")

    def true_delta(contexts: pd.Series) -> np.ndarray:
        rows = truth.loc[(contexts + "|" + out["perturbation"]).to_numpy()].to_numpy()
        return rows - truth.loc[(contexts + "|" + CONTROL).to_numpy()].to_numpy()

    A, B = true_delta(out["context_a"].astype(str)), true_delta(out["context_b"].astype(str))
    r = np.full(len(out), np.nan)
    for method in out["method"].unique() if len(out) else []:
        m = (out["method"] == method).to_numpy()
        r[m] = _corr_rows(A[m], B[m], method)
    out["r_true"] = r
    contexts = [str(c) for c in np.asarray(sim["contexts"])]
    overlap = pd.DataFrame(np.asarray(sim["mechanism_overlap"], dtype=float), index=contexts, columns=contexts)
    out["mechanism_overlap"] = [overlap.loc[a, b] for a, b in zip(out["context_a"], out["context_b"], strict=True)]
    return out if transfer is not None else out.drop(columns="method")


def distance_vs_transfer(distances: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Context distances (:func:`control_distances`) beside transferability (:func:`summarize_transfer`),
    one row per pair of contexts that has both.

    Examples
    --------
    >>> import vclib as vc
    >>> adata = vc.loaders.simulate(n_contexts=3, n_perturbations=6, n_genes=80, cells_per_condition=20)
    >>> pairs = vc.coverage.distance_vs_transfer(vc.coverage.control_distances(adata, n_pcs=10),
    ...                                          vc.coverage.summarize_transfer(vc.coverage.transferability(adata)))
    >>> len(pairs)
    3
    """
    keep = [c for c in ["context_a", "context_b", "edistance", "correlation_distance"] if c in distances]
    out = distances[keep].merge(summary.drop(columns=["note"], errors="ignore"), on=["context_a", "context_b"])
    out.attrs["skipped"] = list(distances.attrs.get("skipped", []))  # e.g. no distances for signatures, and why
    return out


def _mantel_spearman(D: np.ndarray, T: np.ndarray, *, n_permutations: int,
                     seed: int | None) -> tuple[float, float, int, bool]:
    """Spearman ρ between the upper triangles of two symmetric context × context matrices (NaN: no pair), and
    its two-sided permutation p-value over relabellings of the contexts of ``D``.

    Returns ``(rho, p_value, n_permutations, exact)``: all ``k!`` orderings are enumerated when there are at
    most ``n_permutations + 1`` of them (exact), otherwise ``n_permutations`` random ones are drawn. Written by
    hand: scipy's ``permutation_test`` permutes observations, and here the pairs are not the exchangeable units,
    the contexts are (each context is in k − 1 pairs).
    """
    k = len(D)
    iu, ju = np.triu_indices(k, 1)
    t = T[iu, ju]
    rho = _corr_one(D[iu, ju], t, "spearman")[0]
    if not np.isfinite(rho):
        return np.nan, np.nan, 0, False
    exact = math.factorial(k) <= n_permutations + 1
    if exact:
        orders = np.array(list(permutations(range(k))))[1:]  # the first ordering is the identity: the observed ρ
    else:
        rng = np.random.default_rng(seed)
        orders = np.array([rng.permutation(k) for _ in range(n_permutations)])
    blocks = np.array_split(orders, max(1, len(orders) // 2000))
    if np.isfinite(D[iu, ju]).all() and np.isfinite(t).all():
        # A relabelling only moves the entries of D, so rank them once (centred, unit length) and correlate by
        # dot products.
        R = np.zeros((k, k))
        R[iu, ju] = _unit_rows(D[iu, ju][None, :], "spearman")[0]
        R += R.T
        t_unit = _unit_rows(t[None, :], "spearman")[0]
        null = np.concatenate([R[block[:, iu], block[:, ju]] @ t_unit for block in blocks])
    else:  # missing pairs: each relabelling correlates over its own set of defined pairs
        null = np.concatenate([
            _corr_rows(D[block[:, iu], block[:, ju]], np.broadcast_to(t, (len(block), len(t))), "spearman")
            for block in blocks
        ])
    valid = np.isfinite(null)  # a relabelling that leaves fewer than 3 defined pairs has no ρ: not counted
    # |ρ| equal to the observed one up to rounding counts as at least as extreme
    extreme = int((np.abs(null[valid]) >= abs(rho) - 1e-12).sum())
    n = int(valid.sum())
    return float(rho), (1 + extreme) / (1 + n), n, exact


def rank_correlation(
    pairs: pd.DataFrame,
    *,
    distances: tuple[str, ...] = ("edistance", "correlation_distance"),
    transfer: str = "transfer",
    n_permutations: int = 9999,
    seed: int | None = 0,
) -> pd.DataFrame:
    """Does context distance predict transferability? Spearman ρ across pairs of contexts, a permutation
    (Mantel) p-value over the contexts, and a reading.

    A usable proxy has ρ clearly below 0 (closer controls, better transfer). The pairs of contexts are not
    independent observations: with k contexts each one appears in k − 1 of the k(k − 1)/2 pairs, so one odd
    context moves many pairs together and the textbook Spearman p-value (which assumes independent pairs) is far
    too small. The p-value here instead permutes the context labels of the distance matrix against the transfer
    matrix (a Mantel test): ``p = (1 + #{|ρ_perm| ≥ |ρ_obs|}) / (1 + n_perm)``, two-sided. With k contexts there
    are only k! relabellings; when ``k! ≤ n_permutations + 1`` all of them are enumerated and p is exact, and it
    can never fall below 1/k! (1/24 for 4 contexts, 1/120 for 5). Pairs missing either value are left out; a
    relabelling that moves a distance onto a missing pair correlates over the pairs defined in both.

    Parameters
    ----------
    pairs
        Output of :func:`distance_vs_transfer`: one row per pair of contexts, with ``context_a``,
        ``context_b``, the distance columns and the transfer column.
    distances
        Distance columns to test.
    transfer
        Transfer column (``"transfer"``, ``"beyond_chance"``, ``"true_transfer"``, ...).
    n_permutations
        Random relabellings of the contexts when there are more than ``n_permutations + 1`` orderings.
    seed
        Seed of the random relabellings (the same for every distance column).

    Returns
    -------
    DataFrame with one row per distance: ``distance``, ``transfer``, ``n_pairs``, ``n_contexts``,
    ``spearman_rho``, ``p_value`` (the permutation p-value), ``n_permutations`` (relabellings compared besides
    the observed one), ``exact`` (all k! enumerated), ``reading`` (a sentence).

    References
    ----------
    Mantel N., The detection of disease clustering and a generalized regression approach, Cancer Res 27,
    209–220 (1967).

    Examples
    --------
    >>> import pandas as pd
    >>> import vclib as vc
    >>> pairs = pd.DataFrame({"context_a": ["A", "A", "A", "B", "B", "C"],
    ...                       "context_b": ["B", "C", "D", "C", "D", "D"],
    ...                       "edistance": [1, 3, 6, 2, 5, 4], "transfer": [0.9, 0.7, 0.4, 0.8, 0.5, 0.6]})
    >>> table = vc.coverage.rank_correlation(pairs, distances=("edistance",))
    >>> table.loc[0, ["spearman_rho", "p_value"]].astype(float).round(3).tolist()  # p = 1/4!: the observed order only
    [-1.0, 0.042]
    """
    if n_permutations < 1:
        raise VclibInputError(f"n_permutations={n_permutations}; give at least 1 (default 9999).")
    missing = [c for c in ("context_a", "context_b", transfer) if c not in pairs]
    if missing:
        raise VclibInputError(
            f"pairs has no column {', '.join(map(repr, missing))}; columns present: "
            f"{', '.join(map(repr, pairs.columns))}. Pass the output of distance_vs_transfer()."
        )
    key = pd.Series([" | ".join(sorted(map(str, ab))) for ab in zip(pairs["context_a"], pairs["context_b"],
                                                                     strict=True)], dtype=object)
    if key.duplicated().any():
        raise VclibInputError(f"the pair {key[key.duplicated()].iloc[0]!r} appears more than once; keep one row per "
                              "pair of contexts.")
    rows = []
    for name in distances:
        if name not in pairs:
            continue
        ok = pairs[["context_a", "context_b", name, transfer]].dropna()
        n = len(ok)
        contexts = sorted(set(ok["context_a"].astype(str)) | set(ok["context_b"].astype(str)))
        k = len(contexts)
        rho, p, n_perm, exact = np.nan, np.nan, 0, False
        if n >= 3 and ok[name].nunique() > 1 and ok[transfer].nunique() > 1:
            where = pd.Index(contexts)
            i, j = where.get_indexer(ok["context_a"].astype(str)), where.get_indexer(ok["context_b"].astype(str))
            D, T = np.full((k, k), np.nan), np.full((k, k), np.nan)
            D[i, j] = D[j, i] = ok[name].to_numpy(dtype=float)
            T[i, j] = T[j, i] = ok[transfer].to_numpy(dtype=float)
            rho, p, n_perm, exact = _mantel_spearman(D, T, n_permutations=n_permutations, seed=seed)
        how = (f"exact over all {n_perm + 1:,} orderings of the {k} contexts, smallest possible p "
               f"{1 / (n_perm + 1):.2g}" if exact else f"{n_perm:,} random orderings of the {k} contexts")
        test = f"pairs share contexts, so p permutes the context labels (Mantel test; {how})"
        if n < 4:
            reading = f"only {n} pairs of contexts: too few for a rank correlation to mean anything"
        elif p < 0.05 and rho < 0:
            reading = (f"closer controls transferred better (ρ = {rho:.2f}, p = {p:.2g}, {n} pairs): a usable "
                       f"proxy; {test}")
        elif p < 0.05:
            reading = (f"farther controls transferred better (ρ = {rho:.2f}, p = {p:.2g}, {n} pairs): "
                       f"control distance misleads here; {test}")
        else:
            reading = (f"no clear relation (ρ = {rho:.2f}, p = {p:.2g}, {n} pairs): control similarity is not a "
                       f"reliable proxy for transfer in this data; {test}")
        rows.append({"distance": name, "transfer": transfer, "n_pairs": n, "n_contexts": k, "spearman_rho": rho,
                     "p_value": p, "n_permutations": n_perm, "exact": exact, "reading": reading})
    return pd.DataFrame(rows, columns=["distance", "transfer", "n_pairs", "n_contexts", "spearman_rho", "p_value",
                                       "n_permutations", "exact", "reading"])
