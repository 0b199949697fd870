"""The runner: parameters, never overwriting a run, resuming; and every notebook executed with papermill."""

from __future__ import annotations

import json
import shutil

import anndata as ad
import nbformat
import pandas as pd
import pytest

import vclib as vc
from vclib import cli, runner
from vclib.schema import VclibInputError

FAST = {"FAST": True}


def test_parse_value_like_papermill():
    assert runner.parse_value("3") == 3
    assert runner.parse_value("0.25") == 0.25
    assert runner.parse_value("false") is False
    assert runner.parse_value("None") is None
    assert runner.parse_value("../data/my screen.h5ad") == "../data/my screen.h5ad"


def test_unknown_parameter_lists_the_valid_ones(tmp_path):
    with pytest.raises(VclibInputError, match=r"no notebook has a parameter 'SEEED'; parameters are: .*SEED"):
        runner.run(parameters={"SEEED": 1}, results_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing was written


def test_cli_reports_bad_input(tmp_path, capsys):
    code = cli.main(["run", "-p", "NOPE", "1", "--results", str(tmp_path)])
    assert code == 2
    assert "no notebook has a parameter 'NOPE'" in capsys.readouterr().err


def test_existing_run_folder_is_never_overwritten(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("earlier results")
    with pytest.raises(VclibInputError, match=r"exists already; vclib never overwrites a run"):
        runner.run(parameters=FAST, results_dir=tmp_path, name="mine")
    assert (tmp_path / "mine" / "keep.txt").read_text() == "earlier results"


def test_resume_needs_same_parameters(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / runner.RUN_FILE).write_text(json.dumps(
        {"vclib_version": vc.__version__, "parameters": {"SEED": 1}, "notebooks": []}))
    with pytest.raises(VclibInputError, match=r"resuming needs the same parameters"):
        runner.run(parameters={"SEED": 2}, resume=run_dir)


@pytest.mark.notebooks
def test_run_all_notebooks(tmp_path):
    """`vclib run` executes every notebook in order and the tables they promise are there and sensible."""
    code = cli.main(["run", "simulated", "-p", "FAST", "True", "--results", str(tmp_path), "--name", "t"])
    assert code == 0
    run_dir = tmp_path / "t"
    for path in runner.notebooks():
        executed = nbformat.read(run_dir / path.name, as_version=4)
        assert all(o.get("output_type") != "error" for c in executed.cells for o in c.get("outputs", []))
        assert (run_dir / path.with_suffix(".html").name).stat().st_size > 10_000
    record = json.loads((run_dir / runner.RUN_FILE).read_text())
    assert record["parameters"] == {"FAST": True, "DATASET": "simulated"}

    # notebook 01's tables, checked against the data they describe
    data = vc.loaders.load("simulated", small=True)
    counts = pd.read_csv(run_dir / "coverage_cells.csv", index_col=0)
    pd.testing.assert_frame_equal(counts, vc.coverage.cell_counts(data), check_names=False)
    pb = ad.read_h5ad(run_dir / "pseudobulk.h5ad")
    assert pb.obs["n_cells"].sum() == data.n_obs
    assert (run_dir / "coverage_heatmap.png").stat().st_size > 1000

    # notebook 02's tables: every model of the notebook on every split, scores consistent with the summary
    scores = pd.read_csv(run_dir / "benchmark_scores.csv", dtype={"fold": str})
    summary = pd.read_csv(run_dir / "benchmark_summary.csv")
    assert {"no_change", "training_mean", "linear", "mlp", "ceiling"} <= set(scores["model"])
    assert set(scores["split"]) == {"unseen_perturbation", "unseen_context", "combinations"}  # SPLITS = None
    row = summary[(summary["model"] == "linear") & (summary["split"] == "unseen_context")
                  & (summary["metric"] == "pearson_delta")].iloc[0]
    chosen = scores[(scores["model"] == "linear") & (scores["split"] == "unseen_context")
                    & (scores["metric"] == "pearson_delta")]["value"]
    assert row["mean"] == pytest.approx(chosen.mean())
    best = pd.read_csv(run_dir / "benchmark_best.csv")
    ranked = best["best_model"].notna()  # the other rows say why nothing could be ranked
    assert best.loc[~ranked, "note"].str.len().gt(10).all()
    assert set(best.loc[ranked, "beats_best_baseline"]) <= {"yes", "no", "tie", "a baseline is best"}
    assert any((run_dir / "benchmark" / "cells").glob("*.csv"))

    # notebook 03's tables and the run's report
    conditions = pd.read_csv(run_dir / "failures_conditions.csv", dtype={"fold": str})
    assert len(conditions) == (scores["perturbation"] != "*").sum()
    assert conditions["n_training_contexts"].notna().all()
    assert (run_dir / "failures_hit_rate.csv").exists() and (run_dir / "failures_worst.csv").exists()
    index = (run_dir / "index.html").read_text()
    for path in runner.notebooks():
        assert path.with_suffix(".html").name in index
    assert best["best_model"].iloc[0] in index

    # a second run goes to a new folder; resuming a finished run does nothing
    before = (run_dir / "01_context_coverage.ipynb").stat().st_mtime_ns
    assert runner.run(parameters={"FAST": True, "DATASET": "simulated"}, resume=run_dir, html=False) == run_dir
    assert (run_dir / "01_context_coverage.ipynb").stat().st_mtime_ns == before


@pytest.mark.notebooks
def test_interrupted_run_resumes(tmp_path):
    run_dir = tmp_path / "r"
    small = {**FAST, "MODELS": ["no_change", "training_mean"], "SPLITS": ["unseen_context"]}  # the resume is tested
    runner.run(parameters=small, results_dir=tmp_path, name="r", html=False)
    first = sorted(runner.notebooks())[0].name
    shutil.move(run_dir / first, tmp_path / "kept.ipynb")  # as if the run stopped before it finished
    runner.run(parameters=small, resume=run_dir, html=False)
    assert (run_dir / first).exists()
