"""Splits, baselines, models and the resumable benchmark runner."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import vclib as vc
from vclib.schema import VclibInputError


@pytest.fixture(scope="module")
def data():
    adata = vc.loaders.simulate(n_contexts=3, n_perturbations=12, n_combinations=4, n_genes=80,
                                cells_per_condition=20, control_cells=40, seed=5)
    return adata, vc.pseudobulk.pseudobulk(adata)


# --- splits -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(vc.splits.SPLITS))
def test_splits_are_deterministic_and_round_trip(data, name, tmp_path):
    adata, _ = data
    a = vc.splits.make(name, adata, seed=1)
    assert a.equals(vc.splits.make(name, adata, seed=1))
    path = tmp_path / "split.csv"
    a.to_csv(path, index=False)
    pd.testing.assert_frame_equal(vc.splits.read(path), a.astype({"fold": str}), check_dtype=False)
    assert (a.loc[a["perturbation"] == "control", "role"] == "train").all()  # controls always visible
    for split, fold in vc.splits.folds(a):
        roles = vc.splits.roles(a, split, fold)
        assert roles["test"] and not set(roles["test"]) & set(roles["train"])


def test_unseen_perturbation_tests_each_perturbation_once_per_context(data):
    adata, pb = data
    split = vc.splits.unseen_perturbation(adata, n_folds=3)
    tested = split[split["role"] == "test"]
    perturbed = pb.obs[~pb.obs["is_control"]]
    assert len(tested) == len(perturbed)
    assert not tested.duplicated(["context", "perturbation"]).any()


def test_unseen_context_holds_out_all_perturbed_cells_of_the_context(data):
    adata, _ = data
    split = vc.splits.unseen_context(adata)
    fold = split[split["fold"] == "C2"]
    assert set(fold.loc[fold["role"] == "test", "context"]) == {"C2"}
    assert fold.loc[(fold["context"] == "C2") & (fold["perturbation"] != "control"), "role"].eq("test").all()
    assert fold.loc[(fold["context"] == "C2") & (fold["perturbation"] == "control"), "role"].eq("train").all()


def test_few_shot_shows_the_fraction(data):
    adata, _ = data
    split = vc.splits.few_shot_context(adata, seed=0)
    for name, f in [("few_shot_0.25", 0.25), ("few_shot_0.5", 0.5)]:
        fold = split[(split["split"] == name) & (split["fold"] == "C1")]
        target = fold[(fold["context"] == "C1") & (fold["perturbation"] != "control")]
        assert (target["role"] == "train").sum() == round(f * len(target))


def test_combinations_are_labelled_by_seen_singles(data):
    adata, _ = data
    split = vc.splits.combinations(adata, seed=0)
    train = set(zip(split.loc[split["role"] == "train", "context"], split.loc[split["role"] == "train",
                                                                              "perturbation"], strict=True))
    for row in split[split["role"] == "test"].itertuples():
        assert "+" in row.perturbation
        expected = sum((row.context, t) in train for t in row.perturbation.split("+"))
        assert row.n_seen_singles == expected


def test_unknown_split_lists_valid_ones(data):
    with pytest.raises(VclibInputError, match=r"unknown split 'random'; valid splits: unseen_perturbation"):
        vc.splits.make("random", data[0])


def test_empty_fold_is_reported(data):
    adata, _ = data
    with pytest.raises(VclibInputError, match=r"leaves fold '\d+' without test conditions"):
        vc.splits.unseen_perturbation(adata, n_folds=50)


def test_single_context_cannot_leave_a_context_out(data):
    adata, _ = data
    one = adata[adata.obs["context"] == "C1"].copy()
    with pytest.raises(VclibInputError, match="needs two or more contexts"):
        vc.splits.unseen_context(one)


def test_leakage_check_fails_loudly(data):
    adata, pb = data
    split = vc.splits.unseen_context(adata)
    train = vc.splits.training_data(pb, split, "unseen_context", "C1")
    assert not any(n.startswith("C1|") and not n.endswith("|control") for n in train.obs_names)
    with pytest.raises(VclibInputError, match=r"leakage in split 'unseen_context' fold 'C1': 1 test"):
        vc.splits.check_leakage(list(train.obs_names) + ["C1|G0003"], split, "unseen_context", "C1")
    # a model fitted on all data (as gene selection or PCA on everything would be) is caught
    model = vc.baselines.Linear().fit(pb)
    with pytest.raises(VclibInputError, match="leakage"):
        vc.splits.check_leakage(model.training_conditions_, split, "unseen_context", "C1")


# --- baselines and models ---------------------------------------------------------------------------------

ESTIMATORS = {**vc.baselines.BASELINES, **vc.models.MODELS}


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_estimator_contract(data, name):
    """One contract test over every registered baseline and model (scikit-learn's rules)."""
    adata, pb = data
    split = vc.splits.unseen_context(adata)
    train = vc.splits.training_data(pb, split, "unseen_context", "C3")
    test = vc.splits.roles(split, "unseen_context", "C3")["test"]
    model = ESTIMATORS[name]()
    params = model.get_params()
    assert model.fit(train) is model
    assert model.get_params() == params  # fit does not change settings
    assert all(not k.endswith("_") for k in params)
    before = train.X.copy()
    pred = model.predict(test)
    np.testing.assert_array_equal(train.X, before)  # inputs are not modified
    assert list(pred.obs_names) == test and pred.var_names.equals(pb.var_names)
    assert np.isfinite(pred.X).all()
    again = ESTIMATORS[name]().fit(train).predict(test)
    np.testing.assert_allclose(pred.X, again.X)  # deterministic for the default seed


def test_simple_baselines_closed_form(data):
    adata, pb = data
    split = vc.splits.unseen_context(adata)
    train = vc.splits.training_data(pb, split, "unseen_context", "C1")
    d = vc.pseudobulk.deltas(train)
    ctrl = np.asarray(pb["C1|control"].X)[0]
    mean = vc.baselines.TrainingMean().fit(train).predict(["C1|G0002"]).X[0]
    np.testing.assert_allclose(mean, ctrl + np.asarray(d.X).mean(axis=0))
    same = vc.baselines.PerturbationMean().fit(train).predict(["C1|G0002"]).X[0]
    others = np.asarray(d[d.obs["perturbation"] == "G0002"].X)
    np.testing.assert_allclose(same, ctrl + others.mean(axis=0))


def test_nearest_context_uses_the_closest_control(data):
    adata, pb = data
    split = vc.splits.unseen_context(adata)
    train = vc.splits.training_data(pb, split, "unseen_context", "C1")
    ctrl = {c: np.asarray(pb[f"{c}|control"].X)[0] for c in ["C1", "C2", "C3"]}
    d = vc.pseudobulk.deltas(train)
    measured = [c for c in ["C2", "C3"] if f"{c}|G0000" in d.obs_names]
    nearest = min(measured, key=lambda c: np.linalg.norm(ctrl[c] - ctrl["C1"]))
    pred = vc.baselines.NearestContext().fit(train).predict(["C1|G0000"]).X[0]
    np.testing.assert_allclose(pred, ctrl["C1"] + np.asarray(d[f"{nearest}|G0000"].X)[0])


def test_additive_sums_the_singles(data):
    adata, pb = data
    d = vc.pseudobulk.deltas(pb)
    combo = next(p for p in d.obs["perturbation"] if "+" in p and f"C1|{p}" in d.obs_names)
    a, b = combo.split("+")
    train = pb[[n for n in pb.obs_names if "+" not in n]].copy()
    pred = vc.baselines.Additive().fit(train).predict([f"C1|{combo}"]).X[0]
    expected = np.asarray(pb["C1|control"].X)[0] + sum(np.asarray(d[f"C1|{t}"].X)[0]
                                                      for t in (a, b) if f"C1|{t}" in d.obs_names)
    np.testing.assert_allclose(pred, expected)


def test_linear_recovers_an_exactly_linear_response():
    """If deltas are exactly G K p (genes' own embedding), the closed form predicts held-out perturbations."""
    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(60)]
    W = rng.normal(size=(60, 3))  # latent gene factors
    perts = genes[:40]
    deltas = np.array([W @ W[i] for i in range(40)])  # response of perturbing gene i: W W_i
    controls = np.full((1, 60), 2.0)
    X = np.vstack([controls, controls + deltas])
    obs = pd.DataFrame({"context": "c", "perturbation": ["control"] + perts})
    obs.index = [f"c|{p}" for p in obs["perturbation"]]
    pb = ad.AnnData(X, obs=obs, var=pd.DataFrame(index=genes))
    train = pb[[n for n in pb.obs_names if n not in ("c|g35", "c|g36")]].copy()
    pred = vc.baselines.Linear(d=3, lam=1e-6).fit(train).predict(["c|g35", "c|g36"])
    truth = np.asarray(pb[["c|g35", "c|g36"]].X)
    assert np.corrcoef((pred.X - 2).ravel(), (truth - 2).ravel())[0, 1] > 0.99


