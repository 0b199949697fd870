"""Context coverage: tables, E-distance against a naive computation, transferability against the simulator's
truth and hand computations, signatures, next experiments, bad input, plots, the widget and notebook 01."""

from __future__ import annotations

import warnings
from itertools import combinations, permutations

import anndata as ad
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, real_file
from scipy import stats
from sklearn.metrics import pairwise_distances

import vclib as vc
from vclib.schema import VclibInputError

matplotlib.use("Agg")

KANG = "kang2018_ifnb_pbmc_muscat_subset/kang2018_muscat_example_sce.h5ad"
GBM = "zhao2021_glioblastoma_panobinostat_lemur_subset/zhao2021_glioblastoma_panobinostat.h5ad"
NEURIPS = "sigrecon_context_signatures/neurips2023_pbmc_drugs_rank_signatures.h5ad"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def counts():
    """A hand-made coverage table: A measured p1-p3, B p1-p2, C p4 only (1 cell: below min_cells=2)."""
    table = pd.DataFrame({"A": [50, 10, 10, 10, 0], "B": [40, 10, 10, 0, 0], "C": [5, 0, 0, 0, 1]},
                         index=["control", "p1", "p2", "p3", "p4"])
    table.index.name, table.columns.name = "perturbation", "context"
    return table


def _summary(rows):
    """A summarize_transfer-like table from (a, b, n_shared, transfer, chance)."""
    return pd.DataFrame(rows, columns=["context_a", "context_b", "n_shared", "transfer", "chance"])


# ---------------------------------------------------------------- tables


def test_context_and_perturbation_summaries(counts):
    ctx = vc.coverage.summarize_contexts(counts)
    assert ctx.loc["A"].to_dict() == {"control_cells": 50, "perturbed_cells": 30, "n_perturbations": 3,
                                      "n_shared": 2, "n_unique": 1, "fraction_shared": 0.667}
    assert ctx.loc["C", "n_perturbations"] == 1 and ctx.loc["C", "n_shared"] == 0
    assert vc.coverage.summarize_contexts(counts, min_cells=2).loc["C", "n_perturbations"] == 0
    per = vc.coverage.summarize_perturbations(counts)
    assert per.loc["p1", "n_contexts"] == 2 and per.loc["p1", "contexts"] == "A, B"
    assert per.loc["p4", "cells"] == 1
    assert "control" not in per.index


def test_jaccard_overlap(counts):
    overlap = vc.coverage.context_overlap(counts)
    assert overlap.loc["A", "B"] == pytest.approx(2 / 3)
    assert overlap.loc["A", "C"] == 0
    assert (np.diag(overlap) == 1).all()
    assert np.isnan(vc.coverage.context_overlap(counts, min_cells=2).loc["C", "C"])


def test_overview_explains_single_context(sim):
    one = sim[sim.obs["context"] == "C1"].copy()
    text = vc.coverage.overview(vc.coverage.cell_counts(one))
    assert "needs at least 2" in text and "'C1'" in text
    assert "3 contexts" in vc.coverage.overview(vc.coverage.cell_counts(sim))


# ---------------------------------------------------------------- E-distance


def _naive_edistance(X, Y, metric, sample_correct=False):
    def within(Z):
        d = pairwise_distances(Z, Z, metric=metric)
        n = len(Z)
        return d.sum() / (n * (n - 1) if sample_correct else n**2)

    return 2 * pairwise_distances(X, Y, metric=metric).mean() - within(X) - within(Y)


@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean"])
@pytest.mark.parametrize("sample_correct", [False, True])
def test_edistance_matches_naive_pairwise(metric, sample_correct):
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (40, 5)), rng.normal(0.5, 2, (25, 5)), rng.normal(-1, 0.5, (33, 5))])
    groups = np.repeat(["a", "b", "c"], [40, 25, 33])
    E = vc.coverage.edistance(X, groups, metric=metric, sample_correct=sample_correct)
    for g, h in [("a", "b"), ("a", "c"), ("b", "c")]:
        expected = _naive_edistance(X[groups == g], X[groups == h], metric, sample_correct)
        assert E.loc[g, h] == pytest.approx(expected, rel=1e-9)
        assert E.loc[h, g] == E.loc[g, h]
    assert (np.diag(E) == 0).all()


