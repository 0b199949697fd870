"""Failure characterisation: covariates, the joined table, regime maps, error drivers, screening, spread."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import vclib as vc
from vclib import failures as F
from vclib.schema import VclibInputError


@pytest.fixture(scope="module")
def data():
    adata = vc.loaders.simulate(n_contexts=3, n_perturbations=10, n_combinations=3, n_genes=80,
                                cells_per_condition=25, control_cells=50, seed=2)
    return adata, vc.metrics.rank_genes(adata)


def test_observed_effects_match_their_definitions(data):
    adata, de = data
    effects = F.observed_effects(adata, de=de, n_splits=1, seed=0)
    deltas = vc.pseudobulk.deltas(vc.pseudobulk.pseudobulk(adata))
    np.testing.assert_allclose(effects["effect_size"], np.linalg.norm(np.asarray(deltas.X), axis=1))
    assert (effects["n_de_genes"].to_numpy() == de.subset(effects.index).significant().sum(axis=1)).all()
    combo = next(n for n in effects.index if "+" in n and np.isfinite(effects.loc[n, "non_additivity"]))
    ctx, pert = combo.split("|")
    a, b = pert.split("+")
    raw = (np.asarray(deltas[combo].X - deltas[f"{ctx}|{a}"].X - deltas[f"{ctx}|{b}"].X) ** 2).sum()
    assert effects.loc[combo, "non_additivity_raw"] == pytest.approx(raw)
    # the noise term by hand: the same expression on each half of the cells (each half with its own control)
    half = vc.pseudobulk.half_labels(adata, seed=0)
    X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)

    def mean(p, h):
        return X[((adata.obs["context"] == ctx) & (adata.obs["perturbation"] == p)).to_numpy() & (half == h)].mean(0)

    N = [mean(pert, h) - mean(a, h) - mean(b, h) + mean("control", h) for h in (0, 1)]
    noise = ((N[0] - N[1]) ** 2).sum() / 4
    assert effects.loc[combo, "non_additivity_noise"] == pytest.approx(noise)
    assert effects.loc[combo, "non_additivity"] == pytest.approx(raw - noise)
    assert effects.loc[[n for n in effects.index if "+" not in n], "non_additivity"].isna().all()


def test_additive_double_is_within_noise_after_correction():
    """Cells drawn around exactly additive means: the raw non-additivity is pure noise (about 4 pseudobulks'
    variance summed over genes); the corrected value is near 0 and flagged within noise."""
    rng = np.random.default_rng(0)
    genes, cells = 200, 40
    a, b = rng.normal(scale=0.5, size=genes), rng.normal(scale=0.5, size=genes)
    means = {"control": np.zeros(genes), "A": a, "B": b, "A+B": a + b}
    X = np.vstack([m + 3 + rng.normal(size=(cells, genes)) for m in means.values()])
    obs = pd.DataFrame({"perturbation": np.repeat(list(means), cells), "context": "c"})
    adata = ad.AnnData(X, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(genes)]))
    effects = F.observed_effects(adata, n_splits=5)
    row = effects.loc["c|A+B"]
    expected_noise = genes * 4 / cells  # four pseudobulks of `cells` cells, unit variance per gene
    assert row["non_additivity_raw"] == pytest.approx(expected_noise, rel=0.25)
    assert row["non_additivity_noise"] == pytest.approx(expected_noise, rel=0.25)
    assert abs(row["non_additivity"]) < 0.25 * row["non_additivity_raw"]
    assert row["non_additivity_within_noise"] is True


def _split(rows):
    return pd.DataFrame(rows, columns=["split", "fold", "context", "perturbation", "role", "n_seen_singles"])


def test_split_covariates_by_hand():
    split = _split([
        ("s", "0", "A", "control", "train", np.nan), ("s", "0", "B", "control", "train", np.nan),
        ("s", "0", "C", "control", "train", np.nan),
        ("s", "0", "A", "p", "train", np.nan), ("s", "0", "B", "p", "train", np.nan),
        ("s", "0", "B", "q", "train", np.nan), ("s", "0", "C", "p", "test", np.nan),
        ("s", "0", "C", "q", "test", np.nan), ("s", "0", "C", "p+q", "test", 0),
    ])
    distances = pd.DataFrame({"context_a": ["A", "A", "B"], "context_b": ["B", "C", "C"],
                              "edistance": [1.0, 5.0, 2.0]})
    cov = F.split_covariates(split, distances).set_index("perturbation")
    assert (cov["distance_to_training"] == 2.0).all()  # C's nearest trained context is B
    assert (cov["nearest_training_context"] == "B").all()
    assert cov.loc["p", "n_training_contexts"] == 2 and cov.loc["q", "n_training_contexts"] == 1
    assert cov.loc["p+q", "n_training_contexts"] == 1  # both singles trained only in B
    within = _split([("s", "0", "A", "control", "train", np.nan), ("s", "0", "A", "p", "train", np.nan),
                     ("s", "0", "A", "q", "test", np.nan)])
    assert F.split_covariates(within)["distance_to_training"].iloc[0] == 0.0


def test_condition_table_joins_without_duplicating(data):
    adata, de = data
    splits = vc.splits.unseen_context(adata)
    scores = vc.benchmark.run(adata, splits=[splits], models=["training_mean", "perturbation_mean"],
                              metrics=["mse_delta", "hit_rate_at_k"], progress=False)
    table = F.condition_table(scores, F.split_covariates(splits, vc.coverage.control_distances(adata)),
                              F.observed_effects(adata, de=de))
    assert len(table) == (scores["perturbation"] != "*").sum()
    assert set(F.COVARIATES) <= set(table.columns)
    assert table.loc[table["model"] == "training_mean", "distance_to_training"].gt(0).all()


def _synthetic_table(rng, n=120):
    x = rng.uniform(0, 1, n)
    z = rng.normal(size=n)
    rows = []
    for model, shift in [("model", 0.2), ("base", 0.0)]:
        # the model beats the baseline where x is high, loses where it is low
        value = 2 * x + rng.normal(0, 0.05, n) + np.where(x > 0.5, shift, -shift)
        rows.append(pd.DataFrame({"model": model, "split": "s", "fold": "0", "context": "c",
                                  "perturbation": [f"p{i}" for i in range(n)], "metric": "pearson_delta",
                                  "value": value, "x": x, "z": z}))
    return pd.concat(rows, ignore_index=True)


def test_regime_map_wins_and_loses_by_stratum():
    table = _synthetic_table(np.random.default_rng(0))
    regimes = F.regime_map(table, model="model", baseline="base", metric="pearson_delta", covariate="x", bins=2)
    verdicts = dict(zip(regimes["stratum"], regimes["verdict"], strict=True))
    low, high = regimes["stratum"]  # in increasing order of x, labelled by the range they hold: "0.0117–0.493"
    assert float(low.split("–")[0]) < float(high.split("–")[0])
    assert verdicts[low] == "loses" and verdicts[high] == "wins"
    np.testing.assert_allclose(sorted(regimes["difference"]), [-0.2, 0.2], atol=0.05)
    absent = F.regime_map(table, model="nope", baseline="base", metric="pearson_delta", covariate="x")
    assert absent.empty and "nope not scored; models scored: base, model" in absent.attrs["skipped"][0]["reason"]


def test_a_stratum_below_min_n_gets_no_verdict():
    table = _synthetic_table(np.random.default_rng(0))
    n = table["perturbation"].nunique()
    regimes = F.regime_map(table, model="model", baseline="base", metric="pearson_delta", covariate="x", bins=2,
                           min_n=n)  # each of the two strata holds about half the perturbations
    assert regimes["verdict"].str.startswith("too few conditions").all()


def test_drivers_by_split_is_error_drivers_per_split():
    table = _synthetic_table(np.random.default_rng(1))
    both = pd.concat([table.assign(split="a"), table.assign(split="b", value=-table["value"])])
    out = F.drivers_by_split(both, models=["base", "absent"], metric="pearson_delta", covariates=["x"], n_boot=50)
    assert set(zip(out["split"], out["model"], strict=True)) == {("a", "base"), ("b", "base")}
    alone = F.error_drivers(table, model="base", metric="pearson_delta", covariates=["x"], n_boot=50)
    a, b = out[out["split"] == "a"].iloc[0], out[out["split"] == "b"].iloc[0]
    assert a["spearman"] == pytest.approx(alone["spearman"].iloc[0]) and b["spearman"] == pytest.approx(-a["spearman"])
    none = F.drivers_by_split(table.iloc[:0], models=["base"], metric="pearson_delta")
    assert none.empty and none.attrs["skipped"][0]["analysis"] == "error drivers"


def test_error_drivers_spearman_equals_scipy_with_ties_and_its_bootstrap_percentiles():
    from scipy import stats

    rng = np.random.default_rng(4)
    n = 40
    table = pd.DataFrame({"model": "m", "metric": "mse", "value": rng.normal(size=n).round(1),  # tied scores
                          "x": rng.integers(0, 5, n).astype(float), "z": rng.normal(size=n)})
    drivers = F.error_drivers(table, model="m", metric="mse", covariates=["x", "z"], n_boot=50, seed=3)
    drivers = drivers.set_index("covariate")
    y = table["value"].to_numpy()
    boot = np.random.default_rng(3)
    resamples = [boot.integers(0, n, n) for _ in range(50)]
    for c in ("x", "z"):
        v = table[c].to_numpy()
        assert drivers.loc[c, "spearman"] == pytest.approx(stats.spearmanr(v, y).statistic, abs=1e-12)
        rho = [stats.spearmanr(v[i], y[i]).statistic for i in resamples]
        assert drivers.loc[c, "spearman_low"] == pytest.approx(np.nanpercentile(rho, 2.5), abs=1e-12)
        assert drivers.loc[c, "spearman_high"] == pytest.approx(np.nanpercentile(rho, 97.5), abs=1e-12)


def test_error_drivers_find_the_real_covariate():
    table = _synthetic_table(np.random.default_rng(1))
    drivers = F.error_drivers(table, model="base", metric="pearson_delta", covariates=["x", "z"], n_boot=300)
    drivers = drivers.set_index("covariate")
    assert drivers.loc["x", "spearman"] > 0.9 and drivers.loc["x", "spearman_low"] > 0.8
    assert drivers.loc["z", "spearman_low"] < 0 < drivers.loc["z", "spearman_high"]
    # value = 2x - 0.2 + noise: per SD of x the score moves by 2·sd(x)
    x = table.loc[table["model"] == "base", "x"]
    assert drivers.loc["x", "coefficient"] == pytest.approx(2 * x.std(ddof=0), rel=0.1)


def _predictions(effects: np.ndarray, perts: list[str], model: str) -> ad.AnnData:
    X = np.zeros((len(perts), 3), dtype=np.float32)
    X[:, 0] = effects
    obs = pd.DataFrame({"context": "c", "perturbation": perts, "model": model, "split": "s", "fold": "0",
                        "seed": 0}, index=[f"{model}|{p}" for p in perts])
    return ad.AnnData(X, obs=obs)


def test_hit_rate_curves_closed_form():
    perts = [f"p{i}" for i in range(6)]
    effects = pd.DataFrame({"context": "c", "perturbation": perts, "n_de_genes": [50, 40, 0, 0, 0, 30]})
    good = _predictions(np.array([6, 5, 1, 2, 3, 4.0]), perts, "good")  # hits p0, p1, p5 ranked first
    bad = _predictions(np.array([1, 2, 6, 5, 4, 3.0]), perts, "bad")
    curves = F.hit_rate_curves(ad.concat([good, bad], merge="same"), effects).set_index(["model", "k"])
    np.testing.assert_allclose(curves.loc["good", "hit_rate"], [1, 1, 1, 0.75, 0.6, 0.5])
    np.testing.assert_allclose(curves.loc["bad", "hit_rate"], [0, 0, 0, 0.25, 0.4, 0.5])
    np.testing.assert_allclose(curves.loc["good", "best_possible"], curves.loc["good", "hit_rate"])
    assert (curves["chance"] == 0.5).all()


def test_mode_collapse_ratio():
    perts = [f"p{i}" for i in range(5)]
    rng = np.random.default_rng(0)
    observed = ad.AnnData(rng.normal(size=(5, 3)).astype(np.float32),
                          obs=pd.DataFrame(index=[f"c|{p}" for p in perts]))
    same = _predictions(np.zeros(5), perts, "constant")
    exact = ad.AnnData(observed.X.copy(), obs=_predictions(np.zeros(5), perts, "oracle").obs)
    collapse = F.mode_collapse(ad.concat([same, exact], merge="same"), observed).set_index("model")
    assert collapse.loc["constant", "spread_ratio"] == 0
    assert collapse.loc["oracle", "spread_ratio"] == pytest.approx(1.0)


def test_worst_conditions_follow_the_metric_direction():
    t = pd.DataFrame({"model": "m", "metric": ["mse", "mse", "pearson_delta", "pearson_delta"],
                      "perturbation": ["a", "b", "a", "b"], "value": [1.0, 3.0, 0.9, 0.1]})
    assert F.worst_conditions(t, model="m", metric="mse", n=1)["perturbation"].iloc[0] == "b"
    assert F.worst_conditions(t, model="m", metric="pearson_delta", n=1)["perturbation"].iloc[0] == "b"


def test_failure_browser_lists_the_conditions_of_the_chosen_split_and_model():
    perts = [f"p{i}" for i in range(3)]
    predictions = ad.concat([_predictions(np.array([1.0, 2.0, 3.0]), perts, m) for m in ("m", "n")], merge="same")
    observed = ad.AnnData(np.tile(np.array([3.0, 1.0, 0.5], dtype=np.float32), (3, 1)),
                          obs=pd.DataFrame(index=[f"c|{p}" for p in perts]))
    r = np.corrcoef([3.0, 0.0, 0.0], [3.0, 1.0, 0.5])[0, 1]  # p2's prediction against its observation
    table = pd.DataFrame({"model": "m", "split": "s", "fold": "0", "context": "c", "perturbation": perts,
                          "metric": "pearson_delta", "value": [0.1, 0.2, r]})
    long_name = "a_very_long_context_name_of_a_donor"
    other = pd.DataFrame({"model": ["m", "m", "n", "ceiling"], "split": ["t", "t", "s", "s"],
                          "fold": ["1", "2", "0", "0"], "context": [long_name] * 2 + ["c"] * 2,
                          "perturbation": ["GENE_WITH_A_LONG_NAME"] * 2 + ["p1"] * 2, "metric": "pearson_delta",
                          "value": [0.5, 0.6, 0.7, 0.9]})
    table = pd.concat([table, other], ignore_index=True)
    widget = vc.widgets.failure_browser(table, predictions, observed, model="m")
    (split_box, model_box), condition_box = widget.children[0].children, widget.children[1]
    assert split_box.value == "s" and model_box.value == "m"
    assert model_box.options == ("m", "n")  # the ceiling has no saved predictions to show
    assert condition_box.label == "c | p0" and len(condition_box.options) == 3  # split s, model m only
    condition_box.value = ("0", "c", "p2")  # what a click in the dropdown does: the callback redraws
    title = widget.result.axes[0].get_title()
    assert "c|p2" in title and f"pearson_delta = {r:.2f}" in title  # the score, as the r of the points drawn
    model_box.value = "n"  # n was scored on p1 only: the list follows, the drawing too
    assert [label for label, _ in condition_box.options] == ["c | p1"]
    assert widget.result.axes[0].get_title().startswith("n · s\nc|p1")
    model_box.value, split_box.value = "m", "t"  # one condition tested in two folds: whole names, fold added
    assert [label for label, _ in condition_box.options] == [f"{long_name} | GENE_WITH_A_LONG_NAME (fold 1)",
                                                             f"{long_name} | GENE_WITH_A_LONG_NAME (fold 2)"]
    assert "m has no prediction" in widget.result.axes[0].texts[0].get_text()  # the empty panel says why
    model_box.value = "n"  # n was not scored on split t: an empty list and a figure that says so
    assert condition_box.options == () and condition_box.value is None
    assert "n was not scored on split t" in widget.result.axes[0].get_title()
    with pytest.raises(VclibInputError, match=r"model 'ceiling' is not in the table .*models are: \['m', 'n'\]"):
        vc.widgets.failure_browser(table, predictions, observed, model="ceiling")


def test_read_results_refuses_parts_that_describe_different_data(tmp_path):
    for name in ("benchmark_scores.csv", "splits.csv", "observed_effects.csv"):
        (tmp_path / name).write_text("x\n")
    pb = ad.AnnData(np.zeros((1, 2), dtype=np.float32))
    pb.uns["vclib"] = {"values": "log1p", "fingerprint": "aaaa"}
    pb.write_h5ad(tmp_path / "pseudobulk.h5ad")
    (tmp_path / "benchmark").mkdir()
    (tmp_path / "benchmark" / "manifest.json").write_text('{"fingerprint": "bbbb"}')
    with pytest.raises(VclibInputError, match="mixes results of different data: notebook 01 .* aaaa, notebook 02"):
        F.read_results(tmp_path)
