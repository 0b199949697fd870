"""Metric functions on arrays. Rows are conditions, columns genes; nothing here knows about AnnData.

Every function is vectorised over rows and returns one value per row (or per context, for hit rate).
"""

from __future__ import annotations

import numba
import numpy as np
from threadpoolctl import threadpool_limits

DISTANCES = ("l1", "l2", "cosine")


def _rows(x) -> np.ndarray:
    return np.atleast_2d(np.asarray(x, dtype=np.float64))


def mse(predicted, observed) -> np.ndarray:
    """Mean squared error over genes, per row.

    Examples
    --------
    >>> mse([[1.0, 2.0]], [[1.0, 4.0]])
    array([2.])
    """
    return np.mean((_rows(predicted) - _rows(observed)) ** 2, axis=1)


def mae(predicted, observed) -> np.ndarray:
    """Mean absolute error over genes, per row.

    Examples
    --------
    >>> mae([[1.0, 2.0]], [[1.0, 4.0]])
    array([1.])
    """
    return np.mean(np.abs(_rows(predicted) - _rows(observed)), axis=1)


def top_expressed(control, *, k: int = 1000) -> np.ndarray:
    """Indices of the ``k`` genes with the highest control expression (all genes if fewer).

    Examples
    --------
    >>> top_expressed([0.1, 3.0, 2.0], k=2).tolist()
    [1, 2]
    """
    control = np.asarray(control, dtype=np.float64).ravel()
    k = min(k, control.size)
    return np.sort(np.argsort(-control, kind="stable")[:k])