def _scperturb_edist(X, Y):
    """scPerturb's ``edist`` (scperturb 0.1.0 defaults: squared Euclidean, ``sample_correct=True``) written out as
    loops over pairs: between-group mean over all pairs, within-group means over the n(n - 1) ordered pairs of
    distinct cells."""
    def d(x, y):
        return float(np.sum((x - y) ** 2))

    between = sum(d(x, y) for x in X for y in Y) / (len(X) * len(Y))
    within = [sum(d(Z[i], Z[j]) for i in range(len(Z)) for j in range(len(Z)) if i != j) / (len(Z) * (len(Z) - 1))
              for Z in (X, Y)]
    return 2 * between - within[0] - within[1]


def _pertpy_edistance(X, Y):
    """pertpy 1.0's ``Edistance``: Euclidean distances, plain means over all pairs (self-pairs included)."""
    def mean_d(A, B):
        return sum(float(np.sqrt(np.sum((a - b) ** 2))) for a in A for b in B) / (len(A) * len(B))

    return 2 * mean_d(X, Y) - mean_d(X, X) - mean_d(Y, Y)


def test_default_edistance_is_scperturbs_edist():
    rng = np.random.default_rng(5)
    X = np.vstack([rng.normal(0, 1, (12, 4)), rng.normal(0.3, 2, (7, 4)), rng.normal(-1, 0.5, (20, 4))])
    groups = np.repeat(["a", "b", "c"], [12, 7, 20])
    E = vc.coverage.edistance(X, groups)
    pertpy = vc.coverage.edistance(X, groups, metric="euclidean", sample_correct=False)
    for g, h in [("a", "b"), ("a", "c"), ("b", "c")]:
        A, B = X[groups == g], X[groups == h]
        assert E.loc[g, h] == pytest.approx(_scperturb_edist(A, B), rel=1e-6)
        closed = (2 * np.sum((A.mean(0) - B.mean(0)) ** 2) - 2 * np.trace(np.cov(A.T, bias=True)) / (len(A) - 1)
                  - 2 * np.trace(np.cov(B.T, bias=True)) / (len(B) - 1))
        assert E.loc[g, h] == pytest.approx(closed, rel=1e-9)
        assert pertpy.loc[g, h] == pytest.approx(_pertpy_edistance(A, B), rel=1e-6)


def test_sample_correction_removes_the_small_group_bias():
    rng = np.random.default_rng(6)  # 200 draws of two small samples of one population: true E-distance 0
    corrected, uncorrected = [], []
    for _ in range(200):
        X = rng.normal(0, 1, (8, 3))
        groups = np.repeat(["x", "y"], [3, 5])
        corrected.append(vc.coverage.edistance(X, groups).loc["x", "y"])
        uncorrected.append(vc.coverage.edistance(X, groups, sample_correct=False).loc["x", "y"])
    # expectation of the uncorrected value: 2 tr Σ (1/3 + 1/5) = 3.2; of the corrected: 0
    assert abs(np.mean(corrected)) < 4 * np.std(corrected) / np.sqrt(200)
    assert np.mean(uncorrected) == pytest.approx(2 * 3 * (1 / 3 + 1 / 5), rel=0.2)
    assert min(corrected) < 0  # an unbiased estimate of 0 goes below it


def test_sqeuclidean_edistance_is_twice_the_squared_mean_distance():
    rng = np.random.default_rng(1)
    X, Y = rng.normal(0, 1, (30, 4)), rng.normal(1, 3, (50, 4))
    E = vc.coverage.edistance(np.vstack([X, Y]), np.repeat(["x", "y"], [30, 50]), sample_correct=False)
    assert E.loc["x", "y"] == pytest.approx(2 * np.sum((X.mean(0) - Y.mean(0)) ** 2))


def test_edistance_bad_input():
    with pytest.raises(VclibInputError, match="metric='cosine' is not one of"):
        vc.coverage.edistance(np.zeros((4, 2)), np.array(list("aabb")), metric="cosine")
    with pytest.raises(VclibInputError, match="give one per row"):
        vc.coverage.edistance(np.zeros((4, 2)), np.array(list("aab")))
    with pytest.raises(VclibInputError, match="group 'b' has a single row.*or pass sample_correct=False"):
        vc.coverage.edistance(np.zeros((3, 2)), np.array(list("aab")))
    assert vc.coverage.edistance(np.zeros((3, 2)), np.array(list("aab")), sample_correct=False).loc["a", "b"] == 0


