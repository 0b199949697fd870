"""Metrics: closed-form properties, independent re-computations, the DE engine against scipy, bad input."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse, stats
from scipy.spatial.distance import cdist

import vclib as vc
from vclib.schema import VclibInputError

M = vc.metrics


@pytest.fixture(scope="module")
def data():
    """Simulated cells, their DE computed once, and their pseudobulk (the perfect pseudobulk prediction)."""
    adata = vc.loaders.simulate(n_contexts=2, n_perturbations=10, n_combinations=3, n_genes=100,
                                cells_per_condition=40, control_cells=80, seed=11)
    return adata, M.rank_genes(adata), vc.pseudobulk.pseudobulk(adata)


def _values(table: pd.DataFrame, metric: str) -> np.ndarray:
    return table.loc[table["metric"] == metric, "value"].to_numpy(dtype=float)


def _naive_pds(pred, obs, *, distance, ties):
    """PDS by the definition, one perturbation at a time."""
    n = len(pred)
    metric = {"l1": "cityblock", "l2": "euclidean", "cosine": "cosine"}[distance]
    out = []
    for p in range(n):
        d = cdist(pred[p : p + 1], obs, metric=metric)[0]
        closer = sum(d[q] < d[p] for q in range(n) if q != p)
        tied = sum(d[q] == d[p] for q in range(n) if q != p)
        if ties == "mid":
            out.append(1 - (closer + tied / 2) / (n - 1))
        else:
            out.append(1 - (closer + sum(d[q] == d[p] for q in range(p))) / n)
    return np.array(out)


# --- array metrics: closed forms and independent re-computations -------------------------------------------

def test_simple_errors_closed_form():
    p, o = np.array([[0.0, 3.0, 9.0]]), np.array([[4.0, 0.0, 9.0]])
    assert M.mse(p, o)[0] == pytest.approx(25 / 3)
    assert M.mae(p, o)[0] == pytest.approx(7 / 3)
    assert M.l2(p, o)[0] == pytest.approx(5.0)
    assert M.l2(p, o, genes=np.array([0]))[0] == pytest.approx(4.0)
    assert M.top_expressed([5.0, 1.0, 3.0], k=2).tolist() == [0, 2]


def test_pearson_and_cosine_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 30))
    np.testing.assert_allclose(M.pearson(a, a), 1.0)
    np.testing.assert_allclose(M.pearson(a, -2 * a + 1), -1.0)
    np.testing.assert_allclose(M.pearson(a, a * 0 + 1), np.nan)  # constant prediction: undefined
    expected = [stats.pearsonr(x, y)[0] for x, y in zip(a, a[::-1], strict=True)]
    np.testing.assert_allclose(M.pearson(a, a[::-1]), expected)
    mask = np.zeros_like(a, dtype=bool)
    mask[:, :10] = True
    np.testing.assert_allclose(M.pearson(a, a[::-1], mask=mask),
                               [stats.pearsonr(x[:10], y[:10])[0] for x, y in zip(a, a[::-1], strict=True)])
    np.testing.assert_allclose(M.cosine(a, 3 * a), 1.0)


@pytest.mark.parametrize("distance", ["l1", "l2", "cosine"])
def test_distance_matrix_matches_scipy(distance):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(7, 40)).astype(np.float32), rng.normal(size=(9, 40)).astype(np.float32)
    expected = cdist(a.astype(float), b.astype(float), {"l1": "cityblock", "l2": "euclidean", "cosine": "cosine"}[
        distance])
    np.testing.assert_allclose(M.distance_matrix(a, b, distance=distance), expected, rtol=1e-9, atol=1e-9)


def _sequential_l1(a, b):
    """L1 distances summed over genes one at a time, in order (cumsum is sequential), in float64."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.array([np.cumsum(np.abs(row[None, :] - b), axis=1)[:, -1] for row in a])


def test_l1_matrix_is_the_plain_loop_to_the_bit():
    # 130 x 260 rows cross the kernel's 128-row and 256-column tiles; 1,030 genes are not a multiple of 4
    rng = np.random.default_rng(12)
    a, b = rng.normal(size=(130, 1030)).astype(np.float32), rng.normal(size=(260, 1030))
    np.testing.assert_array_equal(M.distance_matrix(a, b, distance="l1"), _sequential_l1(a, b))


def _naive_ranks(D, *, ties):
    """Per row p, the number of other columns closer than column p (ties half, or ties before p)."""
    out = []
    for p, d in enumerate(D):
        others = np.delete(np.arange(len(d)), p)
        tied = d[others] == d[p]
        out.append(np.sum(d[others] < d[p]) + (tied.sum() / 2 if ties == "mid" else tied[others < p].sum()))
    return np.array(out)