def l2(predicted, observed, *, genes: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distance between prediction and observation per row, on ``genes`` (indices) if given.

    With ``genes = top_expressed(control, k=1000)`` this is the L2 of the linear-baseline paper
    (Ahlmann-Eltze et al., Nat Methods 2025).

    Examples
    --------
    >>> l2([[0.0, 3.0, 9.0]], [[4.0, 0.0, 9.0]])
    array([5.])
    """
    p, o = _rows(predicted), _rows(observed)
    if genes is not None:
        p, o = p[:, genes], o[:, genes]
    return np.linalg.norm(p - o, axis=1)


def pearson(a, b, *, mask: np.ndarray | None = None) -> np.ndarray:
    """Pearson correlation over genes per row; NaN where either row is constant.

    ``mask`` (rows × genes, bool) restricts each row to its own genes, e.g. its top DE genes.

    Examples
    --------
    >>> pearson([[1.0, 2.0, 3.0]], [[2.0, 4.0, 7.0]]).round(4)
    array([0.9934])
    """
    a, b = _rows(a), _rows(b)
    if mask is None:  # every gene: row sums through einsum, without the weight array's temporaries
        a, b = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.einsum("ij,ij->i", a, b) / np.sqrt(np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", b, b))
        return np.clip(r, -1.0, 1.0)
    # only the masked entries (e.g. 20 of 8,000 genes per row), summed per row with bincount
    row, col = np.nonzero(np.broadcast_to(mask, a.shape))
    x, y = a[row, col], b[row, col]

    def row_sums(v):
        return np.bincount(row, weights=v, minlength=len(a))

    with np.errstate(invalid="ignore", divide="ignore"):
        n = row_sums(None)
        x, y = x - (row_sums(x) / n)[row], y - (row_sums(y) / n)[row]
        r = row_sums(x * y) / np.sqrt(row_sums(x * x) * row_sums(y * y))
    return np.clip(r, -1.0, 1.0)


def cosine(a, b) -> np.ndarray:
    """Cosine similarity per row; NaN where a row is all zeros.

    Examples
    --------
    >>> cosine([[1.0, 0.0]], [[1.0, 1.0]]).round(4)
    array([0.7071])
    """
    a, b = _rows(a), _rows(b)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


_TILE_ROWS, _TILE_COLS, _CHECK_EVERY = 128, 256, 512  # measured best of 16-128 x 128-512 x 256-1024 at 5,000 x 8,000


@numba.njit(parallel=True, cache=True)
def _l1_matrix(a, b, row_limit, row_slack, col_limit):
    # scipy's cdist is single-threaded and L1 has no matrix-product identity, so this is hand-written. Each task
    # copies a tile of 256 rows of ``b`` transposed into float64 (genes x columns) and walks all rows of ``a``
    # through it, 128 at a time, keeping one float64 accumulator per pair. The innermost loop runs over columns,
    # which vectorises; four genes are added per pass over an accumulator, and two rows of ``a`` share each load
    # of ``b``, written ``acc = acc + t0 + t1 + t2 + t3`` so that every pair still sums over genes one at a time,
    # in order: the result is the plain loop's to the bit.
    # Early exit for ranking: the partial sum of non-negative terms never decreases under rounding, so once it
    # exceeds a limit the full distance does too. After every 512 genes a tile whose every off-diagonal pair has
    # ``acc - row_slack[p] > row_limit[p]`` and ``acc > col_limit[q]`` stops and is written as +inf. With
    # limits of +inf nothing stops and the matrix is complete.
    n, g = a.shape
    m = b.shape[0]
    out = np.empty((n, m))
    for tile in numba.prange((m + _TILE_COLS - 1) // _TILE_COLS):
        q0 = tile * _TILE_COLS
        w = min(m, q0 + _TILE_COLS) - q0
        bt = np.empty((g, w))
        for q in range(w):
            for k in range(g):
                bt[k, q] = b[q0 + q, k]
        acc = np.empty((_TILE_ROWS + 1, w))  # one spare row for the second row of an odd last pair
        for p0 in range(0, n, _TILE_ROWS):
            p1 = min(n, p0 + _TILE_ROWS)
            acc[:] = 0.0
            k, farther = 0, False
            while k < g and not farther:
                k_end = min(g, k + _CHECK_EVERY)
                while k + 4 <= k_end:
                    c0, c1, c2, c3 = bt[k], bt[k + 1], bt[k + 2], bt[k + 3]
                    for p in range(p0, p1, 2):
                        r = min(p + 1, p1 - 1)
                        x0, x1, x2, x3 = np.float64(a[p, k]), np.float64(a[p, k + 1]), np.float64(a[p, k + 2]), \
                            np.float64(a[p, k + 3])
                        y0, y1, y2, y3 = np.float64(a[r, k]), np.float64(a[r, k + 1]), np.float64(a[r, k + 2]), \
                            np.float64(a[r, k + 3])
                        first, second = acc[p - p0], acc[p - p0 + 1]
                        for q in range(w):
                            b0, b1, b2, b3 = c0[q], c1[q], c2[q], c3[q]
                            first[q] = first[q] + abs(x0 - b0) + abs(x1 - b1) + abs(x2 - b2) + abs(x3 - b3)
                            second[q] = second[q] + abs(y0 - b0) + abs(y1 - b1) + abs(y2 - b2) + abs(y3 - b3)
                    k += 4
                while k < k_end:
                    column = bt[k]
                    for p in range(p0, p1):
                        x, row = np.float64(a[p, k]), acc[p - p0]
                        for q in range(w):
                            row[q] += abs(x - column[q])
                    k += 1
                if k < g:
                    farther = True
                    for p in range(p0, p1):
                        for q in range(w):
                            s = acc[p - p0, q]
                            if p != q0 + q and not (s - row_slack[p] > row_limit[p] and s > col_limit[q0 + q]):
                                farther = False
                                break
                        if not farther:
                            break
            if farther:
                out[p0:p1, q0:q0 + w] = np.inf
            else:
                out[p0:p1, q0:q0 + w] = acc[: p1 - p0]
    return out


@numba.njit(parallel=True, cache=True)
def _l1_diagonal(a, b):
    """L1 distance of each row of ``a`` to the same row of ``b``, summed as :func:`_l1_matrix` sums."""
    n, g = a.shape
    out = np.empty(n)
    for p in numba.prange(n):
        s = 0.0
        for k in range(g):
            s += abs(np.float64(a[p, k]) - np.float64(b[p, k]))
        out[p] = s
    return out


def _l1_for_ranks(predicted, observed, *, exclude: list | None = None, rows: bool = True, cols: bool = False
                  ) -> np.ndarray:
    """The L1 :func:`distance_matrix` for ranking the diagonal, with work skipped where the ranks need no value.

    An entry may be +inf where its distance certainly exceeds its row's own distance (``rows``: the PDS of each
    prediction, after ``exclude`` as :func:`prediction_distances` applies it) and its column's own distance
    (``cols``: the rank metric of each observation). Every finite entry and the diagonal equal
    :func:`distance_matrix`'s to the bit, so the diagonal's ranks (ties included) are unchanged. A prediction far
    closer to its own observation than to the others stops after about as many genes as that takes; a constant
    predictor computes everything.
    """
    a, b = np.ascontiguousarray(np.atleast_2d(predicted)), np.ascontiguousarray(np.atleast_2d(observed))
    n = a.shape[0]
    own = _l1_diagonal(a, b)
    row_limit, row_slack = np.full(n, -np.inf), np.zeros(n)
    if rows:
        row_limit = own.copy()
        for p, part in enumerate(_exclusion_correction(a, b, exclude or [], "l1")):
            if part is not None:  # exactly as prediction_distances subtracts it; the largest part bounds the row
                row_limit[p], row_slack[p] = max(own[p] - part[p], 0), part.max()
    full = _l1_matrix(a, b, row_limit, row_slack, own if cols else np.full(n, -np.inf))
    full[np.arange(n), np.arange(n)] = own
    return full


def _dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b.T`` on one BLAS thread. The products are small (conditions x conditions over genes), and two
    OpenBLAS threads wait on each other whenever either loses its core: with numba's threads and other processes
    on two cores, one 200 x 8,000 product took 250 ms instead of 20 ms. The threads split the output, not the
    sums, so one thread gives the same values."""
    with threadpool_limits(1, user_api="blas"):
        return a @ b.T