def test_control_distances_pairs_and_unchanged_input(sim):
    before_obs, before_X = sim.obs.copy(), sim.X.copy()
    table = vc.coverage.control_distances(sim, n_pcs=10)
    assert table[["context_a", "context_b"]].values.tolist() == [["C1", "C2"], ["C1", "C3"], ["C2", "C3"]]
    assert (table["edistance"] > 0).all() and table["correlation_distance"].between(0, 2).all()
    assert (table["n_control_a"] == 40).all()
    pd.testing.assert_frame_equal(sim.obs, before_obs)
    assert (sim.X != before_X).nnz == 0


def test_control_distances_use_an_exact_pca_of_pooled_controls(sim):
    from sklearn.decomposition import PCA

    table = vc.coverage.control_distances(sim, n_pcs=5, n_top_genes=60)
    controls = sim[sim.obs["perturbation"] == "control"]
    X = controls.X.toarray()
    top = np.sort(np.argsort(-X.var(axis=0), kind="stable")[:60])
    scores = PCA(n_components=5, svd_solver="full").fit_transform(X[:, top])
    E = vc.coverage.edistance(scores, controls.obs["context"].astype(str).to_numpy())
    np.testing.assert_allclose(table["edistance"], [E.loc["C1", "C2"], E.loc["C1", "C3"], E.loc["C2", "C3"]],
                               rtol=1e-6)
    pb = np.array([X[(controls.obs["context"] == c).to_numpy()].mean(axis=0) for c in ["C1", "C2"]])
    assert table["correlation_distance"].iloc[0] == pytest.approx(1 - np.corrcoef(pb)[0, 1])


def test_context_with_few_controls_is_named_and_skipped(sim):
    drop = sim.obs.index[(sim.obs["context"] == "C3") & (sim.obs["perturbation"] == "control")][5:]
    few = sim[~sim.obs.index.isin(drop)].copy()
    with pytest.warns(UserWarning, match=r"'C3' has 5 control cells \(< min_cells=10\)"):
        table = vc.coverage.control_distances(few, n_pcs=10, min_cells=10)
    assert len(table) == 3  # kept, not dropped
    c3 = table[(table["context_a"] == "C3") | (table["context_b"] == "C3")]
    assert c3["edistance"].isna().all() and c3["note"].str.contains("5 control cells").all()
    assert table.loc[(table["context_a"] == "C1") & (table["context_b"] == "C2"), "edistance"].notna().all()


def test_single_context_gives_empty_pairwise_tables(sim):
    one = sim[sim.obs["context"] == "C1"].copy()
    assert vc.coverage.control_distances(one).empty
    transfer = vc.coverage.transferability(one)
    assert transfer.empty and "r_corrected" in transfer
    assert vc.coverage.summarize_transfer(transfer).empty
    plan = vc.coverage.next_experiments(vc.coverage.cell_counts(one), vc.coverage.summarize_transfer(transfer))
    assert plan.empty


def test_distances_and_reliability_of_signatures_are_skipped_with_the_reason():
    sig = ad.AnnData(np.array([[1.0, 2, 3], [3, 2, 1]]),
                     obs=pd.DataFrame({"perturbation": ["d", "d"], "context": ["a", "b"]}, index=["0", "1"]))
    sig = vc.loaders.read(sig, values="signature")
    for table, what in [(vc.coverage.control_distances(sig), "need control cells"),
                        (vc.coverage.reliability(sig), "needs cells")]:
        assert table.empty and what in table.attrs["skipped"][0]["reason"]


# ---------------------------------------------------------------- reliability and transferability


def test_reliability_is_spearman_brown_of_split_half(sim):
    table = vc.coverage.reliability(sim, n_splits=2)
    assert len(table) == len(vc.pseudobulk.deltas(vc.pseudobulk.pseudobulk(sim)))
    r = table["split_half_r"]
    np.testing.assert_allclose(table["reliability"], 2 * r / (1 + r))
    assert table["reliability"].median() > 0.5