def test_unknown_model_lists_valid_ones():
    with pytest.raises(VclibInputError, match=r"unknown model 'gears'; valid models: no_change"):
        vc.benchmark.estimator("gears")


# --- external predictions ---------------------------------------------------------------------------------

def _external_fold(adata, pb, split, fold):
    test = vc.splits.roles(split, "unseen_context", fold)["test"]
    cells = adata[[f"{c}|{p}" in set(test) for c, p in zip(adata.obs["context"], adata.obs["perturbation"],
                                                              strict=True)]].copy()
    out = ad.AnnData(cells.X, obs=pd.DataFrame({
        "target_gene": cells.obs["perturbation"].astype(str).to_numpy(),
        "cell_line": cells.obs["context"].astype(str).to_numpy()}, index=cells.obs_names), var=cells.var)
    return out


def test_external_cell_predictions_score_like_builtins(data, tmp_path):
    adata, pb = data
    split = vc.splits.unseen_context(adata)
    for fold in ["C1", "C2", "C3"]:
        _external_fold(adata, pb, split, fold).write_h5ad(tmp_path / f"pred_{fold}.h5ad")
    external = vc.models.ExternalPredictions(str(tmp_path / "pred_{fold}.h5ad"), perturbation_key="target_gene",
                                             context_key="cell_line", control="non-targeting")
    table = vc.benchmark.run(adata, splits=[split], models={"oracle": external, "no_change": vc.baselines.NoChange()},
                             metrics=["mse_delta", "discrimination_score_l1", "overlap_at_N"], progress=False,
                             results_dir=tmp_path / "run")
    summary = vc.metrics.aggregate(table).set_index(["model", "metric"])["mean"]
    assert summary["oracle", "mse_delta"] == pytest.approx(0.0, abs=1e-12)  # the observed cells themselves
    assert summary["oracle", "discrimination_score_l1"] == 1.0
    assert summary["oracle", "overlap_at_N"] == pytest.approx(1.0)
    # the saved predicted deltas: the oracle's are the observed deltas, no change predicts zero
    predictions = vc.benchmark.load_predictions(tmp_path / "run")
    observed = vc.pseudobulk.deltas(pb)
    oracle = predictions[predictions.obs["model"] == "oracle"]
    names = [f"{c}|{p}" for c, p in zip(oracle.obs["context"], oracle.obs["perturbation"], strict=True)]
    np.testing.assert_allclose(oracle.X, np.asarray(observed[names].X), atol=1e-6)
    assert np.abs(predictions[predictions.obs["model"] == "no_change"].X).max() == 0
    assert set(predictions.obs["model"]) == {"oracle", "no_change", "ceiling"}