@pytest.mark.parametrize("design", ["near", "mixed"])
def test_ranking_skips_only_pairs_it_does_not_need(design):
    # "near": predictions near their own observation let most tiles stop early (+inf). "mixed": half the
    # predictions are far off, so a pair can be farther than its row's own distance (PDS) but closer than its
    # column's (rank metric): such tiles must not stop. Either way the ranks are those of the complete matrix,
    # with exact ties (duplicated rows) and each row's own genes left out.
    rng = np.random.default_rng(13)
    n, g = 300, 1100
    obs = rng.normal(size=(n, g))
    scale = np.where(np.arange(n) < n // 2, 0.5, 3.0 if design == "mixed" else 0.5)[:, None]
    pred = obs + rng.normal(size=(n, g)) * scale
    pred[290], obs[295] = pred[291], obs[296]  # ties, in the last row and column tiles (which cannot stop)
    own = [list(rng.choice(g, size=rng.integers(0, 3), replace=False)) for _ in range(n)]
    D_pds = M.prediction_distances(pred, obs, distance="l1", exclude=own)  # complete matrix
    D_rank = M.distance_matrix(pred, obs, distance="l1")
    skipped = M._functions._l1_for_ranks(pred, obs, exclude=own, rows=True, cols=True)
    if design == "near":
        assert np.isinf(skipped).mean() > 0.5  # the early exit happened
    finite = np.isfinite(skipped)
    np.testing.assert_array_equal(skipped[finite], D_rank[finite])
    rows, cols = np.nonzero(~finite)
    assert (D_pds[rows, cols] > D_pds[rows, rows]).all() and (D_rank[rows, cols] > D_rank[cols, cols]).all()
    for ties in ("mid", "position"):
        expected = 1 - _naive_ranks(D_pds, ties=ties) / ((n - 1) if ties == "mid" else n)
        np.testing.assert_array_equal(M.discrimination_score(pred, obs, exclude=own, ties=ties), expected)
    np.testing.assert_array_equal(M.rank_metric(pred, obs), _naive_ranks(D_rank.T, ties="mid") / (n - 1))
    constant = np.tile(pred[0], (n, 1))  # nothing can stop early; still exactly 0.5 on average
    assert not np.isinf(M._functions._l1_for_ranks(constant, obs)).any()
    assert M.discrimination_score(constant, obs).mean() == pytest.approx(0.5, abs=1e-12)


def test_ranking_early_exit_leaves_out_the_excluded_genes():
    # Observation 5 copies observation 0, far off on gene 0 (which row 0 leaves out) and exactly right on gene 1:
    # without gene 0 it is closer to prediction 0 than observation 0 is, although the partial sums, which
    # include gene 0, pass row 0's own distance within the first 512 genes.
    rng = np.random.default_rng(14)
    obs = rng.normal(size=(20, 1100))
    obs[5] = obs[0]
    obs[5, 0] += 1000
    pred = obs + rng.normal(scale=0.5, size=obs.shape)
    obs[5, 1] = pred[0, 1]
    own = [[0]] + [[]] * 19
    D = M.prediction_distances(pred, obs, distance="l1", exclude=own)
    assert D[0, 5] < D[0, 0]
    np.testing.assert_array_equal(M.discrimination_score(pred, obs, exclude=own),
                                  1 - _naive_ranks(D, ties="mid") / 19)


@pytest.mark.parametrize("distance", ["l1", "l2", "cosine"])
def test_exclusion_equals_dropping_the_genes(distance):
    rng = np.random.default_rng(2)
    pred, obs = rng.normal(size=(6, 30)), rng.normal(size=(6, 30))
    exclude = [[0], [1, 2], [], [29], [5], [3, 4, 5]]
    D = M.prediction_distances(pred, obs, distance=distance, exclude=exclude)
    for p, genes in enumerate(exclude):
        keep = np.setdiff1d(np.arange(30), genes)
        expected = M.distance_matrix(pred[p : p + 1, keep], obs[:, keep], distance=distance)[0]
        np.testing.assert_allclose(D[p], expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("distance", ["l1", "l2", "cosine"])
@pytest.mark.parametrize("ties", ["mid", "position"])
def test_pds_matches_naive_definition(distance, ties):
    rng = np.random.default_rng(3)
    obs = rng.normal(size=(12, 25))
    pred = obs + rng.normal(scale=1.5, size=obs.shape)
    pred[3] = pred[4]  # duplicated predictions and observations create ties
    obs[7] = obs[8]
    np.testing.assert_allclose(M.discrimination_score(pred, obs, distance=distance, ties=ties),
                               _naive_pds(pred, obs, distance=distance, ties=ties))


def test_pds_perfect_and_constant_predictor():
    rng = np.random.default_rng(4)
    obs = rng.normal(size=(15, 40))
    np.testing.assert_array_equal(M.discrimination_score(obs, obs), 1.0)
    constant = np.tile(rng.normal(size=40), (15, 1))
    for distance in ("l1", "l2", "cosine"):
        # exactly 0.5 (the pairs split evenly), up to floating-point rounding of the mean
        assert M.discrimination_score(constant, obs, distance=distance).mean() == pytest.approx(0.5, abs=1e-12)
    # cell-eval's convention: a constant predictor averages 0.5 + 1/(2N)
    assert M.discrimination_score(constant, obs, ties="position").mean() == pytest.approx(0.5 + 1 / 30)
    # a panel exclusion is the same for every row, so the constant predictor stays at exactly 0.5
    assert M.discrimination_score(constant, obs, exclude=[[0, 1, 2]] * 15).mean() == pytest.approx(0.5, abs=1e-12)


def test_rank_metric_perfect_constant_and_naive():
    rng = np.random.default_rng(5)
    obs = rng.normal(size=(10, 30))
    np.testing.assert_array_equal(M.rank_metric(obs, obs), 0.0)
    np.testing.assert_array_equal(M.rank_metric(np.zeros_like(obs), obs), 0.5)  # every prediction ties
    pred = obs + rng.normal(scale=2, size=obs.shape)
    D = cdist(pred, obs, "cityblock")
    naive = [(np.sum(D[:, q] < D[q, q]) + (np.sum(D[:, q] == D[q, q]) - 1) / 2) / 9 for q in range(10)]
    np.testing.assert_allclose(M.rank_metric(pred, obs), naive)


def test_permuted_labels_drop_pds_and_rank_to_chance():
    rng = np.random.default_rng(6)
    obs = rng.normal(size=(40, 50))
    pds, rank = [], []
    for _ in range(30):
        perm = rng.permutation(40)
        pds.append(M.discrimination_score(obs[perm], obs).mean())
        rank.append(M.rank_metric(obs[perm], obs).mean())
    assert abs(np.mean(pds) - 0.5) < 0.05 and abs(np.mean(rank) - 0.5) < 0.05


def test_hit_rate_and_de_agreement_closed_form():
    assert M.hit_rate_at_k([0.9, 0.1, 0.5, 0.7], [True, False, False, True], k=3) == pytest.approx(2 / 3)
    obs_lfc = np.array([[4.0, -3.0, 2.0, 1.0, 0.5]])
    obs_sig = np.array([[True, True, True, False, False]])
    pred_lfc = np.array([[-5.0, 0.1, 2.5, 3.0, 0.0]])
    pred_sig = np.array([[True, False, True, True, False]])
    # predicted order by |lfc|: 0, 3, 2; observed: 0, 1, 2. Top-3 overlap {0, 2} -> 2/3.
    assert M.de_overlap(pred_lfc, pred_sig, obs_lfc, obs_sig)[0] == pytest.approx(2 / 3)
    assert M.de_overlap(pred_lfc, pred_sig, obs_lfc, obs_sig, k=1)[0] == 1.0
    assert M.de_precision(pred_lfc, pred_sig, obs_lfc, obs_sig)[0] == pytest.approx(2 / 3)
    # signs on observed DE genes 0, 1, 2: (+,-), (-,+), (+,+) -> 1/3
    assert M.de_direction(pred_lfc, obs_lfc, obs_sig)[0] == pytest.approx(1 / 3)
    assert M.de_spearman(pred_lfc, obs_lfc, obs_sig)[0] == pytest.approx(
        stats.spearmanr([4.0, -3.0, 2.0], [-5.0, 0.1, 2.5]).statistic)
    assert np.isnan(M.de_direction(pred_lfc, obs_lfc, np.zeros_like(obs_sig))[0])


# --- DE engine --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("continuity", [True, False])
def test_rank_genes_matches_scipy(continuity):
    rng = np.random.default_rng(7)
    counts = rng.poisson(rng.gamma(1.0, 1.0, size=(90, 25)))  # many ties, zeros included
    X = np.log1p(counts / np.maximum(counts.sum(1, keepdims=True), 1) * 1e4)
    obs = pd.DataFrame({"perturbation": ["control"] * 40 + ["A"] * 30 + ["B"] * 20, "context": "c"})
    adata = ad.AnnData(sparse.csr_matrix(X), obs=obs)
    de = M.rank_genes(adata, continuity=continuity)
    control = X[:40]
    for i, rows in enumerate([slice(40, 70), slice(70, 90)]):
        for g in range(25):
            both = np.r_[X[rows, g], control[:, g]]
            expected = 1.0 if np.ptp(both) == 0 else stats.mannwhitneyu(
                X[rows, g], control[:, g], method="asymptotic", use_continuity=continuity).pvalue
            assert de.pvalue[i, g] == pytest.approx(expected, rel=1e-10, abs=1e-14)
        np.testing.assert_allclose(de.fdr[i], _bh_by_hand(de.pvalue[i]), rtol=1e-12)
        m_p, m_c = X[rows].mean(0), control.mean(0)
        np.testing.assert_allclose(de.lfc[i], np.log2((np.expm1(m_p) + 1e-9) / (np.expm1(m_c) + 1e-9)))


def _sparse_layouts(X: np.ndarray, layout: str, rng) -> sparse.spmatrix:
    """X as CSR, CSC, CSR with unsorted column indices, or CSR holding explicit zeros."""
    if layout == "csc":
        return sparse.csc_matrix(X)
    M_ = sparse.csr_matrix(X)
    if layout == "explicit_zeros":
        M_.data[rng.random(M_.nnz) < 0.2] = 0.0  # stored, but zero
    if layout == "unsorted":
        for r in range(M_.shape[0]):
            a, b = M_.indptr[r], M_.indptr[r + 1]
            perm = a + rng.permutation(b - a)
            M_.indices[a:b], M_.data[a:b] = M_.indices[perm].copy(), M_.data[perm].copy()
        M_.has_sorted_indices = False
    return M_


@pytest.mark.parametrize("layout", ["csr", "csc", "unsorted", "explicit_zeros"])
def test_sparse_wilcoxon_equals_dense_path_and_scipy(layout):
    """The sparse kernel (stored values only, zeros as one tie block) gives the dense path's p-values exactly and
    scipy's to 1e-10: negative values (zeros sit inside the order), heavy ties, explicit stored zeros, a group of
    one cell, a group with over 32 stored values per gene (another sort), a gene that is zero everywhere."""
    rng = np.random.default_rng(11)
    sizes = {"control": 50, "A": 45, "B": 1, "C": 6}
    labels = np.concatenate([[k] * v for k, v in sizes.items()] * 2)
    contexts = np.repeat(["x", "y"], sum(sizes.values()))
    X = np.round(rng.normal(0.3, 1.0, size=(labels.size, 12)), 1)
    X[rng.random(X.shape) < 0.5] = 0.0
    X[:, 3] = 0.0
    X[(labels == "A")[:, None] & (np.arange(12) == 5)] += 2.0  # one responding gene
    obs = pd.DataFrame({"perturbation": labels, "context": contexts})
    S = _sparse_layouts(X, layout, rng)
    X = S.toarray()
    dense = M.rank_genes(ad.AnnData(X, obs=obs))
    got = M.rank_genes(ad.AnnData(S, obs=obs))
    np.testing.assert_array_equal(got.pvalue, dense.pvalue)
    np.testing.assert_allclose(got.lfc, dense.lfc, rtol=1e-12, atol=1e-12)
    for i, (ctx, pert) in enumerate(zip(got.conditions["context"], got.conditions["perturbation"], strict=True)):
        rows = (contexts == ctx) & (labels == pert)
        ctrl = (contexts == ctx) & (labels == "control")
        for g in range(12):
            both = np.r_[X[rows, g], X[ctrl, g]]
            expected = 1.0 if np.ptp(both) == 0 else stats.mannwhitneyu(
                X[rows, g], X[ctrl, g], method="asymptotic", use_continuity=True).pvalue
            assert got.pvalue[i, g] == pytest.approx(expected, rel=1e-10, abs=1e-14), (ctx, pert, g)


def test_rank_genes_leaves_the_matrix_as_it_was():
    rng = np.random.default_rng(2)
    X = _sparse_layouts(np.round(rng.random((30, 5)), 1), "unsorted", rng)
    before = (X.indices.copy(), X.data.copy())
    obs = pd.DataFrame({"perturbation": ["control"] * 20 + ["A"] * 10, "context": "c"})
    M.rank_genes(ad.AnnData(X, obs=obs))
    assert not X.has_sorted_indices
    np.testing.assert_array_equal(X.indices, before[0])
    np.testing.assert_array_equal(X.data, before[1])


def test_benjamini_hochberg_equals_scipy():
    p = np.random.default_rng(5).random((7, 300)) ** 3
    p[:, :20] = p[:, :1]  # tied p-values
    np.testing.assert_allclose(M.benjamini_hochberg(p), stats.false_discovery_control(p, axis=1), rtol=1e-15)
    np.testing.assert_allclose(M.benjamini_hochberg(p[:1]), _bh_by_hand(p[0])[None], rtol=1e-12)


def test_midranks_and_de_spearman_equal_scipy():
    rng = np.random.default_rng(4)
    for _ in range(300):
        x = rng.integers(0, 6, rng.integers(1, 40)).astype(float)  # heavy ties
        x[rng.random(x.size) < 0.1] = np.inf
        x[rng.random(x.size) < 0.1] = -np.inf  # one-sided zeros give infinite lfc with epsilon 0
        np.testing.assert_array_equal(M.midranks(x), stats.rankdata(x))
    obs, pred = rng.normal(size=(20, 30)), rng.normal(size=(20, 30)).round(1)
    obs[:, 0] = -np.inf
    sig = rng.random((20, 30)) < 0.5
    expected = [stats.spearmanr(obs[i, sig[i]], pred[i, sig[i]]).statistic for i in range(20)]
    np.testing.assert_allclose(M.de_spearman(pred, obs, sig), expected, rtol=1e-12)


def _bh_by_hand(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg written out: p_(i) * m / i, then the running minimum from the largest p down."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adjusted = [0.0] * m
    running = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, p[i] * m / rank)
        adjusted[i] = running
    return np.array(adjusted)


def _wilcoxon_z_by_hand(x: list, y: list, *, tie_correction: bool, continuity: bool) -> float:
    """The normal approximation of the rank-sum test, from its textbook formulas (mid-ranks by a loop)."""
    pooled = sorted(x + y)
    rank = {v: (pooled.index(v) + 1 + len(pooled) - pooled[::-1].index(v)) / 2 for v in set(pooled)}  # mid-ranks
    n1, n2 = len(x), len(y)
    u = sum(rank[v] for v in x) - n1 * (n1 + 1) / 2
    n = n1 + n2
    ties = sum(pooled.count(v) ** 3 - pooled.count(v) for v in set(pooled)) if tie_correction else 0
    sigma = (n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))) ** 0.5
    return (max(u, n1 * n2 - u) - n1 * n2 / 2 - (0.5 if continuity else 0)) / sigma