def test_split_half_r_by_hand(sim):
    """reliability() for a few conditions, recomputed: the halves drawn as it draws them, each half's delta
    against its own half of the context's controls, Pearson over genes, averaged over splits, Spearman-Brown."""
    n_splits, seed = 2, 3
    table = vc.coverage.reliability(sim, n_splits=n_splits, seed=seed)
    X = sim.X.toarray()
    keys = (sim.obs["context"].astype(str) + "|" + sim.obs["perturbation"].astype(str)).to_numpy()
    rng = np.random.default_rng(seed)  # reliability draws one seed per split from its own generator
    halves = []
    for _ in range(n_splits):
        split_seed = int(rng.integers(2**32))
        split_rng, half = np.random.default_rng(split_seed), np.zeros(len(keys), dtype=int)
        for key in np.unique(keys):  # conditions in sorted order; each one's cells shuffled, the first n // 2 in half 0
            members = split_rng.permutation(np.flatnonzero(keys == key))
            half[members[len(members) // 2:]] = 1
        np.testing.assert_array_equal(half, vc.pseudobulk.half_labels(sim, seed=split_seed))
        halves.append(half)
    for condition in table.index[::7][:3]:
        context = condition.split("|")[0]
        rs = []
        for half in halves:
            d = [X[(keys == condition) & (half == h)].mean(0) - X[(keys == f"{context}|control") & (half == h)].mean(0)
                 for h in (0, 1)]
            rs.append(np.corrcoef(d[0], d[1])[0, 1])
        r = np.mean(rs)
        # float32 sums in the prepared observation: agreement to single precision
        assert table.loc[condition, "split_half_r"] == pytest.approx(r, rel=1e-5)
        assert table.loc[condition, "reliability"] == pytest.approx(2 * r / (1 + r), rel=1e-5)


def test_transferability_matches_hand_computation(sim):
    rel = vc.coverage.reliability(sim)
    table = vc.coverage.transferability(sim, reliabilities=rel)
    d = vc.pseudobulk.deltas(vc.pseudobulk.pseudobulk(sim))
    row = table.iloc[0]
    a, b, p = row["context_a"], row["context_b"], row["perturbation"]
    x, y = np.asarray(d[f"{a}|{p}"].X).ravel(), np.asarray(d[f"{b}|{p}"].X).ravel()
    assert row["r"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    rel_a, rel_b = rel.loc[f"{a}|{p}", "reliability"], rel.loc[f"{b}|{p}", "reliability"]
    assert row["r_corrected"] == pytest.approx(row["r"] / np.sqrt(rel_a * rel_b))
    shared = table.loc[(table["context_a"] == a) & (table["context_b"] == b), "perturbation"]
    others = [q for q in shared if q != p]
    mismatched = [np.corrcoef(x, np.asarray(d[f"{b}|{q}"].X).ravel())[0, 1] for q in others]
    assert row["chance"] == pytest.approx(np.mean(mismatched))
    assert row["n_mismatched"] == len(others)
    weights = [np.sqrt(rel_a * rel.loc[f"{b}|{q}", "reliability"]) for q in others]
    ok = [w > 0 for w in weights]  # NaN (reliability ≤ 0) compares False
    assert row["chance_corrected"] == pytest.approx(np.sum(np.array(mismatched)[ok]) / np.sum(np.array(weights)[ok]))


def test_corrections_above_one_are_counted_not_clipped():
    transfer = pd.DataFrame({"context_a": "A", "context_b": "B", "perturbation": ["p", "q"], "r": [0.9, 0.5],
                             "reliability_a": [0.7, 0.9], "reliability_b": [0.8, 0.9],
                             "r_corrected": [0.9 / np.sqrt(0.56), 0.5 / 0.9], "chance": [0.1, 0.1],
                             "chance_corrected": [0.12, 0.12], "chance_weight": [0.8, 0.8], "n_mismatched": 1,
                             "n_genes": 10, "method": "pearson"})
    row = vc.coverage.summarize_transfer(transfer).iloc[0]
    assert transfer["r_corrected"].max() > 1  # kept as it is
    assert row["same_corrected"] == pytest.approx((0.9 + 0.5) / (np.sqrt(0.56) + 0.9))  # Σ r / Σ √(rel·rel)
    assert row["n_corrected_above_1"] == 1 and "not clipped" in row["note"]
    assert row["kind"] == "corrected" and row["beyond_chance"] == pytest.approx(row["transfer"] - 0.12)


@pytest.fixture(scope="module")
def divergence_sweep():
    out = {}
    for d in (0.0, 0.5, 1.0):
        adata = vc.loaders.simulate(n_contexts=3, n_perturbations=30, n_combinations=0, n_genes=200,
                                    cells_per_condition=50, control_cells=200, context_divergence=d, seed=1)
        out[d] = vc.coverage.summarize_transfer(vc.coverage.true_transfer(adata, vc.coverage.transferability(adata)))
    return out


def test_transfer_falls_with_divergence_and_tracks_the_truth(divergence_sweep):
    means = {d: s["transfer"].mean() for d, s in divergence_sweep.items()}
    assert means[0.0] > means[0.5] > means[1.0]
    for s in divergence_sweep.values():
        np.testing.assert_allclose(s["same_corrected"], s["true_transfer_weighted"], atol=0.05)
        np.testing.assert_allclose(s["same_corrected"], s["true_transfer"], atol=0.2)
        assert (s["same_raw"] < s["true_transfer_weighted"] + 0.02).all()  # noise only lowers the raw correlation
        assert (s["chance"].abs() < 0.1).all()


def test_true_transfer_needs_the_simulator(sim):
    plain = sim.copy()
    del plain.uns["simulation"]
    with pytest.raises(VclibInputError, match="no ground truth"):
        vc.coverage.true_transfer(plain)
    table = vc.coverage.true_transfer(sim)
    assert {"r_true", "mechanism_overlap"} <= set(table.columns)


def _signatures(values, contexts, perturbations):
    obs = pd.DataFrame({"perturbation": perturbations, "context": contexts},
                       index=[f"{c}|{p}" for c, p in zip(contexts, perturbations, strict=True)])
    return vc.loaders.read(ad.AnnData(np.asarray(values, dtype=np.float32), obs=obs), values="signature")


def test_signatures_use_rank_correlation_over_genes_ranked_in_both():
    rng = np.random.default_rng(3)
    base = rng.permutation(40).astype(float) + 1
    rows = []
    for _ in range(2):
        for k in range(4):
            v = base + rng.normal(0, 8 + 4 * k, 40)
            v[rng.choice(40, 10, replace=False)] = np.nan
            rows.append(v)
    sig = _signatures(rows, ["a"] * 4 + ["b"] * 4, [f"d{k}" for k in range(4)] * 2)
    table = vc.coverage.transferability(sig, n_mismatched=2, seed=0)
    assert (table["method"] == "spearman").all() and table["reliability_a"].isna().all()
    x, y = np.asarray(sig.X[0], float), np.asarray(sig.X[4], float)
    keep = np.isfinite(x) & np.isfinite(y)
    assert table.iloc[0]["r"] == pytest.approx(stats.spearmanr(x[keep], y[keep])[0])
    assert table.iloc[0]["n_genes"] == keep.sum()
    assert (table["n_mismatched"] == 2).all()
    row = vc.coverage.summarize_transfer(table).iloc[0]
    assert row["kind"] == "raw" and "uncorrected" in row["note"]


def test_bad_transfer_input(sim):
    with pytest.raises(VclibInputError, match="method='kendall' is not one of"):
        vc.coverage.transferability(sim, method="kendall")
    dup = _signatures([[1, 2, 3], [1, 2, 3], [3, 2, 1]], ["a", "a", "b"], ["d", "e", "d"])
    dup.obs["perturbation"] = ["d", "d", "d"]
    with pytest.raises(VclibInputError, match="more than one signature"):
        vc.coverage.transferability(dup)


def _pairs(distance, transfer):
    """A distance_vs_transfer-like table from {(a, b): value} dictionaries over the same pairs."""
    rows = [(a, b, distance[(a, b)], transfer[(a, b)]) for a, b in distance]
    return pd.DataFrame(rows, columns=["context_a", "context_b", "edistance", "transfer"])


def _mantel_by_hand(pairs, column="edistance"):
    """Spearman ρ over pairs and its exact permutation p-value: every relabelling of the contexts of the
    distances, each correlated (scipy) over the pairs where both values are defined."""
    ok = pairs.dropna(subset=[column, "transfer"])
    names = sorted(set(ok["context_a"]) | set(ok["context_b"]))
    dist = {frozenset((a, b)): v for a, b, v in zip(ok["context_a"], ok["context_b"], ok[column], strict=True)}
    rho = stats.spearmanr(ok[column], ok["transfer"])[0]
    null = []
    for order in permutations(names):
        relabel = dict(zip(names, order, strict=True))
        x = np.array([dist.get(frozenset((relabel[a], relabel[b])), np.nan)
                      for a, b in zip(ok["context_a"], ok["context_b"], strict=True)])
        keep = np.isfinite(x)
        null.append(stats.spearmanr(x[keep], ok["transfer"].to_numpy()[keep])[0])
    null = np.array(null)
    return rho, np.mean(np.abs(null) >= abs(rho) - 1e-12)


def _random_pairs(k, seed, missing=0):
    rng = np.random.default_rng(seed)
    where = rng.normal(size=(k, 2))
    names = [f"c{i}" for i in range(k)]
    d = {(names[i], names[j]): float(np.sum((where[i] - where[j]) ** 2)) for i, j in combinations(range(k), 2)}
    t = {ab: -v + rng.normal(0, 1.5) for ab, v in d.items()}
    for ab in list(t)[:missing]:
        t[ab] = np.nan
    return _pairs(d, t)


@pytest.mark.parametrize("missing", [0, 2])
def test_rank_correlation_p_value_is_the_exact_mantel_test(missing):
    pairs = _random_pairs(5, seed=1, missing=missing)
    row = vc.coverage.rank_correlation(pairs, distances=("edistance",)).iloc[0]
    rho, p = _mantel_by_hand(pairs)
    assert row["spearman_rho"] == pytest.approx(rho)
    assert row["p_value"] == pytest.approx(p)
    assert row["exact"] and row["n_permutations"] == 119 and row["n_contexts"] == 5
    assert row["n_pairs"] == 10 - missing
    assert "permutes the context labels" in row["reading"] and "120 orderings" in row["reading"]


def test_rank_correlation_random_relabellings_approach_the_exact_p():
    pairs = _random_pairs(6, seed=2)
    _, exact = _mantel_by_hand(pairs)
    table = vc.coverage.rank_correlation(pairs, distances=("edistance",), n_permutations=300, seed=4)
    row = table.iloc[0]
    assert not row["exact"] and row["n_permutations"] == 300  # 6! = 720 orderings > 301: drawn at random
    assert abs(row["p_value"] - exact) < 4 * np.sqrt(exact * (1 - exact) / 300) + 1 / 301
    assert row["p_value"] >= 1 / 301 and (row["p_value"] * 301) == pytest.approx(round(row["p_value"] * 301))
    again = vc.coverage.rank_correlation(pairs, distances=("edistance",), n_permutations=300, seed=4)
    pd.testing.assert_frame_equal(table, again)


def test_pairs_sharing_an_odd_context_are_not_independent_evidence():
    rng = np.random.default_rng(0)  # F is far from all others and transfers badly; among the rest, noise only
    names = list("ABCDEF")
    d, t = {}, {}
    for a, b in combinations(names, 2):
        far = "F" in (a, b)
        d[(a, b)] = (10 if far else 1) + rng.uniform(0, 1)
        t[(a, b)] = (0.1 if far else 0.6) + rng.uniform(0, 0.3)
    pairs = _pairs(d, t)
    independent = stats.spearmanr(pairs["edistance"], pairs["transfer"])[1]
    row = vc.coverage.rank_correlation(pairs, distances=("edistance",)).iloc[0]
    assert independent < 0.01  # the textbook p-value counts 15 pairs as independent
    assert row["p_value"] == pytest.approx(_mantel_by_hand(pairs)[1])
    assert row["p_value"] > 0.05 and "no clear relation" in row["reading"]


def test_rank_correlation_readings_and_bad_input():
    few = _pairs({("a", "b"): 1.0, ("a", "c"): 2.0, ("b", "c"): 3.0}, {("a", "b"): 0.9, ("a", "c"): 0.5,
                                                                      ("b", "c"): 0.1})
    assert "too few" in vc.coverage.rank_correlation(few, distances=("edistance",)).iloc[0]["reading"]
    where = {"a": 0.0, "b": 1.0, "c": 3.0, "d": 7.0, "e": 8.0}  # on a line: the distance order fixes the labels
    d = {(a, b): abs(where[a] - where[b]) for a, b in combinations(where, 2)}
    good = vc.coverage.rank_correlation(_pairs(d, {ab: -v for ab, v in d.items()}), distances=("edistance",))
    assert good.iloc[0]["p_value"] == pytest.approx(_mantel_by_hand(_pairs(d, {ab: -v for ab, v in d.items()}))[1])
    assert "usable proxy" in good.iloc[0]["reading"]
    with pytest.raises(VclibInputError, match="no column 'context_a', 'context_b'.*distance_vs_transfer"):
        vc.coverage.rank_correlation(pd.DataFrame({"edistance": [1.0, 2], "transfer": [0.1, 0.2]}))
    twice = pd.concat([few, few.iloc[[0]].rename(columns={"context_a": "context_b", "context_b": "context_a"})])
    with pytest.raises(VclibInputError, match="the pair 'a | b' appears more than once"):
        vc.coverage.rank_correlation(twice)
    with pytest.raises(VclibInputError, match="n_permutations=0"):
        vc.coverage.rank_correlation(few, n_permutations=0)


# ---------------------------------------------------------------- target coverage and next experiments


def test_target_coverage_and_next_experiments(counts):
    summary = _summary([("A", "B", 5, 0.9, 0.1), ("A", "C", 5, 0.55, 0.1), ("B", "C", 1, 0.9, 0.1)])
    cov = vc.coverage.target_coverage(counts, summary, targets="C").set_index("perturbation")
    w_ac = (0.55 - 0.1) / 0.9
    assert cov.loc["p4", "coverage"] == 1 and cov.loc["p4", "measured_in_target"]
    assert cov.loc["p1", "best_source"] == "A" and cov.loc["p1", "coverage"] == pytest.approx(w_ac)
    assert "unknown" not in cov.loc["p1", "explanation"]  # B's transfer to C rests on 1 perturbation: not used
    assert vc.coverage.least_covered(vc.coverage.target_coverage(counts, summary)) == "C"

    plan = vc.coverage.next_experiments(counts, summary, targets="C")
    # equal gains: p3 (measured in 1 context) first, then p1 and p2 (2 contexts each) tied, then the screen
    assert plan["perturbation"].tolist()[:3] == ["p3", "p1", "p2"]
    assert plan["rank"].tolist() == [1, 2, 2, 4] and plan["tied"].tolist() == [1, 2, 2, 1]
    assert plan["n_contexts"].tolist()[:3] == [1, 2, 2]
    first = plan.iloc[0]
    assert first["kind"] == "in the target" and first["gain"] == pytest.approx(1 - w_ac)
    assert first["coverage_after"] == pytest.approx(first["coverage_before"] + first["gain"] / 4)
    only_others = vc.coverage.next_experiments(counts, summary, targets="B", include_target=False)
    assert set(only_others["kind"]) <= {"in another context", "whole panel in a context"}
    assert "B" not in set(only_others["context"])
    p3 = only_others[only_others["perturbation"] == "p3"]
    assert p3.empty or (p3["context"] != "A").all()  # p3 is already measured in A
    pd.testing.assert_frame_equal(plan, vc.coverage.next_experiments(counts, summary, targets="C"))  # deterministic


def test_next_experiments_explains_in_words(sim):
    counts = vc.coverage.cell_counts(sim)
    summary = vc.coverage.summarize_transfer(vc.coverage.transferability(sim))
    plan = vc.coverage.next_experiments(counts, summary, include_target=False)
    other = plan[plan["kind"] == "in another context"]
    if len(other):
        assert other["why"].str.contains("transfer weight").all()
        assert other["why"].str.contains("shared").all()
    with pytest.raises(VclibInputError, match="target context 'nope' is not in the data; contexts are"):
        vc.coverage.target_coverage(counts, summary, targets="nope")


# ---------------------------------------------------------------- plots and widget


def test_plots_return_axes_and_explain_empty_tables(sim):
    counts = vc.coverage.cell_counts(sim)
    distances = vc.coverage.control_distances(sim, n_pcs=10)
    summary = vc.coverage.summarize_transfer(vc.coverage.true_transfer(sim, vc.coverage.transferability(sim)))
    cov = vc.coverage.target_coverage(counts, summary)
    plan = vc.coverage.next_experiments(counts, summary)
    axes = [vc.pl.overlap_heatmap(vc.coverage.context_overlap(counts)), vc.pl.distance_heatmap(distances),
            vc.pl.transfer_pairs(summary), vc.pl.transfer_vs_truth(summary),
            vc.pl.distance_vs_transfer(vc.coverage.distance_vs_transfer(distances, summary)),
            vc.pl.target_coverage(cov, target="C2"), vc.pl.next_experiments(plan, target="C2")]
    assert all(isinstance(ax, plt.Axes) for ax in axes)
    _, ax = plt.subplots()
    assert vc.pl.transfer_pairs(summary.iloc[:0], ax=ax) is ax
    assert "needs at least 2" in ax.texts[0].get_text()


def test_widget_switches_target(sim):
    counts = vc.coverage.cell_counts(sim)
    summary = vc.coverage.summarize_transfer(vc.coverage.transferability(sim))
    cov, plan = vc.coverage.target_coverage(counts, summary), vc.coverage.next_experiments(counts, summary)
    widget = vc.widgets.target_explorer(cov, plan)
    dropdown = widget.children[0]
    assert list(dropdown.options) == ["C1", "C2", "C3"] and dropdown.value == "C1"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        widget.f("C3")  # the wired function runs the vc.pl calls without error
    dropdown.value = "C2"
    with pytest.raises(VclibInputError, match="target 'C9' is not in the coverage table"):
        vc.widgets.target_explorer(cov, plan, target="C9")


# ---------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_signatures_same_perturbation_beats_chance():
    sig = vc.loaders.read(real_file(NEURIPS), values="signature", combination_sep=None)
    summary = vc.coverage.summarize_transfer(vc.coverage.transferability(sig))
    assert len(summary) == 6 and (summary["n_shared"] == 135).all()
    assert (summary["same_raw"] > summary["chance_raw"] + 0.05).all()


@pytest.mark.realdata
def test_kang_cell_types_transfer_the_ifn_response():
    adata = vc.loaders.read(real_file(KANG), perturbation_key="group_id", context_key="cluster_id", control="ctrl")
    summary = vc.coverage.summarize_transfer(vc.coverage.transferability(adata))
    assert len(summary) == 10 and summary["same_raw"].between(0.3, 1).all()
    distances = vc.coverage.control_distances(adata)
    close = distances.set_index(["context_a", "context_b"])["edistance"]
    assert close.loc[("CD4 T cells", "CD8 T cells")] < close.loc[("CD14+ Monocytes", "CD4 T cells")]


# ---------------------------------------------------------------- notebook 01


def _run_notebook(tmp_path, **parameters):
    import papermill as pm

    out = tmp_path / "results"
    notebook = ROOT / "notebooks" / "01_context_coverage.ipynb"
    pm.execute_notebook(str(notebook), str(tmp_path / "01.ipynb"),
                        parameters={"RESULTS_DIR": str(out), "WIDGETS": False, **parameters},
                        cwd=str(ROOT / "notebooks"), kernel_name=vc.runner.kernel_for(notebook), progress_bar=False,
                        execution_timeout=900)
    return out


@pytest.mark.notebooks
def test_notebook_on_a_single_context(tmp_path):
    single = vc.loaders.simulate(n_contexts=1, n_perturbations=8, n_combinations=2, n_genes=100,
                                 cells_per_condition=20, control_cells=40)
    single.write_h5ad(tmp_path / "single.h5ad")
    out = _run_notebook(tmp_path, DATASET=str(tmp_path / "single.h5ad"))
    assert pd.read_csv(out / "coverage_cells.csv", index_col=0).shape == (11, 1)
    assert pd.read_csv(out / "transfer_pairs.csv").empty
    assert len(pd.read_csv(out / "reliability.csv")) == 10


@pytest.mark.notebooks
@pytest.mark.realdata
@pytest.mark.parametrize("dataset,keys,n_contexts", [
    (KANG, ("group_id", "cluster_id", "ctrl"), 5),
    (GBM, ("condition", "patient_id", "ctrl"), 5),
])
def test_notebook_on_real_data(tmp_path, dataset, keys, n_contexts):
    out = _run_notebook(tmp_path, DATASET=str(real_file(dataset)), PERTURBATION_KEY=keys[0], CONTEXT_KEY=keys[1],
                        CONTROL=keys[2])
    pairs = n_contexts * (n_contexts - 1) // 2
    distances = pd.read_csv(out / "context_distances.csv")
    assert len(distances) == pairs and distances["edistance"].notna().all()
    transfer = pd.read_csv(out / "transfer_pairs.csv")
    assert len(transfer) == pairs and (transfer["n_shared"] == 1).all()
    assert transfer["same_corrected"].notna().all()
    assert len(pd.read_csv(out / "target_coverage.csv")) == n_contexts


def test_distance_plots_of_signatures_give_the_signature_reason():
    sig = ad.AnnData(np.array([[1.0, 2, 3], [3, 2, 1]]),
                     obs=pd.DataFrame({"perturbation": ["d", "d"], "context": ["a", "b"]}, index=["0", "1"]))
    sig = vc.loaders.read(sig, values="signature")
    distances = vc.coverage.control_distances(sig)
    transfer = vc.coverage.summarize_transfer(vc.coverage.transferability(sig))
    pairs = vc.coverage.distance_vs_transfer(distances, transfer)
    for ax in (vc.pl.distance_heatmap(distances), vc.pl.distance_vs_transfer(pairs)):
        assert "response signatures without cells" in ax.texts[0].get_text()
