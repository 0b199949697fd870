"""Every shell and Python block of the README runs as written, so the README cannot drift from the code.

The blocks run in README order, grouped as a user follows them (a group's Python blocks share one namespace, as
in a notebook), in a fresh folder that looks like a user's checkout: the project's ``.venv``, and the files the
README names (``path/to/screen.h5ad``, ``kang.h5ad``, ``signatures.h5ad``) written from the simulator with the
README's keys. Downloads come from an HTTP server on 127.0.0.1 through ``VCLIB_DATA_MIRROR``. ``make`` commands
run as ``make -n`` (a dry run that checks the target and the command it would run): ``make test`` is this very
suite, and what ``make run`` runs is what the README's quick run (``--name quick``) runs at a smaller size; that
run's tables are checked here against the data they describe.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import anndata as ad
import nbformat
import numpy as np
import pandas as pd
import pytest
from conftest import ROOT
from scipy import sparse

import vclib as vc
from vclib import runner

README = ROOT / "README.md"
FENCE = re.compile(r"^```(bash|python)\n(.*?)^```", re.M | re.S)
# (section, language) -> group; a group runs its blocks in README order in one folder
GROUPS = {
    ("Two commands", "bash"): "make",  # and the conda steps, told apart by their first word in _group()
    ("The notebooks, in order", "bash"): "runs",
    ("Failure characterisation", "python"): "runs",  # reads the run `--name quick` of the block above
    ("Bring your own h5ad", "bash"): "own files",
    ("Bring your own h5ad", "python"): "python",
    ("Past one machine (Dask)", "python"): "python",
    ("Context coverage", "python"): "python",
    ("Scoring predictions", "python"): "python",
    ("Scoring predictions", "bash"): "evaluate",
    ("Running a benchmark", "python"): "python",
    ("Coverage versus capacity", "python"): "python",
    ("Models in their own environments: the fold protocol", "python"): "python",
    ("Public datasets", "python"): "datasets",
    ("Public datasets", "bash"): "datasets",
}


def readme_blocks(text: str) -> list[tuple[str, str, str]]:
    """(section heading, language, code) of every fenced bash/python block, in order."""
    out = []
    for match in FENCE.finditer(text):
        headings = re.findall(r"^## (.+)$", text[: match.start()], re.M)
        out.append((headings[-1] if headings else "", match.group(1), match.group(2)))
    return out


def _group(section: str, language: str, code: str) -> str | None:
    group = GROUPS.get((section, language))
    return "conda" if group == "make" and not code.startswith("make") else group


def test_every_block_belongs_to_a_group():
    blocks = readme_blocks(README.read_text())
    assert len(blocks) >= 10
    unassigned = [(s, lang, code.splitlines()[0]) for s, lang, code in blocks if _group(s, lang, code) is None]
    assert not unassigned, f"README blocks no test runs (add their section to GROUPS): {unassigned}"


def test_block_parser_sees_each_fence():
    text = "## A\n```bash\necho 1\n```\ntext\n## B\n```python\nx = 1\n```\n```text\nnot code\n```\n"
    assert readme_blocks(text) == [("A", "bash", "echo 1\n"), ("B", "python", "x = 1\n")]


# ------------------------------------------------------------------------------------------ the user's folder


def _contract_to_user(adata: ad.AnnData, *, perturbation_key: str, context_key: str, control: str,
                      sep: str = "+") -> ad.AnnData:
    """A simulated dataset as a user's file: raw counts in X, the user's column names and labels."""
    labels = adata.obs["perturbation"].astype(str).str.replace("+", sep, regex=False).replace({"control": control})
    obs = pd.DataFrame({perturbation_key: labels.to_numpy(), context_key: adata.obs["context"].astype(str).to_numpy()},
                       index=adata.obs_names)
    return ad.AnnData(X=sparse.csr_matrix(adata.layers["counts"]), obs=obs, var=pd.DataFrame(index=adata.var_names))


def _write_user_files(folder: Path) -> None:
    small = {"n_genes": 120, "cells_per_condition": 20, "control_cells": 40, "seed": 3}
    screen = vc.loaders.simulate(n_contexts=2, n_perturbations=12, n_combinations=3, **small)
    (folder / "path" / "to").mkdir(parents=True)
    screen_file = _contract_to_user(screen, perturbation_key="guide_target", context_key="cell_line",
                                    control="non-targeting", sep="_")
    screen_file.obs["cell_line"] = screen_file.obs["cell_line"].replace({"C1": "K562", "C2": "RPE1"})
    screen_file.write_h5ad(folder / "path" / "to" / "screen.h5ad")
    kang = vc.loaders.simulate(n_contexts=4, n_perturbations=1, n_combinations=0, coverage=1.0, **small)
    kang_file = _contract_to_user(kang, perturbation_key="stim", context_key="cell", control="ctrl")
    kang_file.obs["stim"] = np.where(kang_file.obs["stim"] == "ctrl", "ctrl", "stim")
    kang_file.X = sparse.csr_matrix(np.asarray(kang.X.todense() if sparse.issparse(kang.X) else kang.X) / np.log(2))
    kang_file.write_h5ad(folder / "kang.h5ad")  # log2(x + 1) values, as scater's logNormCounts writes
    deltas = vc.pseudobulk.deltas(vc.pseudobulk.pseudobulk(screen))
    ad.AnnData(X=np.asarray(deltas.X), obs=deltas.obs[["perturbation", "context"]].astype(str).reset_index(drop=True),
               var=pd.DataFrame(index=deltas.var_names)).write_h5ad(folder / "signatures.h5ad")


def _write_prediction_files(folder: Path) -> None:
    """What the `vclib evaluate` block scores: a prediction and an observation in cell-eval's layout, and a model's
    and a baseline's pseudobulk predictions for the screen, in the screen's own layout."""
    for name, seed in (("real", 0), ("pred", 1)):
        sim = vc.loaders.simulate(n_contexts=1, n_perturbations=8, n_combinations=0, n_genes=80,
                                  cells_per_condition=20, control_cells=40, seed=seed)
        obs = pd.DataFrame({"target_gene": sim.obs["perturbation"].astype(str).replace(
            {"control": "non-targeting"}).to_numpy()}, index=sim.obs_names)
        ad.AnnData(X=sparse.csr_matrix(sim.X, dtype=np.float32), obs=obs,
                   var=pd.DataFrame(index=sim.var_names)).write_h5ad(folder / f"{name}.h5ad")
    screen = vc.loaders.read(folder / "path" / "to" / "screen.h5ad", perturbation_key="guide_target",
                             context_key="cell_line", control="non-targeting")
    pb = vc.pseudobulk.pseudobulk(screen)
    pb = pb[pb.obs["perturbation"] != "control"]
    obs = pd.DataFrame({"guide_target": pb.obs["perturbation"].astype(str).to_numpy(),
                        "cell_line": pb.obs["context"].astype(str).to_numpy()})
    noisy = np.asarray(pb.X) + np.random.default_rng(0).normal(scale=0.05, size=pb.shape)
    ad.AnnData(X=np.clip(noisy, 0, None), obs=obs, var=pd.DataFrame(index=pb.var_names)).write_h5ad(
        folder / "my_model.h5ad")
    means = pd.DataFrame(np.asarray(pb.X)).groupby(obs["cell_line"].to_numpy()).transform("mean").to_numpy()
    ad.AnnData(X=means, obs=obs, var=pd.DataFrame(index=pb.var_names)).write_h5ad(folder / "my_training_mean.h5ad")


def _mirror_files(folder: Path) -> None:
    """The registry's kang_2018 file in pertpy's layout (counts layer, obs 'label' and 'cell_type')."""
    sim = vc.loaders.simulate(n_contexts=3, n_perturbations=1, n_combinations=0, coverage=1.0, n_genes=60,
                              cells_per_condition=15, control_cells=15, seed=4)
    obs = pd.DataFrame({"label": np.where(sim.obs["perturbation"] == "control", "ctrl", "stim"),
                        "cell_type": sim.obs["context"].astype(str).to_numpy()}, index=sim.obs_names)
    counts = sparse.csr_matrix(sim.layers["counts"])
    ad.AnnData(X=counts.copy(), obs=obs, var=pd.DataFrame(index=sim.var_names),
               layers={"counts": counts}).write_h5ad(folder / "kang_2018.h5ad")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def _files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("readme-files")
    _write_user_files(folder)
    _write_prediction_files(folder)
    (folder / "mirror").mkdir()
    _mirror_files(folder / "mirror")
    return folder


@pytest.fixture
def user_folder(_files, tmp_path, monkeypatch):
    """A folder like a user's checkout, its environment, and a mirror on 127.0.0.1; yields the folder."""
    shutil.copytree(_files, tmp_path, dirs_exist_ok=True)
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    served = tmp_path / "mirror"
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    for name, value in {"VCLIB_DATA_MIRROR": f"http://127.0.0.1:{httpd.server_address[1]}",
                        "VCLIB_DATA_DIR": str(tmp_path / "cache"), "MPLBACKEND": "Agg",
                        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    httpd.shutdown()
    httpd.server_close()
    thread.join()


# ------------------------------------------------------------------------------------------ running the blocks

MAKE_DRY_RUN = 'make() { command make -n "$@"; }\n'  # see the module docstring


def _run_bash(code: str, folder: Path, env: dict | None = None) -> str:
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", MAKE_DRY_RUN + code], cwd=folder,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, f"README block failed (exit {done.returncode}):\n{code}\n{done.stdout[-3000:]}" \
                                 f"\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.notebooks
@pytest.mark.parametrize("group", sorted({*GROUPS.values(), "conda"}))
def test_readme_block_group_runs_as_written(group, user_folder):
    namespace: dict = {}
    blocks = [(s, lang, code) for s, lang, code in readme_blocks(README.read_text()) if _group(s, lang, code) == group]
    assert blocks
    # the conda steps run with the project's environment as the active one ($CONDA_PREFIX a fresh folder); the
    # kernel they register there is the one `make venv` registered
    conda = {"PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
             "CONDA_PREFIX": str(user_folder / "conda-env")}
    for section, language, code in blocks:
        if language == "bash":
            printed = _run_bash(code, ROOT if group in ("make", "conda") else user_folder,  # they read the checkout
                                conda if group == "conda" else None)
            if group == "make":
                assert "vclib run -p SEED 3" in printed and "pytest" in printed  # what the targets would run
        else:
            exec(compile(code, f"README.md ({section})", "exec"), namespace)  # noqa: S102 - the README's own code
    if group == "runs":
        for name in ("divergence-0", "divergence-1"):
            assert (user_folder / "results" / name / "index.html").exists()
        _check_quick_run(user_folder / "results" / "quick")
        assert {"model", "metric", "value"} <= set(namespace["table"].columns)
    if group == "own files":
        runs = {Path(json.loads((d / runner.RUN_FILE).read_text())["parameters"]["DATASET"]).name: d
                for d in (user_folder / "results").iterdir()}
        assert sorted(runs) == ["kang.h5ad", "screen.h5ad", "signatures.h5ad"]
        assert all((d / "index.html").exists() for d in runs.values())
        # one perturbation in many cell types: nothing to hold out within a cell type, and the training mean is
        # the perturbation mean there (shown once, as identical)
        skipped = pd.read_csv(runs["kang.h5ad"] / "skipped.csv", keep_default_na=False)
        assert "split unseen_perturbation" in set(skipped["analysis"])
        identical = pd.read_csv(runs["kang.h5ad"] / "benchmark" / "identical_models.csv")
        assert any({"training_mean", "perturbation_mean"} <= set(m.split(" = ")) for m in identical["models"])
    if group == "python":
        assert {"linear", "training_mean", "ceiling"} <= set(namespace["summary"]["model"])
        assert set(namespace["capacity"]["width"]) == {2, 16, 128}
        assert (user_folder / "results" / "my_benchmark" / "run_index.csv").exists()
        assert (user_folder / "results" / "grid" / "run_index.csv").exists()  # the grid run on the LocalCluster
        assert set(namespace["linear"].obs["model"]) == {"linear"} and {"linear", "ceiling"} <= set(
            namespace["grid"]["model"])
        assert {"my_model", "linear"} <= set(namespace["scores"]["model"])  # the fold protocol's answers, scored
    if group == "conda":
        installed = user_folder / "conda-env" / "share" / "jupyter" / "lab" / "settings" / "overrides.d" / "vclib.json"
        assert installed.read_text() == (ROOT / "jupyter-config" / "lab-settings.json").read_text()
    if group == "evaluate":
        for out in ("scores", "my_model_scores"):
            summary = pd.read_csv(user_folder / out / "summary.csv")
            assert {"prediction", "ceiling"} <= set(summary["model"])
    if group == "datasets":
        assert (user_folder / "cache" / "kang_2018.h5ad").exists()
        assert set(namespace["kang"].obs["perturbation"]) == {"control", "stim"}


def _check_quick_run(run_dir: Path) -> None:
    """`vclib run -p FAST True` executed every notebook in order; the tables they promise are there and agree with
    the data they describe; resuming the finished run does nothing."""
    for path in runner.notebooks():
        executed = nbformat.read(run_dir / path.name, as_version=4)
        assert all(o.get("output_type") != "error" for c in executed.cells for o in c.get("outputs", []))
        assert (run_dir / path.with_suffix(".html").name).stat().st_size > 10_000
    assert json.loads((run_dir / runner.RUN_FILE).read_text())["parameters"] == {"FAST": True}

    # notebook 01's tables, checked against the data they describe
    data = vc.loaders.load("simulated", small=True)
    counts = pd.read_csv(run_dir / "coverage_cells.csv", index_col=0)
    pd.testing.assert_frame_equal(counts, vc.coverage.cell_counts(data), check_names=False)
    assert ad.read_h5ad(run_dir / "pseudobulk.h5ad").obs["n_cells"].sum() == data.n_obs
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

    before = (run_dir / "01_context_coverage.ipynb").stat().st_mtime_ns
    assert runner.run(parameters={"FAST": True}, resume=run_dir, html=False) == run_dir
    assert (run_dir / "01_context_coverage.ipynb").stat().st_mtime_ns == before