def test_tie_correction_against_a_hand_computed_z():
    x = [0.0, 0.0, 0.0, 1.0, 1.0, 2.0, 3.0]  # the perturbed cells of one gene: large tie blocks
    y = [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.5]  # its controls
    adata = ad.AnnData(np.array(x + y)[:, None], obs=pd.DataFrame({"perturbation": ["A"] * 7 + ["control"] * 8,
                                                                   "context": "c"}))
    for tie_correction in (True, False):
        z = _wilcoxon_z_by_hand(x, y, tie_correction=tie_correction, continuity=True)
        got = M.rank_genes(adata, tie_correction=tie_correction).pvalue[0, 0]
        assert got == pytest.approx(2 * stats.norm.sf(z), rel=1e-12)
    corrected = M.rank_genes(adata).pvalue[0, 0]
    uncorrected = M.rank_genes(adata, tie_correction=False).pvalue[0, 0]
    assert corrected < uncorrected - 1e-3  # ties shrink the variance: a strict, not a tolerated, difference


def test_rank_genes_needs_controls():
    adata = ad.AnnData(np.random.default_rng(0).random((4, 3)),
                       obs=pd.DataFrame({"perturbation": ["A", "A", "B", "B"], "context": "x"}))
    with pytest.raises(VclibInputError, match="context 'x' has no control cells"):
        M.rank_genes(adata)