def test_external_predictions_bad_input(data, tmp_path):
    adata, pb = data
    split = vc.splits.unseen_context(adata)
    train = vc.splits.training_data(pb, split, "unseen_context", "C1")
    test = vc.splits.roles(split, "unseen_context", "C1")["test"]
    good = _external_fold(adata, pb, split, "C1")
    opts = {"perturbation_key": "target_gene", "context_key": "cell_line"}

    missing = good[good.obs["target_gene"] != test[0].split("|")[1]].copy()
    model = vc.models.ExternalPredictions(missing, **opts).fit(train)
    with pytest.raises(VclibInputError, match=rf"no prediction for 1 condition\(s\): '{test[0]}'".replace("|", r"\|")):
        model.predict(test)

    extra = ad.concat([good, good[:, :1]], axis=1, merge="first")
    extra.var_names = list(good.var_names) + ["NOT_A_GENE"]
    with pytest.raises(VclibInputError, match=r"genes differ from the data: 1 extra \(e.g. \['NOT_A_GENE'\]\)"):
        vc.models.ExternalPredictions(extra, **opts).fit(train).predict(test)

    nan = good.copy()
    nan.X = nan.X.toarray()
    nan.X[0, 0] = np.nan
    first = f"C1|{nan.obs['target_gene'].iloc[0]}".replace("|", r"\|")
    with pytest.raises(VclibInputError, match=rf"NaN or inf in the prediction of '{first}'"):
        vc.models.ExternalPredictions(nan, **opts).fit(train).predict(test)


