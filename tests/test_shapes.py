"""`vclib run` finishes, and says why it skipped what it skipped, on every shape of screen: the real files in
../shared/real-data (with their own keys, skipped where absent) and the simulator cut into the shapes real screens
come in (one context, two contexts, panels unique to a context, three cells per condition, drug names; one
perturbation in many contexts is the README's `kang.h5ad`, run by tests/test_readme.py)."""

from __future__ import annotations

import importlib.util
import sys
from html import escape
from pathlib import Path

import pandas as pd
import pytest

import vclib as vc
from vclib import cli
from vclib.report import SKIPPED_FILE

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "real-data"
# quick settings: fewer folds, models and MLP widths than a real run (the MLP's training is the slow part, the
# narrowest network's most of all: it rarely converges before max_iter), the same code paths
QUICK = ["-p", "N_FOLDS", "2", "-p", "MODELS", "['no_change', 'training_mean', 'perturbation_mean', 'linear']",
         "-p", "MODEL", "linear", "-p", "CAPACITY_WIDTHS", "[16, 128]"]
REAL_SHAPES = ["kang_muscat", "kang_distinct", "glioblastoma", "norman+mcfaline", "norman_k562", "mcfaline",
               "signatures"]  # every folder, and the named shapes; the script runs more


def _real_shapes():
    spec = importlib.util.spec_from_file_location("real_data_runs", ROOT / "benchmarks" / "real_data_runs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("real_data_runs", module)
    spec.loader.exec_module(module)
    return module


SIM_SHAPES = {  # name: simulate() settings; each becomes a user's h5ad file (no ground truth in it)
    "many_perturbations_one_context": {"n_contexts": 1, "n_perturbations": 20, "n_combinations": 4},
    "two_contexts_with_unique_panels": {"n_contexts": 2, "n_perturbations": 16, "n_combinations": 0,
                                        "coverage": 1.0},
    "drug_names_three_cells": {"n_contexts": 3, "n_perturbations": 10, "n_combinations": 0,
                               "cells_per_condition": 3},
}


def _sim_file(name: str, folder: Path) -> Path:
    adata = vc.loaders.simulate(**{"n_genes": 120, "cells_per_condition": 20, "control_cells": 40,
                                   **SIM_SHAPES[name]}, seed=1)
    if name.startswith("two_contexts"):  # each context keeps its own half of the panel: nothing is shared
        perturbations = sorted(set(adata.obs["perturbation"]) - {"control"})
        own = {"C1": set(perturbations[::2]), "C2": set(perturbations[1::2])}
        keep = [p == "control" or p in own[c] for p, c in zip(adata.obs["perturbation"], adata.obs["context"],
                                                               strict=True)]
        adata = adata[keep].copy()
    del adata.uns["simulation"]
    if name.startswith("drug_names"):  # compounds and a cytokine, not gene symbols
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
        assert escape(analysis) in index
    return entries


@pytest.mark.notebooks
@pytest.mark.parametrize("name", list(SIM_SHAPES))
def test_vclib_run_finishes_on_simulated_shape(name, tmp_path):
    path = _sim_file(name, tmp_path)
    code = cli.main(["run", str(path), *QUICK, "--results", str(tmp_path), "--name", "r"])
    entries = _check_run(tmp_path / "r", code)
    analyses = set(entries["analysis"])
    if name == "many_perturbations_one_context":
        assert "split unseen_context" in analyses
    if name.startswith("two_contexts"):  # held-out context: no perturbation of it was measured elsewhere
        pairs = pd.read_csv(tmp_path / "r" / "transfer_pairs.csv")
        assert pairs["n_shared"].fillna(0).eq(0).all()  # nothing to transfer on, and the table says so
    if name.startswith("drug_names"):  # no target among the genes: the linear model says so
        notes = entries[entries["kind"] == "note"]
        assert notes["reason"].str.contains("targets are among the genes").any()


@pytest.mark.notebooks
@pytest.mark.realdata
@pytest.mark.parametrize("short", REAL_SHAPES)
def test_vclib_run_finishes_on_real_shape(short, tmp_path):
    if not REAL.exists():
        pytest.skip(f"{REAL} not found: the real-data folder is absent on this machine")
    shapes = {name.split(" ")[0]: (name, spec) for name, spec in _real_shapes().shapes(tmp_path).items()}
    name, (path, extra) = shapes[short]
    code = cli.main(["run", str(path), *extra, *QUICK, "--results", str(tmp_path), "--name", "r"])
    entries = _check_run(tmp_path / "r", code)
    if short == "signatures":
        assert {"split unseen_perturbation", "split unseen_context"} <= set(entries["analysis"])
        assert entries.loc[entries["notebook"] == "02", "reason"].str.contains("without cells").all()
    if short.startswith("kang"):  # one perturbation per cell type: nothing to hold out within a context
        assert "split unseen_perturbation" in set(entries["analysis"])