# --- evaluate: properties on the simulator ----------------------------------------------------------------

def test_perfect_prediction_scores_best_on_every_metric(data):
    adata, de, pb = data
    table = M.evaluate(pb, adata, observed_de=de)
    assert set(table["metric"]) == set(M.REGISTRY)
    n_de = pd.Series(de.significant(0.05).sum(axis=1), index=de.conditions.index)
    for name, info in M.REGISTRY.items():
        if info.perfect is None:
            continue
        rows = table[table["metric"] == name]
        values = rows["value"].to_numpy(dtype=float)
        np.testing.assert_allclose(values[np.isfinite(values)], info.perfect, atol=1e-9, err_msg=name)
        # undefined only where the observation gives nothing to find (no DE genes, or fewer than 2 to correlate)
        ids = (rows["context"] + "|" + rows["perturbation"]).to_numpy()
        needed = {"pearson_delta_top_de": 2, "de_spearman_lfc_sig": 2}.get(name, 1 if name in M.DE_METRICS else 0)
        assert (np.isnan(values) == (n_de.loc[ids].to_numpy() < needed)).all(), name
    # hit rate: a perfect prediction finds as many hits as the data allow, no predictor finds more
    control = M.evaluate(M.predict_control(adata), adata, observed_de=de, metrics=["hit_rate_at_k"])
    assert (_values(table, "hit_rate_at_k") >= _values(control, "hit_rate_at_k")).all()
    hits = (de.significant(0.05).sum(axis=1) >= 10)
    contexts = de.conditions["context"].to_numpy()
    best = [min(10, hits[contexts == c].sum()) / min(10, (contexts == c).sum()) for c in ["C1", "C2"]]
    np.testing.assert_allclose(_values(table, "hit_rate_at_k"), best)


