"""`vclib run` finishes, and says why it skipped what it skipped, on every shape of screen: the real files in
../shared/real-data (with their own keys, skipped where absent) and the simulator cut into the shapes real screens
come in (one perturbation in many contexts, one context, two contexts, panels unique to a context, three cells per
condition, drug names)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import vclib as vc
from vclib import cli
from vclib.report import SKIPPED_FILE

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "real-data"
# quick settings: fewer folds and models than a real run, the same code paths
QUICK = ["-p", "N_FOLDS", "2", "-p", "MODELS", "['no_change', 'training_mean', 'perturbation_mean', 'linear', 'mlp']"]


def _real_shapes():
    spec = importlib.util.spec_from_file_location("real_data_runs", ROOT / "benchmarks" / "real_data_runs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("real_data_runs", module)
    spec.loader.exec_module(module)
    return module


SIM_SHAPES = {  # name: simulate() settings; each becomes a user's h5ad file (no ground truth in it)
    "one_perturbation_many_contexts": {"n_contexts": 5, "n_perturbations": 1, "n_combinations": 0, "coverage": 1.0},
    "many_perturbations_one_context": {"n_contexts": 1, "n_perturbations": 20, "n_combinations": 4},
    "two_contexts": {"n_contexts": 2, "n_perturbations": 12, "n_combinations": 0},
    "panels_unique_to_contexts": {"n_contexts": 3, "n_perturbations": 15, "n_combinations": 0, "coverage": 0.34},
    "three_cells_per_condition": {"n_contexts": 3, "n_perturbations": 12, "n_combinations": 3,
                                  "cells_per_condition": 3},
    "drug_names": {"n_contexts": 3, "n_perturbations": 10, "n_combinations": 0},
}


def _sim_file(name: str, folder: Path) -> Path:
    adata = vc.loaders.simulate(**{"n_genes": 120, "cells_per_condition": 20, "control_cells": 40,
                                   **SIM_SHAPES[name]}, seed=1)
    del adata.uns["simulation"]
    if name == "drug_names":  # compounds and a cytokine, not gene symbols
        names = {p: f"compound-{i} (10 uM)" for i, p in enumerate(sorted(set(adata.obs["perturbation"]) - {"control"}))}
        names[sorted(names)[0]] = "IFN-beta"
        adata.obs["perturbation"] = adata.obs["perturbation"].astype(str).replace(names)
    path = folder / f"{name}.h5ad"
    adata.write_h5ad(path)
    return path


def _check_run(run_dir: Path, code: int):
    assert code == 0
    assert (run_dir / "index.html").exists()
    entries = pd.read_csv(run_dir / SKIPPED_FILE, dtype=str, keep_default_na=False) \
        if (run_dir / SKIPPED_FILE).exists() else pd.DataFrame(columns=["analysis", "reason"])
    assert (entries["reason"].str.len() > 10).all()  # every skipped analysis says why
    index = (run_dir / "index.html").read_text()
    for analysis in entries["analysis"]:
        assert analysis.replace("&", "&amp;").replace("<", "&lt;") in index
    return entries


@pytest.mark.notebooks
@pytest.mark.parametrize("name", list(SIM_SHAPES))
def test_vclib_run_finishes_on_simulated_shape(name, tmp_path):
    path = _sim_file(name, tmp_path)
    code = cli.main(["run", str(path), *QUICK, "--results", str(tmp_path), "--name", "r"])
    entries = _check_run(tmp_path / "r", code)
    analyses = set(entries["analysis"])
    if name == "one_perturbation_many_contexts":
        assert "split unseen_perturbation" in analyses  # nothing to hold out within a context
        identical = pd.read_csv(tmp_path / "r" / "benchmark" / "identical_models.csv")
        assert identical["models"].str.contains("training_mean = perturbation_mean").any()
    if name == "many_perturbations_one_context":
        assert "split unseen_context" in analyses
    if name == "drug_names":  # no target among the genes: the linear model says so
        notes = entries[entries["kind"] == "note"]
        assert notes["reason"].str.contains("targets are among the genes").any()


@pytest.mark.notebooks
@pytest.mark.realdata
@pytest.mark.parametrize("index", range(9))
def test_vclib_run_finishes_on_real_shape(index, tmp_path):
    if not REAL.exists():
        pytest.skip(f"{REAL} not found: the real-data folder is absent on this machine")
    shapes = list(_real_shapes().shapes(tmp_path).items())
    assert len(shapes) == 9  # keep the parametrisation in step with benchmarks/real_data_runs.py
    name, (path, extra) = shapes[index]
    code = cli.main(["run", str(path), *extra, *QUICK, "--results", str(tmp_path), "--name", "r"])
    entries = _check_run(tmp_path / "r", code)
    if name.startswith("signatures"):
        assert {"split unseen_perturbation", "split unseen_context"} <= set(entries["analysis"])
        assert np.all(entries.loc[entries["notebook"] == "02", "reason"].str.contains("without cells"))