def distance_matrix(a, b, *, distance: str = "l1") -> np.ndarray:
    """All pairwise distances between the rows of ``a`` and ``b`` (one matrix, not a loop).

    ``l1`` is the Manhattan sum, ``l2`` the Euclidean distance, ``cosine`` one minus the cosine similarity
    (a zero row has distance 1 to everything, as in scikit-learn).

    Examples
    --------
    >>> distance_matrix([[0.0, 0.0]], [[3.0, 4.0], [1.0, 0.0]], distance="l2")
    array([[5., 1.]])
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance={distance!r} is not one of {DISTANCES}.")
    if distance == "l1":
        a, b = np.ascontiguousarray(np.atleast_2d(a)), np.ascontiguousarray(np.atleast_2d(b))
        unlimited = np.full(a.shape[0], np.inf)
        return _l1_matrix(a, b, unlimited, np.zeros(a.shape[0]), np.full(b.shape[0], np.inf))
    a, b = _rows(a), _rows(b)
    if distance == "l2":
        sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - _dots(2 * a, b)
        return np.sqrt(np.maximum(sq, 0))
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = _dots(a, b) / np.outer(na, nb)
    return 1 - np.nan_to_num(sim, nan=0.0)


def _exclusion_correction(pred, obs, excluded, distance):
    """Per-row pieces of the distance carried by each row's excluded genes (``excluded[p]`` = gene indices)."""
    parts = []
    for p, genes in enumerate(excluded):
        genes = np.asarray(genes, dtype=np.int64)
        if genes.size == 0:
            parts.append(None)
            continue
        a, b = np.asarray(pred[p, genes], dtype=np.float64), np.asarray(obs[:, genes], dtype=np.float64)
        if distance == "l1":
            parts.append(np.abs(b - a).sum(axis=1))
        elif distance == "l2":
            parts.append(((b - a) ** 2).sum(axis=1))
        else:
            parts.append(((b * a).sum(axis=1), (a * a).sum(), (b * b).sum(axis=1)))
    return parts


def prediction_distances(
    predicted, observed, *, distance: str = "l1", exclude: list | None = None, full: np.ndarray | None = None
) -> np.ndarray:
    """Distances ``D[p, q]`` from the prediction of row ``p`` to the observation of row ``q``.

    ``exclude[p]`` lists gene indices left out of row ``p``'s distances (its own target genes); the full
    matrix is computed once and each row's excluded genes are subtracted, so no loop over all genes.
    ``full``: the L1 or L2 :func:`distance_matrix` of the same rows, when the caller already has it (it is not
    computed again, nor modified).

    Examples
    --------
    >>> prediction_distances([[1.0, 5.0]], [[1.0, 0.0], [0.0, 5.0]], exclude=[[1]])
    array([[0., 1.]])
    """
    excluded = exclude is not None and any(len(e) for e in exclude)
    if excluded and distance == "cosine":
        return _cosine_excluding(_rows(predicted), _rows(observed), exclude)
    if full is None:
        full = distance_matrix(predicted, observed, distance=distance)
    if not excluded:
        return full
    pred, obs = np.atleast_2d(predicted), np.atleast_2d(observed)  # no float64 copy: the parts cast their genes
    out = full**2 if distance == "l2" else full.copy()
    for p, part in enumerate(_exclusion_correction(pred, obs, exclude, distance)):
        if part is not None:
            out[p] = np.maximum(out[p] - part, 0)
    return np.sqrt(out) if distance == "l2" else out