def test_cell_level_perfect_prediction(data):
    adata, de, _ = data
    table = M.evaluate(adata, adata, observed_de=de, metrics=list(M.DE_METRICS) + ["pearson_delta"])
    for name in ("overlap_at_N", "precision_at_N", "de_direction_match", "de_spearman_lfc_sig", "pearson_delta"):
        values = _values(table, name)
        np.testing.assert_allclose(values[np.isfinite(values)], 1.0, err_msg=name)


def test_predicting_the_control_gives_trivial_delta_values(data):
    adata, de, pb = data
    table = M.evaluate(M.predict_control(adata), adata, observed_de=de, exclude=None)
    assert np.isnan(_values(table, "pearson_delta")).all()
    deltas = vc.pseudobulk.deltas(pb)
    expected = (np.asarray(deltas.X) ** 2).mean(axis=1)  # delta-mse of "no change" = mean squared delta
    got = table[table["metric"] == "mse_delta"].set_index(["context", "perturbation"])["value"]
    keys = list(zip(deltas.obs["context"], deltas.obs["perturbation"], strict=True))
    np.testing.assert_allclose(got.loc[keys], expected)
    for context, group in table[table["metric"] == "discrimination_score_l1"].groupby("context"):
        assert group["value"].mean() == pytest.approx(0.5, abs=1e-12), context  # a constant predictor
    np.testing.assert_array_equal(_values(table, "rank"), 0.5)


def test_ceiling_beats_baselines_on_the_simulator(data):
    adata, de, pb = data
    ceiling = M.ceiling(adata, metrics=["pearson_delta", "mse_delta", "discrimination_score_l1"])
    # the training-mean baseline: the context's control plus the mean delta of the context's perturbations
    deltas = vc.pseudobulk.deltas(pb)
    mean_delta = pd.DataFrame(np.asarray(deltas.X)).groupby(deltas.obs["context"].to_numpy()).transform("mean")
    baseline = ad.AnnData(np.asarray(pb[deltas.obs_names].X) - np.asarray(deltas.X) + mean_delta.to_numpy(),
                          obs=deltas.obs.copy(), var=pb.var.copy())
    base = M.evaluate(baseline, adata, observed_de=de, metrics=["pearson_delta", "mse_delta",
                                                                "discrimination_score_l1"], model="mean")
    summary = M.aggregate(pd.concat([ceiling, base])).set_index(["model", "metric"])["mean"]
    assert summary["ceiling", "pearson_delta"] > summary["mean", "pearson_delta"]
    assert summary["ceiling", "mse_delta"] < summary["mean", "mse_delta"]
    assert summary["ceiling", "discrimination_score_l1"] > summary["mean", "discrimination_score_l1"]


@pytest.fixture(scope="module")
def replicate_theory():
    """Many cells per condition, with the simulator's noise-free truth of every condition."""
    adata = vc.loaders.simulate(n_contexts=1, n_perturbations=12, n_combinations=0, n_genes=300,
                                cells_per_condition=120, control_cells=240, seed=3)
    pb = vc.pseudobulk.pseudobulk(adata)
    names = [str(n) for n in adata.uns["simulation"]["truth_conditions"]]
    truth = adata.uns["simulation"]["truth"][[names.index(n) for n in pb.obs_names]].astype(float)
    perturbed = ~pb.obs["is_control"].to_numpy()
    control = np.asarray(pb.X)[pb.obs_names.get_indexer(["C1|control"])]
    true_delta = truth[perturbed] - truth[pb.obs_names.get_indexer(["C1|control"])]
    return adata, pb, truth, control, true_delta, perturbed


def test_noise_free_ceiling_is_what_the_truth_scores(replicate_theory):
    """The ceiling estimates the expected score of a noise-free predictor against the full data: the simulator's
    true pseudobulk for the pseudobulk error, the true delta on top of the observed control (how every baseline
    predicts) for the delta metrics. Split-half values are 4x (squared) / 2x (absolute) the truth's error."""
    adata, pb, truth, control, true_delta, perturbed = replicate_theory
    obs = pb.obs[perturbed].copy()
    on_control = ad.AnnData(control + true_delta, obs=obs, var=pb.var.copy())  # true delta, observed control
    exact = ad.AnnData(truth[perturbed], obs=obs, var=pb.var.copy())  # the true pseudobulk itself
    metrics = ["mse", "mse_delta", "mae_delta", "pearson_delta"]
    ceiling = M.ceiling(adata, metrics=metrics).groupby("metric")["value"].mean()
    raw = M.ceiling(adata, metrics=metrics, noise_free=False).groupby("metric")["value"].mean()
    assert ceiling["mse"] == pytest.approx(_values(M.evaluate(exact, adata, metrics=["mse"]), "mse").mean(), rel=0.1)
    truth_scores = M.evaluate(on_control, adata, metrics=metrics).groupby("metric")["value"].mean()
    for metric, tolerance in [("mse_delta", 0.1), ("mae_delta", 0.05), ("pearson_delta", 0.02)]:
        assert ceiling[metric] == pytest.approx(truth_scores[metric], rel=tolerance), metric
    assert raw["mse_delta"] / ceiling["mse_delta"] == pytest.approx(4.0)
    assert raw["mae_delta"] / ceiling["mae_delta"] == pytest.approx(2.0)


