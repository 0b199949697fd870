"""The fold protocol: every fold written as files round-trips (conditions, no test cell in training, every
context's controls), and a model answering through it is scored like a built-in one (an oracle scores perfectly)."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import vclib as vc
from vclib.schema import VclibInputError


@pytest.fixture(scope="module")
def data():
    return vc.loaders.simulate(n_contexts=3, n_perturbations=8, n_combinations=3, n_genes=60, cells_per_condition=12,
                               control_cells=30, seed=5)


def _ids(obs: pd.DataFrame) -> set[str]:
    return {f"{c}|{p}" for c, p in zip(obs["context"].astype(str), obs["perturbation"].astype(str), strict=True)}


@pytest.mark.parametrize("split", ["unseen_context", "unseen_perturbation", "combinations"])
def test_export_round_trips_each_fold(data, split, tmp_path):
    table = vc.splits.make(split, data, seed=0)
    folder = vc.splits.export(data, table, tmp_path / "folds")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["vclib_version"] == vc.__version__
    assert manifest["data_fingerprint"] == vc.benchmark.fingerprint(data)
    assert {(f["split"], f["fold"]) for f in manifest["folds"]} == set(vc.splits.folds(table))
    every_control = data.obs["perturbation"] == "control"
    for entry in manifest["folds"]:
        by_role = vc.splits.roles(table, entry["split"], entry["fold"])
        train = ad.read_h5ad(folder / entry["folder"] / "train.h5ad")
        test = pd.read_csv(folder / entry["folder"] / "test.csv", dtype={"context": str, "perturbation": str})
        seen = _ids(train.obs)
        assert not seen & set(by_role["test"])  # no cell of a test condition
        assert seen == set(by_role["train"]) & _ids(data.obs)  # every training condition, nothing else
        assert (train.obs["perturbation"] == "control").sum() == every_control.sum()  # every context's controls
        expected = data[data.obs_names.isin(train.obs_names)]
        assert train.n_obs == expected.n_obs and (train.X != expected.X).nnz == 0  # the cells as they were
        assert np.array_equal(train.layers["counts"].toarray(), expected.layers["counts"].toarray())
        assert _ids(test) == set(by_role["test"])
        counts = data.obs.groupby(["context", "perturbation"], observed=True).size()
        assert test["n_cells"].tolist() == [counts[(c, p)] for c, p in zip(test["context"], test["perturbation"],
                                                                          strict=True)]
        assert ("n_seen_singles" in test) == (split == "combinations")


def test_an_oracle_answering_through_the_protocol_scores_perfectly(data, tmp_path):
    table = vc.splits.unseen_context(data)
    folder = vc.splits.export(data, table, tmp_path / "folds")
    truth = vc.pseudobulk.pseudobulk(data)  # the observed answer: what no real model has
    for entry in json.loads((folder / "manifest.json").read_text())["folds"]:
        test = pd.read_csv(folder / entry["folder"] / "test.csv", dtype=str)
        answer = truth[[f"{c}|{p}" for c, p in zip(test["context"], test["perturbation"], strict=True)]]
        ad.AnnData(np.asarray(answer.X), obs=test[["context", "perturbation"]],
                   var=pd.DataFrame(index=truth.var_names)).write_h5ad(
            folder / "predictions" / f"{entry['folder']}.h5ad")
    scores = vc.benchmark.run(data, splits=table, models={"oracle": vc.models.ExternalPredictions(folder)},
                              metrics=["mse_delta", "pearson_delta", "discrimination_score_l1"], progress=False,
                              include_ceiling=False)
    values = scores.groupby("metric")["value"]
    assert values.max()["mse_delta"] == pytest.approx(0, abs=1e-12)
    assert values.min()["pearson_delta"] == pytest.approx(1)
    assert values.min()["discrimination_score_l1"] == 1.0


def test_export_refuses_what_it_cannot_write_honestly(data, tmp_path):
    table = vc.splits.unseen_context(data)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "mine.txt").write_text("keep")
    with pytest.raises(VclibInputError, match="is not empty; export writes into a new or empty folder"):
        vc.splits.export(data, table, tmp_path / "used")
    assert (tmp_path / "used" / "mine.txt").read_text() == "keep"
    two_seeds = vc.benchmark.split_tables(data, splits=["unseen_context"], seeds=[0, 1])
    with pytest.raises(VclibInputError, match=r"holds 2 seeds .*export one seed per folder"):
        vc.splits.export(data, two_seeds, tmp_path / "seeds")
    other = table.assign(perturbation=table["perturbation"] + "_x")
    with pytest.raises(VclibInputError, match=r"test condition\(s\) of the split table are not in the data"):
        vc.splits.export(data, other, tmp_path / "other")
    assert not (tmp_path / "seeds").exists() and not (tmp_path / "other").exists()


def test_external_predictions_name_a_fold_the_folder_does_not_hold(data, tmp_path):
    folder = vc.splits.export(data, vc.splits.unseen_context(data), tmp_path / "folds")
    model = vc.models.ExternalPredictions(folder).select("unseen_perturbation", "0")
    with pytest.raises(VclibInputError, match=r"holds no fold '0' of split 'unseen_perturbation'"):
        model._load()


def test_conditions_a_model_declines_are_left_out_and_said(data, tmp_path):
    table = vc.splits.unseen_context(data)
    folder = vc.splits.export(data, table, tmp_path / "folds")
    truth = vc.pseudobulk.pseudobulk(data)
    folds = json.loads((folder / "manifest.json").read_text())["folds"]
    declined = {}
    for k, entry in enumerate(folds):
        test = pd.read_csv(folder / entry["folder"] / "test.csv", dtype=str)
        ids = [f"{c}|{p}" for c, p in zip(test["context"], test["perturbation"], strict=True)]
        # the first fold declines everything, the others their first two conditions
        declined[entry["fold"]] = ids if k == 0 else ids[:2]
        kept = [i for i in ids if i not in declined[entry["fold"]]]
        answer = ad.AnnData(np.asarray(truth[kept].X), obs=pd.DataFrame(
            {"context": [i.split("|")[0] for i in kept], "perturbation": [i.split("|")[1] for i in kept]}),
            var=pd.DataFrame(index=truth.var_names))
        answer.uns["not_applicable"] = {"conditions": declined[entry["fold"]], "reason": "no shift to add"}
        answer.write_h5ad(folder / "predictions" / f"{entry['folder']}.h5ad")
    scores = vc.benchmark.run(data, splits=table, models={"partial": vc.models.ExternalPredictions(folder)},
                              metrics=["pearson_delta"], progress=False, include_ceiling=False)
    for entry in folds:
        scored = scores[scores["fold"] == entry["fold"]]
        test = vc.splits.roles(table, "unseen_context", entry["fold"])["test"]
        assert set(scored["context"] + "|" + scored["perturbation"]) == set(test) - set(declined[entry["fold"]])
    assert scores["value"].min() == pytest.approx(1)  # what it did predict is scored as usual
    said = " ".join(n["reason"] for n in scores.attrs["notes"] + scores.attrs["skipped"])
    assert "no condition of this fold is predicted: no shift to add" in said  # the first fold: nothing to score
    assert "2 test condition(s) not predicted: no shift to add" in said


@pytest.mark.notebooks
def test_notebooks_02_and_03_take_external_predictions(tmp_path):
    from vclib import cli

    sim = vc.loaders.simulate(n_contexts=3, n_perturbations=8, n_combinations=0, n_genes=80, cells_per_condition=15,
                              control_cells=30, coverage=1.0, seed=6)
    del sim.uns["simulation"]
    sim.write_h5ad(tmp_path / "screen.h5ad")
    adata = vc.loaders.read(tmp_path / "screen.h5ad")  # what the notebooks read
    folder = vc.splits.export(adata, vc.splits.unseen_context(adata), tmp_path / "folds")
    truth = vc.pseudobulk.pseudobulk(adata)
    for entry in json.loads((folder / "manifest.json").read_text())["folds"]:
        test = pd.read_csv(folder / entry["folder"] / "test.csv", dtype=str)
        ids = [f"{c}|{p}" for c, p in zip(test["context"], test["perturbation"], strict=True)]
        answer = ad.AnnData(np.asarray(truth[ids].X), obs=test[["context", "perturbation"]],
                            var=pd.DataFrame(index=truth.var_names))
        answer.write_h5ad(folder / "predictions" / f"{entry['folder']}.h5ad")
    code = cli.main(["run", str(tmp_path / "screen.h5ad"), "-p", "MODELS", "['training_mean']", "-p", "N_FOLDS", "2",
                     "-p", "SPLITS", "['unseen_context', 'unseen_perturbation']", "-p", "MODEL", "oracle",
                     "-p", "EXTERNAL", f"{{'oracle': '{folder}'}}", "--results", str(tmp_path), "--name", "r"])
    assert code == 0
    run = tmp_path / "r"
    scores = pd.read_csv(run / "benchmark_scores.csv")
    oracle = scores[(scores["model"] == "oracle") & (scores["metric"] == "pearson_delta")]
    assert set(oracle["split"]) == {"unseen_context"} and oracle["value"].min() == pytest.approx(1)
    summary = pd.read_csv(run / "benchmark_summary.csv")
    versus = pd.read_csv(run / "benchmark_vs_baseline.csv")
    assert "oracle" in set(summary["model"]) and "oracle" in set(versus["model"])
    skipped = pd.read_csv(run / "skipped.csv", keep_default_na=False)
    assert skipped["reason"].str.contains("the model was not run on it").any()  # no answers for unseen_perturbation
    conditions = pd.read_csv(run / "failures_conditions.csv")
    assert "oracle" in set(conditions["model"])  # notebook 03 characterises it like any model
