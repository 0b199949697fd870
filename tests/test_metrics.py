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
        np.testing.assert_allclose(de.fdr[i], stats.false_discovery_control(de.pvalue[i]))
        m_p, m_c = X[rows].mean(0), control.mean(0)
        np.testing.assert_allclose(de.lfc[i], np.log2((np.expm1(m_p) + 1e-9) / (np.expm1(m_c) + 1e-9)))


def test_rank_genes_without_tie_correction_is_more_significant():
    rng = np.random.default_rng(8)
    X = rng.poisson(0.3, size=(60, 10)).astype(float)  # mostly zeros: large tie blocks
    adata = ad.AnnData(np.log1p(X), obs=pd.DataFrame({"perturbation": ["control"] * 30 + ["A"] * 30,
                                                      "context": "c"}))
    with_ties = M.rank_genes(adata).pvalue
    without = M.rank_genes(adata, tie_correction=False).pvalue
    assert np.all(without >= with_ties - 1e-15)  # ignoring ties overstates the variance


def test_rank_genes_needs_controls():
    adata = ad.AnnData(np.ones((4, 3)), obs=pd.DataFrame({"perturbation": ["A", "A", "B", "B"], "context": "x"}))
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
    ceiling = M.ceiling(adata, full_size=True, metrics=["pearson_delta", "mse_delta", "discrimination_score_l1"])
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


def test_full_size_ceiling_matches_replicate_theory():
    """Closed form: the MSE between two full-size replicates is twice that of truth vs one replicate."""
    adata = vc.loaders.simulate(n_contexts=1, n_perturbations=8, n_combinations=0, n_genes=300,
                                cells_per_condition=200, control_cells=400, seed=3)
    pb = vc.pseudobulk.pseudobulk(adata)
    names = [str(n) for n in adata.uns["simulation"]["truth_conditions"]]
    truth = ad.AnnData(adata.uns["simulation"]["truth"][[names.index(n) for n in pb.obs_names]].astype(float),
                       obs=pb.obs.copy(), var=pb.var.copy())
    truth_mse = _values(M.evaluate(truth, adata, metrics=["mse"]), "mse").mean()
    ceiling_mse = _values(M.ceiling(adata, full_size=True, metrics=["mse"]), "mse").mean()
    assert ceiling_mse / truth_mse == pytest.approx(2.0, rel=0.15)


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

def test_aggregate_ci_and_nan_handling():
    t = pd.DataFrame({"model": "m", "metric": "pearson_delta", "value": [0.1, 0.2, 0.3, 0.4, np.nan]})
    s = M.aggregate(t, n_boot=2000).iloc[0]
    assert s["mean"] == pytest.approx(0.25) and s["n"] == 4 and s["n_nan"] == 1
    assert s["ci_low"] < 0.25 < s["ci_high"]


def test_compare_direction_follows_the_registry():
    t = pd.DataFrame({"model": ["a"] * 5 + ["b"] * 5, "metric": "pearson_delta", "context": "c",
                      "perturbation": list("vwxyz") * 2, "value": [0.2, 0.25, 0.3, 0.2, 0.22] + [0.8] * 5})
    row = M.compare(t, baseline="b").iloc[0]
    assert row["difference"] < 0 and row["better"] == "no"


def test_calibrate_is_not_clipped():
    s = pd.DataFrame({"model": ["worse", "b", "ceiling"], "metric": "mse", "mean": [3.0, 2.0, 1.0]})
    assert M.calibrate(s, baseline="b")["calibrated"].iloc[0] == pytest.approx(-1.0)


def test_spearman_brown_and_error_scaling():
    t = pd.DataFrame({"metric": ["pearson_delta", "mse", "mae", "discrimination_score_l1"],
                      "value": [0.5, 1.0, 1.0, 0.9]})
    np.testing.assert_allclose(M.to_full_size(t), [2 * 0.5 / 1.5, 0.5, 1 / np.sqrt(2), 0.9])


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