def test_ceiling_refuses_conditions_it_cannot_split(data):
    adata, _, _ = data
    one = adata[~((adata.obs["perturbation"] == "G0002") & (adata.obs["context"] == "C1")).to_numpy()
                | (np.arange(adata.n_obs) == np.flatnonzero((adata.obs["perturbation"] == "G0002").to_numpy())[0])]
    with pytest.raises(VclibInputError, match=r"1 condition\(s\) cannot be split in halves .*'C1\|G0002'.*"
                                              r"conditions=None"):
        M.ceiling(one.copy(), conditions=["C1|G0002"], metrics=["mse"])
    scored = M.ceiling(one.copy(), metrics=["mse"])  # by default every splittable condition, the 1-cell one left out
    assert "G0002" not in set(scored.loc[scored["context"] == "C1", "perturbation"])


def test_reference_perturbed_centroid(data):
    adata, de, pb = data
    table = M.evaluate(pb, adata, observed_de=de, metrics=["pearson_delta"], reference="perturbed_centroid")
    np.testing.assert_allclose(_values(table, "pearson_delta"), 1.0)
    # against the centroid, predicting the control is no longer a zero delta, so correlations are defined
    control = M.evaluate(M.predict_control(adata), adata, observed_de=de, metrics=["pearson_delta"],
                         reference="perturbed_centroid")
    assert np.isfinite(_values(control, "pearson_delta")).all()


def test_model_and_split_columns(data):
    adata, de, pb = data
    table = M.evaluate(pb, adata, observed_de=de, metrics=["mse"], model="m", split="s")
    assert (table["model"] == "m").all() and (table["split"] == "s").all()


def test_cell_eval_layout_is_accepted(data):
    adata, de, pb = data
    one = adata[adata.obs["context"] == "C1"].copy()
    layout = ad.AnnData(one.X, obs=pd.DataFrame(
        {"target_gene": one.obs["perturbation"].astype(str).replace("control", "non-targeting").to_numpy()},
        index=one.obs_names), var=one.var)
    table = M.evaluate(layout, layout, perturbation_key="target_gene", control="non-targeting", context_key=None,
                       metrics=["mse", "discrimination_score_l1"])
    assert (table["context"] == "all").all()
    np.testing.assert_allclose(_values(table, "discrimination_score_l1"), 1.0)


# --- summaries ----------------------------------------------------------------------------------------------

def test_aggregate_ci_equals_scipy_bootstrap_on_the_same_draws():
    values = np.random.default_rng(3).normal(size=23)
    t = pd.DataFrame({"model": "m", "metric": "pearson_delta", "context": "c",
                      "perturbation": [f"p{i}" for i in range(24)], "value": [*values, np.nan], "note": ""})
    s = M.aggregate(t, n_boot=2000, seed=5).iloc[0]
    reference = stats.bootstrap((values,), np.mean, n_resamples=2000, method="percentile", vectorized=True,
                                random_state=M.group_rng(5, ("m", "pearson_delta")))
    assert (s["ci_low"], s["ci_high"]) == pytest.approx(tuple(reference.confidence_interval), rel=1e-12)
    assert s["mean"] == pytest.approx(values.mean()) and s["n"] == 23 and s["n_nan"] == 1


def test_seeds_are_resampled_with_their_perturbation():
    """A second seed that repeats the first adds no information: n, mean and CI stay those of one seed."""
    rng = np.random.default_rng(4)
    one = pd.DataFrame({"model": "m", "split": "s", "metric": "mse", "context": "c", "fold": "0", "seed": 0,
                        "perturbation": [f"p{i}" for i in range(20)], "value": rng.normal(size=20)})
    two = pd.concat([one, one.assign(seed=1)])
    a, b = M.aggregate(one).iloc[0], M.aggregate(two).iloc[0]
    assert b["n"] == a["n"] == 20 and b["n_rows"] == 40
    assert (b["mean"], b["ci_low"], b["ci_high"]) == pytest.approx((a["mean"], a["ci_low"], a["ci_high"]))
    # a row-level bootstrap would count 40 perturbations and narrow the CI by about sqrt(2)
    naive = stats.bootstrap((two["value"].to_numpy(),), np.mean, method="percentile", random_state=0)
    assert naive.confidence_interval.high - naive.confidence_interval.low < 0.8 * (a["ci_high"] - a["ci_low"])


def test_a_groups_ci_does_not_depend_on_the_other_groups():
    rng = np.random.default_rng(5)
    base = pd.DataFrame({"model": "a", "metric": "mse", "context": "c", "perturbation": list("vwxyz"),
                         "value": rng.normal(size=5)})
    alone = M.aggregate(base).iloc[0]
    crowded = M.aggregate(pd.concat([base.assign(model="0_first"), base, base.assign(model="b")]))
    assert crowded.set_index("model").loc["a", ["ci_low", "ci_high"]].tolist() == [alone["ci_low"], alone["ci_high"]]


def test_two_seed_compare_pairs_on_seed_and_counts_perturbations():
    rng = np.random.default_rng(6)
    rows = []
    for seed in (0, 1):
        base = rng.normal(size=20)
        for model, shift in (("b", 0.0), ("a", 1.0 + seed)):  # seed 1's model is 2 better, seed 0's 1
            rows.append(pd.DataFrame({"model": model, "split": "s", "fold": "0", "seed": seed,
                                      "metric": "pearson_delta", "context": "c",
                                      "perturbation": [f"p{i}" for i in range(20)],
                                      "value": base + shift}))
    row = M.compare(pd.concat(rows), baseline="b").iloc[0]
    # paired within a seed the difference is exactly 1 or 2 (mean 1.5); pairing across seeds would add noise
    assert row["n"] == 20 and row["n_pairs"] == 40
    assert row["difference"] == pytest.approx(1.5)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((1.5, 1.5))