def _cosine_excluding(pred, obs, exclude) -> np.ndarray:
    """Cosine distances with each row's excluded genes taken out of the dot products and the norms."""
    dots, na2, nb2 = _dots(pred, obs), (pred * pred).sum(1), (obs * obs).sum(1)
    out = np.empty_like(dots)
    for p, part in enumerate(_exclusion_correction(pred, obs, exclude, "cosine")):
        d, a2, b2 = (dots[p], na2[p], nb2) if part is None else (dots[p] - part[0], na2[p] - part[1],
                                                                  nb2 - part[2])
        with np.errstate(invalid="ignore", divide="ignore"):
            out[p] = 1 - np.nan_to_num(d / np.sqrt(a2 * b2), nan=0.0)
    return out


def _rank_of_diagonal(D: np.ndarray, *, ties: str) -> np.ndarray:
    """Per row p: how many other columns are closer than column p (ties half, or by position)."""
    own = np.diag(D)[:, None]
    closer = (D < own).sum(axis=1)
    equal = (D == own).sum(axis=1) - 1
    if ties == "mid":
        return closer + 0.5 * equal
    if ties == "position":
        before = np.tril(D == own, k=-1).sum(axis=1)
        return closer + before
    raise ValueError(f"ties={ties!r} is not 'mid' or 'position'.")


def discrimination_score(
    predicted_delta,
    observed_delta,
    *,
    distance: str = "l1",
    exclude: list | None = None,
    ties: str = "mid",
) -> np.ndarray:
    """Perturbation discrimination score (PDS) of each row's prediction among the observed perturbations.

    For perturbation ``p`` of the ``N`` rows, ``r_p`` counts the other perturbations whose observed delta is
    closer to the predicted delta of ``p`` than ``p``'s own observed delta.

    * ``ties="mid"`` (vclib's default): ties count one half and ``PDS_p = 1 - r_p / (N - 1)``; a perfect
      prediction scores 1 and a constant predictor exactly 0.5 on average.
    * ``ties="position"`` (cell-eval 0.8.2): ties are broken by row order and ``PDS_p = 1 - r_p / N``; a
      constant predictor then averages ``0.5 + 1/(2N)``.

    Parameters
    ----------
    predicted_delta, observed_delta
        N × genes, rows in the same perturbation order (one context).
    distance
        ``"l1"``, ``"l2"`` or ``"cosine"``.
    exclude
        Per row, gene indices to leave out (the perturbation's own targets, or a panel of all targets).
    ties
        ``"mid"`` or ``"position"``.

    References
    ----------
    Virtual Cell Challenge 2025 (Roohani et al.); cell-eval 0.8.2 ``discrimination_score``.

    Examples
    --------
    >>> import numpy as np
    >>> obs = np.eye(3)
    >>> discrimination_score(obs, obs).tolist()
    [1.0, 1.0, 1.0]
    >>> discrimination_score(np.ones((3, 3)), obs).mean()
    np.float64(0.5)
    """
    full = _l1_for_ranks(predicted_delta, observed_delta, exclude=exclude) if distance == "l1" else None
    D = prediction_distances(predicted_delta, observed_delta, distance=distance, exclude=exclude, full=full)
    n = D.shape[0]
    if n < 2:
        return np.full(n, np.nan)
    r = _rank_of_diagonal(D, ties=ties)
    return 1 - r / ((n - 1) if ties == "mid" else n)


def rank_metric(predicted_delta, observed_delta, *, distance: str = "l1") -> np.ndarray:
    """Mode-collapse rank: per observed condition, the rank of its own prediction among all predictions.

    ``rank_q = (#predictions closer to observation q than q's own + half the ties) / (N - 1)``: 0 is perfect,
    0.5 is chance, and a model predicting the same delta for everything scores exactly 0.5 everywhere.

    References
    ----------
    Wu et al., PerturBench (2024), rank metrics.

    Examples
    --------
    >>> import numpy as np
    >>> rank_metric(np.eye(3), np.eye(3)).tolist()
    [0.0, 0.0, 0.0]
    >>> rank_metric(np.zeros((3, 3)), np.eye(3)).tolist()
    [0.5, 0.5, 0.5]
    """
    D = (_l1_for_ranks(predicted_delta, observed_delta, rows=False, cols=True) if distance == "l1" else
         prediction_distances(predicted_delta, observed_delta, distance=distance))
    n = D.shape[0]
    if n < 2:
        return np.full(n, np.nan)
    return _rank_of_diagonal(D.T, ties="mid") / (n - 1)


def hit_rate_at_k(predicted_effect, is_hit, *, k: int) -> float:
    """Fraction of the ``k`` perturbations with the largest predicted effect that are real hits.

    Examples
    --------
    >>> hit_rate_at_k([0.9, 0.1, 0.5, 0.7], [True, False, False, True], k=2)
    1.0
    """
    effect = np.asarray(predicted_effect, dtype=np.float64)
    k = min(k, effect.size)
    if k == 0:
        return float("nan")
    top = np.argsort(-effect, kind="stable")[:k]
    return float(np.asarray(is_hit, dtype=bool)[top].mean())