# --- the runner -------------------------------------------------------------------------------------------

def test_run_resumes_and_never_mixes_settings(data, tmp_path, monkeypatch):
    adata, _ = data
    options = {"splits": ["unseen_context"], "models": ["no_change", "training_mean"], "metrics": ["mse_delta"],
               "progress": False, "results_dir": tmp_path}
    first = vc.benchmark.run(adata, **options)
    cells = sorted((tmp_path / "cells").glob("*.csv"))
    assert len(cells) == 3 * 3  # (ceiling + 2 models) x 3 folds
    stamps = {p: p.stat().st_mtime_ns for p in cells}

    # a re-run with the same settings does no work twice and returns the same table
    calls = []
    monkeypatch.setattr(vc.benchmark, "_score_cell", lambda *a, **k: calls.append(a) or None)
    again = vc.benchmark.run(adata, **options)
    assert not calls
    pd.testing.assert_frame_equal(first, again, check_dtype=False)
    monkeypatch.undo()

    # an interrupted run resumes: only the missing cell is computed
    cells[0].unlink()
    resumed = vc.benchmark.run(adata, **options)
    assert len(resumed) == len(first) and all(p.stat().st_mtime_ns == stamps[p] for p in cells[1:])

    # other parameters or another vclib version: earlier cells are not mixed in
    other = vc.benchmark.run(adata, **{**options, "models": {"no_change": vc.baselines.NoChange(),
                                                             "training_mean": vc.baselines.PerturbationMean()}})
    assert len(list((tmp_path / "cells").glob("*.csv"))) == 9 + 3
    assert not other[other["model"] == "training_mean"]["value"].equals(
        first[first["model"] == "training_mean"]["value"])
    monkeypatch.setattr(vc.benchmark, "__version__", "99.0")
    vc.benchmark.run(adata, **options)
    assert len(list((tmp_path / "cells").glob("*.csv"))) == 12 + 9


def test_run_table_columns_and_seeds(data):
    adata, _ = data
    table = vc.benchmark.run(adata, splits=["unseen_perturbation"], models=["linear"], metrics=["pearson_delta"],
                             seeds=[0, 1], split_options={"unseen_perturbation": {"n_folds": 2}}, progress=False)
    assert {"context", "perturbation", "metric", "value", "model", "split", "fold", "seed"} <= set(table.columns)
    assert sorted(table["seed"].unique()) == [0, 1]
    assert set(table["fold"]) == {"0", "1"}


def test_run_rejects_unknown_names(data):
    adata, _ = data
    with pytest.raises(VclibInputError, match="unknown split 'loco'"):
        vc.benchmark.run(adata, splits=["loco"], progress=False)
    with pytest.raises(VclibInputError, match="unknown model 'cpa'"):
        vc.benchmark.run(adata, models=["cpa"], progress=False)


@pytest.fixture(scope="module")
def saved_run(data, tmp_path_factory):
    """A finished run on disk: two splits, two seeds, two models and the ceiling."""
    adata, _ = data
    folder = tmp_path_factory.mktemp("saved") / "run"
    vc.benchmark.run(adata, splits=["unseen_perturbation", "unseen_context"], models=["no_change", "linear"],
                     metrics=["mse_delta"], seeds=[0, 1], split_options={"unseen_perturbation": {"n_folds": 2}},
                     progress=False, results_dir=folder)
    return folder


@pytest.mark.parametrize("filters", [{"model": "linear"}, {"model": ["ceiling", "no_change"], "seed": 1},
                                     {"split": "unseen_context", "fold": "C2"}, {"split": "unseen_perturbation",
                                                                                "fold": 0, "seed": [0]}])