def test_compare_direction_follows_the_registry():
    t = pd.DataFrame({"model": ["a"] * 5 + ["b"] * 5, "metric": "pearson_delta", "context": "c",
                      "perturbation": list("vwxyz") * 2, "value": [0.2, 0.25, 0.3, 0.2, 0.22] + [0.8] * 5})
    row = M.compare(t, baseline="b").iloc[0]
    assert row["difference"] < 0 and row["better"] == "no"


def _scores(values: dict, n: int = 8, noise: float = 0.01) -> pd.DataFrame:
    rng = np.random.default_rng(9)
    return pd.concat([pd.DataFrame({"model": m, "split": "s", "metric": metric, "context": "c",
                                    "perturbation": [f"p{i}" for i in range(n)],
                                    "value": v + noise * rng.normal(size=n)})
                      for (m, metric), v in values.items()], ignore_index=True)


def test_calibrate_is_not_clipped_and_reported_only_where_the_ceiling_is_clearly_above():
    t = _scores({("worse", "mse"): 3.0, ("b", "mse"): 2.0, ("ceiling", "mse"): 1.0})
    row = M.calibrate(t, baseline="b").iloc[0]
    assert row["calibrated"] == pytest.approx((row["mean"] - row["baseline_mean"])
                                              / (row["ceiling_mean"] - row["baseline_mean"]))
    assert row["calibrated"] == pytest.approx(-1.0, abs=0.05) and row["calibration_note"] == ""
    # the ceiling below the baseline: (u - b) / (c - b) would flip sign, so it is not reported
    flipped = M.calibrate(_scores({("m", "pearson_delta"): 0.3, ("b", "pearson_delta"): 0.5,
                                   ("ceiling", "pearson_delta"): 0.45}), baseline="b").iloc[0]
    assert np.isnan(flipped["calibrated"])
    assert flipped["calibration_note"].startswith("not calibratable here: the ceiling is not clearly better than b")
    few = M.calibrate(_scores({("m", "mse"): 1.5, ("b", "mse"): 2.0, ("ceiling", "mse"): 1.0}, n=3), baseline="b")
    assert few["calibration_note"].iloc[0] == "not calibratable here: too few conditions (n = 3)"


def test_noise_free_corrections_closed_form():
    t = pd.DataFrame({"metric": ["pearson_delta", "mse", "mae", "discrimination_score_l1", "pearson_delta",
                                 "pearson_delta", "r2_mean"],
                      "value": [0.5, 1.0, 1.0, 0.9, -1.0, -0.5, 0.64], "note": ""})
    values, notes = M.to_noise_free(t)
    np.testing.assert_allclose(values.to_numpy()[[0, 1, 2, 3, 5, 6]],
                               [np.sqrt(2 * 0.5 / 1.5), 0.25, 0.5, 0.9, 0.0, 2 * 0.8 / 1.8])
    assert np.isnan(values.iloc[4]) and notes.iloc[4] == "split-half r = -1: Spearman-Brown undefined"
    assert notes.iloc[5].startswith("split-half r <= 0")  # set to 0, and said so
    assert (notes.iloc[[0, 1, 2, 3, 6]] == "").all()


# --- bad input ----------------------------------------------------------------------------------------------

def test_genes_differ(data):
    adata, _, pb = data
    pred = pb[:, pb.var_names[:-1]].copy()
    with pytest.raises(VclibInputError, match=r"genes differ: 1 observed genes not predicted \(e.g. 'G0099'\)"):
        M.evaluate(pred, adata)


def test_reordered_genes_are_aligned_by_name(data):
    adata, de, pb = data
    shuffled = pb[:, pb.var_names[::-1]].copy()
    a = M.evaluate(pb, adata, observed_de=de, metrics=["mse", "pearson_delta", "overlap_at_N"])
    b = M.evaluate(shuffled, adata, observed_de=de, metrics=["mse", "pearson_delta", "overlap_at_N"])
    pd.testing.assert_frame_equal(a, b)


def test_nan_predictions_name_the_conditions(data):
    adata, _, pb = data
    pred = pb.copy()
    pred.X[2, 5] = np.nan
    with pytest.raises(VclibInputError, match=rf"predicted values hold NaN or inf in 1 condition\(s\): "
                                              rf"'{pred.obs_names[2]}'"):
        M.evaluate(pred, adata)


def test_predicted_condition_not_observed(data):
    adata, _, pb = data
    extra = ad.AnnData(np.asarray(pb.X[:1]), obs=pd.DataFrame({"perturbation": ["NOVEL"], "context": ["C1"]},
                                                              index=["x"]), var=pb.var.copy())
    with pytest.raises(VclibInputError, match=r"1 predicted condition\(s\) are not in the observed data: "
                                              r"'C1\|NOVEL'"):
        M.evaluate(ad.concat([pb, extra], merge="same"), adata)


def test_observed_condition_not_predicted(data):
    adata, _, pb = data
    pred = pb[pb.obs_names != pb.obs_names[~pb.obs["is_control"].to_numpy()][0]].copy()
    with pytest.raises(VclibInputError, match=r"1 observed condition\(s\) have no prediction.*pass conditions="):
        M.evaluate(pred, adata)
    subset = [n for n in pred.obs_names if not n.endswith("|control")]
    assert len(M.evaluate(pred, adata, conditions=subset, metrics=["mse"])) == len(subset)


def test_context_without_control_cells(data):
    adata, _, pb = data
    no_control = adata[~((adata.obs["context"] == "C2") & (adata.obs["perturbation"] == "control")).to_numpy()]
    with pytest.raises(VclibInputError, match=r"context 'C2' has no observed control cells"):
        M.evaluate(pb, no_control.copy())