def _ordered_significant(lfc_row: np.ndarray, sig_row: np.ndarray) -> np.ndarray:
    """Significant gene indices ordered by |lfc| (float32, as cell-eval), ties by gene order."""
    idx = np.flatnonzero(sig_row)
    return idx[np.argsort(-np.abs(lfc_row[idx]).astype(np.float32), kind="stable")]


def de_overlap(pred_lfc, pred_sig, obs_lfc, obs_sig, *, k: int | None = None, no_de: float = np.nan) -> np.ndarray:
    """overlap@N per row: ``|top-N predicted ∩ top-N observed| / N`` with genes ranked by |lfc| among the
    significant ones and ``N`` = number of observed DE genes (or ``min(k, N)``).

    A row whose observation has no DE gene has nothing to find: it scores ``no_de`` (NaN, undefined; cell-eval
    writes 0). A prediction with no DE gene against an observation with some scores 0.

    Examples
    --------
    >>> import numpy as np
    >>> lfc = np.array([[3.0, -2.0, 0.1, 1.0]])
    >>> sig = np.array([[True, True, False, True]])
    >>> de_overlap(lfc, sig, lfc, sig).tolist()
    [1.0]
    """
    out = np.zeros(len(obs_lfc))
    for i in range(len(obs_lfc)):
        real, pred = _ordered_significant(obs_lfc[i], obs_sig[i]), _ordered_significant(pred_lfc[i], pred_sig[i])
        n = real.size if k is None else min(k, real.size)
        if n == 0:
            out[i] = no_de
        elif pred.size:
            out[i] = np.intersect1d(real[:n], pred[:n]).size / n
    return out


def de_precision(pred_lfc, pred_sig, obs_lfc, obs_sig, *, k: int | None = None, no_de: float = np.nan) -> np.ndarray:
    """precision@k per row: of the top-k predicted DE genes (k = number predicted if None), the fraction
    among the top-k observed DE genes (cell-eval's definition: both lists cut at k).

    0 when the prediction has no DE gene; ``no_de`` (NaN; cell-eval: 0) when the observation has none.
    """
    out = np.zeros(len(obs_lfc))
    for i in range(len(obs_lfc)):
        real, pred = _ordered_significant(obs_lfc[i], obs_sig[i]), _ordered_significant(pred_lfc[i], pred_sig[i])
        n = pred.size if k is None else min(k, pred.size)
        if real.size == 0:
            out[i] = no_de
        elif n:
            out[i] = np.intersect1d(real[:n], pred[:n]).size / n
    return out


def de_direction(pred_lfc, obs_lfc, obs_sig) -> np.ndarray:
    """Fraction of observed DE genes whose predicted lfc has the same sign; NaN without observed DE genes."""
    out = np.full(len(obs_lfc), np.nan)
    for i in range(len(obs_lfc)):
        genes = np.flatnonzero(obs_sig[i])
        if genes.size:
            out[i] = np.mean(np.sign(obs_lfc[i, genes].astype(np.float32)) ==
                             np.sign(pred_lfc[i, genes].astype(np.float32)))
    return out


def de_spearman(pred_lfc, obs_lfc, obs_sig) -> np.ndarray:
    """Spearman correlation of predicted and observed lfc over the observed DE genes; NaN with fewer than 2."""
    out = np.full(len(obs_lfc), np.nan)
    for i in range(len(obs_lfc)):
        genes = np.flatnonzero(obs_sig[i])
        if genes.size >= 2:
            a = obs_lfc[i, genes].astype(np.float32).astype(np.float64)
            b = pred_lfc[i, genes].astype(np.float32).astype(np.float64)
            if a.min() < a.max() and b.min() < b.max():  # not constant (inf-safe, unlike np.ptp)
                out[i] = np.corrcoef(midranks(a), midranks(b))[0, 1]
    return out


def midranks(x) -> np.ndarray:
    """Ranks 1..n with ties given their mean rank (``scipy.stats.rankdata(x)``; ±inf rank as the largest and
    smallest values). Written out because importing scipy.stats takes about a second, a fifth of scoring a
    whole screen.

    Examples
    --------
    >>> midranks([10.0, 30.0, 20.0, 30.0]).tolist()
    [1.0, 3.5, 2.0, 3.5]
    """
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    ordered = x[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1], True])  # where each run of ties begins
    ranks = np.empty(x.size)
    ranks[order] = np.repeat((starts[:-1] + starts[1:] + 1) / 2, np.diff(starts))
    return ranks