def test_load_predictions_reads_only_the_chosen_cells(saved_run, monkeypatch, filters):
    full = vc.benchmark.load_predictions(saved_run)
    index = pd.read_csv(saved_run / "run_index.csv", dtype={"fold": str})
    chosen = index.copy()
    for key, values in filters.items():
        values = values if isinstance(values, list) else [values]
        chosen = chosen[chosen[key].astype(str).isin([str(v) for v in values])]
    assert 0 < len(chosen) < len(index)
    opened = []
    real = ad.read_h5ad
    monkeypatch.setattr(ad, "read_h5ad", lambda path, *a, **k: opened.append(path.name) or real(path, *a, **k))
    part = vc.benchmark.load_predictions(saved_run, **filters)
    assert sorted(opened) == sorted(chosen["predictions"])  # the chosen cells' files, each once, and no other
    # the same rows as the whole grid's load, values and labels
    keys = list(zip(chosen["model"], chosen["split"], chosen["fold"], chosen["seed"], strict=True))
    rows = full.obs_names[[k in set(keys) for k in zip(full.obs["model"], full.obs["split"], full.obs["fold"],
                                                      full.obs["seed"], strict=True)]]
    assert list(part.obs_names) == list(rows)
    np.testing.assert_array_equal(part.X, full[rows].X)
    pd.testing.assert_frame_equal(part.obs, full.obs.loc[rows])
    if "ceiling" in set(chosen["model"]):
        ceiling_rows = [r for r in rows if r.startswith("ceiling|")]
        pd.testing.assert_frame_equal(part.uns["scored_against"], full.uns["scored_against"].loc[ceiling_rows])
    else:
        assert "scored_against" not in part.uns


def test_load_predictions_needs_only_the_chosen_files(saved_run, tmp_path):
    """Cells of other models may be gone (e.g. not yet copied from a cluster): a filtered load does not notice."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(saved_run, copy)
    for path in (copy / "cells").glob("*.h5ad"):
        if not path.name.startswith("linear__"):
            path.unlink()
    linear = vc.benchmark.load_predictions(copy, model="linear")
    assert set(linear.obs["model"]) == {"linear"} and linear.n_obs > 0
    with pytest.raises(FileNotFoundError):
        vc.benchmark.load_predictions(copy)


def test_load_predictions_filter_matching_nothing_says_what_the_run_has(saved_run):
    with pytest.raises(VclibInputError, match="has no model 'mlp'; its models: ceiling, no_change, linear"):
        vc.benchmark.load_predictions(saved_run, model="mlp")
    with pytest.raises(VclibInputError, match="has no seed 7; its seeds: 0, 1"):
        vc.benchmark.load_predictions(saved_run, seed=7)
    with pytest.raises(VclibInputError, match=r"no cell of the run .* has split='unseen_perturbation', fold='C1'; "
                                              r"its \(split, fold, seed\): \(unseen_perturbation, 0, 0\)"):
        vc.benchmark.load_predictions(saved_run, split="unseen_perturbation", fold="C1")


def test_best_models_by_hand():
    rng = np.random.default_rng(0)
    perts = [f"p{i}" for i in range(40)]
    frames = []
    for model, shift in [("training_mean", 0.0), ("linear", 0.1), ("mlp", 0.3), ("ceiling", 0.5)]:
        frames.append(pd.DataFrame({"model": model, "split": "s", "fold": "0", "seed": 0, "context": "c",
                                    "perturbation": perts, "metric": "pearson_delta",
                                    "value": 0.2 + shift + rng.normal(0, 0.01, 40)}))
    partial = frames[0].assign(model="additive", value=np.r_[np.full(36, np.nan), np.full(4, 0.99)])
    best = vc.benchmark.best_models(pd.concat(frames + [partial]), n_boot=300).iloc[0]
    assert best["best_model"] == "mlp" and best["best_baseline"] == "linear"  # additive: 90% undefined, not ranked
    assert best["beats_best_baseline"] == "yes" and best["learned_vs_baseline"] == "yes"
    assert best["calibrated"] == pytest.approx((0.5 - 0.3) / (0.7 - 0.3), abs=0.05)  # (u - b) / (c - b)


def test_a_context_with_only_controls_is_left_out_of_the_folds():
    adata = vc.loaders.simulate(n_contexts=2, n_perturbations=8, n_combinations=0, n_genes=40, cells_per_condition=5,
                                coverage=1.0)
    only_controls = adata[(adata.obs["context"] == "C1") | (adata.obs["perturbation"] == "control")].copy()
    split = vc.splits.unseen_perturbation(only_controls, n_folds=2)
    assert set(split.loc[split["role"] == "test", "context"]) == {"C1"}
    tables = vc.benchmark.split_tables(only_controls, splits=["unseen_perturbation", "unseen_context"])
    assert tables.attrs["skipped"][0]["reason"] == "only one context (C1) has perturbed cells"