def test_counts_where_log1p_is_expected(data):
    adata, _, pb = data
    counts = adata.copy()
    counts.X = counts.layers["counts"]
    with pytest.raises(VclibInputError, match=r"predicted values look like raw counts.*sc.pp.log1p"):
        M.evaluate(counts, adata)


def test_unknown_metric_lists_valid_ones(data):
    adata, _, pb = data
    with pytest.raises(VclibInputError, match=r"unknown metric\(s\) \['pds'\]; valid: mse, mae"):
        M.evaluate(pb, adata, metrics=["pds"])


# --- PDS exclusion, R² of mean expression, duplicated predictions --------------------------------------------

def test_constant_predictor_scores_one_half_with_the_default_exclusion(data):
    adata, de, pb = data
    constant = M.predict_control(adata)
    for exclude in ("targets", None):
        table = M.evaluate(constant, adata, observed_de=de, exclude=exclude,
                           metrics=["discrimination_score_l1", "discrimination_score_l2"])
        assert table.groupby(["context", "metric"])["value"].mean().eq(0.5).all(), exclude


def test_no_gain_from_predicting_the_own_targets_knockdown(data):
    """A prediction that is the control except for its own target gene's observed change: with the default
    exclusion its target carries no information (PDS of a constant, 0.5); without any exclusion it would win."""
    adata, de, pb = data
    deltas = vc.pseudobulk.deltas(pb)
    cheat = M.predict_control(adata)
    genes = list(pb.var_names)
    for i, (ctx, pert) in enumerate(zip(cheat.obs["context"], cheat.obs["perturbation"], strict=True)):
        for t in pert.split("+"):
            if t in genes:
                cheat.X[i, genes.index(t)] += deltas[f"{ctx}|{pert}"].X[0, genes.index(t)]
    fair = _values(M.evaluate(cheat, adata, observed_de=de, metrics=["discrimination_score_l1"]),
                   "discrimination_score_l1")
    unfair = _values(M.evaluate(cheat, adata, observed_de=de, metrics=["discrimination_score_l1"], exclude=None),
                     "discrimination_score_l1")
    assert fair.mean() == pytest.approx(0.5, abs=1e-12)
    assert unfair.mean() > 0.55  # the knockdown of its own target alone tells perturbations apart


def test_r2_of_mean_expression_closed_form(data):
    adata, de, pb = data
    names = [n for n in pb.obs_names if not n.endswith("|control")]
    rng = np.random.default_rng(12)
    pred = ad.AnnData(np.asarray(pb[names].X) + rng.normal(scale=0.3, size=(len(names), pb.n_vars)),
                      obs=pb[names].obs.copy(), var=pb.var.copy())
    table = M.evaluate(pred, adata, observed_de=de, metrics=["r2_mean", "r2_mean_top100"], top_r2=10)
    for i, name in enumerate(names):
        o, p = np.asarray(pb[name].X).ravel(), pred.X[i]
        assert _values(table, "r2_mean")[i] == pytest.approx(np.corrcoef(p, o)[0, 1] ** 2, rel=1e-12)
        ctx = name.split("|")[0]
        top = np.argsort(-np.abs(o - np.asarray(pb[f"{ctx}|control"].X).ravel()), kind="stable")[:10]
        assert _values(table, "r2_mean_top100")[i] == pytest.approx(np.corrcoef(p[top], o[top])[0, 1] ** 2,
                                                                    rel=1e-12)
    perfect = M.evaluate(pb, adata, observed_de=de, metrics=["r2_mean", "r2_mean_top100"])
    np.testing.assert_allclose(perfect["value"], 1.0)


def test_a_pseudobulk_with_a_duplicated_condition_is_refused(data):
    adata, de, pb = data
    twice = ad.concat([pb, pb[5:6]])
    with pytest.raises(VclibInputError,
                       match=rf"1 predicted condition\(s\) have more than one row \('{pb.obs_names[5]}'\)"
                                              r".*predicted_level='cells'"):
        M.evaluate(twice, adata, observed_de=de)


def test_undefined_values_say_why(data):
    adata, de, pb = data
    table = M.evaluate(M.predict_control(adata), adata, observed_de=de, metrics=["pearson_delta", "mse"])
    assert (table.loc[table["metric"] == "pearson_delta", "note"].str.startswith("the predicted values are "
                                                                                 "constant")).all()
    assert (table.loc[table["metric"] == "mse", "note"] == "").all()
    one = adata[(adata.obs["perturbation"].isin(["control", "G0001"])).to_numpy()].copy()
    pds = M.evaluate(vc.pseudobulk.pseudobulk(one), one, metrics=["discrimination_score_l1"])
    assert pds["value"].isna().all()
    assert (pds["note"] == "one perturbation in its context: nothing to tell it apart from").all()
    summary = M.aggregate(pds).iloc[0]
    assert summary["n"] == 0 and summary["note"] == "one perturbation in its context: nothing to tell it apart from"


def test_beyond_ceiling_names_models_above_it_with_the_reason():
    perts = [f"p{i}" for i in range(12)]
    rng = np.random.default_rng(0)
    rows = [pd.DataFrame({"model": model, "split": "s", "metric": "pearson_delta", "context": "c",
                          "perturbation": perts, "value": level + rng.normal(0, 0.01, len(perts))})
            for model, level in [("ceiling", 0.6), ("above", 0.8), ("below", 0.4)]]
    out = vc.metrics.beyond_ceiling(pd.concat(rows, ignore_index=True))
    assert out["model"].tolist() == ["above"]  # "below" is under the ceiling: not listed
    assert out["difference"].iloc[0] == pytest.approx(0.2, abs=0.02)
    assert "noisy halves" in out["why"].iloc[0]  # pearson_delta has a full-size correction
