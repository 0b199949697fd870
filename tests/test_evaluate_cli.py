"""`vclib evaluate PRED REAL -o DIR` end to end through vclib.cli.main, on simulator files written to disk.

Every value the command writes is checked against an independent call (vc.metrics.evaluate / aggregate / ceiling /
calibrate on the same AnnData, the baselines fitted by hand, the metric registry, numpy); bad input must exit with
code 2 and one line naming the problem, and nothing the user owns is modified or overwritten.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from importlib.metadata import version
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import vclib as vc
from vclib import cli
from vclib.metrics._files import OUTPUTS

ROOT = Path(__file__).resolve().parents[1]
DESIGN = dict(n_perturbations=8, n_combinations=0, n_genes=80, cells_per_condition=24, control_cells=60,
              coverage=1.0)
KEYS = ["context", "perturbation", "metric"]


def _metrics_speed():
    """benchmarks/metrics_speed.py, for write_cell_eval_file (the layout cell-eval reads)."""
    spec = importlib.util.spec_from_file_location("metrics_speed", ROOT / "benchmarks" / "metrics_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def contract_files(tmp_path_factory):
    """Two contexts in vclib's layout: observation seed 0, prediction seed 1 (an independent sample)."""
    folder = tmp_path_factory.mktemp("contract")
    for name, seed in (("real", 0), ("pred", 1)):
        vc.loaders.simulate(n_contexts=2, **DESIGN, seed=seed).write_h5ad(folder / f"{name}.h5ad")
    return folder


@pytest.fixture(scope="module")
def cell_eval_files(tmp_path_factory):
    """One context in cell-eval's layout (obs target_gene, control non-targeting), as metrics_speed writes it."""
    folder = tmp_path_factory.mktemp("cell_eval")
    write = _metrics_speed().write_cell_eval_file
    for name, seed in (("real", 0), ("pred", 1)):
        write(vc.loaders.simulate(n_contexts=1, **DESIGN, seed=seed), folder / f"{name}.h5ad")
    few = vc.loaders.simulate(n_contexts=1, **{**DESIGN, "cells_per_condition": 6, "control_cells": 40}, seed=2)
    write(few, folder / "few.h5ad")
    write(vc.loaders.simulate(n_contexts=1, **{**DESIGN, "cells_per_condition": 6, "control_cells": 40}, seed=3),
          folder / "few_pred.h5ad")
    renamed = ad.read_h5ad(folder / "pred.h5ad")
    renamed.var_names = ["NOT_A_GENE", *renamed.var_names[1:]]
    renamed.write_h5ad(folder / "other_genes.h5ad")
    no_control = ad.read_h5ad(folder / "pred.h5ad")
    no_control[no_control.obs["target_gene"] != "non-targeting"].copy().write_h5ad(folder / "no_control.h5ad")
    (folder / "garbage.h5ad").write_bytes(b"\x89HDF\r\n\x1a\n" + b"cut short" * 40)
    return folder


def _run(*args, capsys=None) -> tuple[int, str, str]:
    code = cli.main(["evaluate", *map(str, args)])
    out, err = capsys.readouterr() if capsys is not None else ("", "")
    return code, out, err


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values={"value": ["", "NaN", "nan"]})


def _same_values(written: pd.DataFrame, direct: pd.DataFrame, keys=KEYS) -> None:
    """Every (keys) row of ``direct`` is in ``written`` with the same value (NaN equals NaN), and no other row."""
    a = written.assign(**{k: written[k].astype(str) for k in keys}).set_index(keys)["value"].sort_index()
    b = direct.assign(**{k: direct[k].astype(str) for k in keys}).set_index(keys)["value"].sort_index()
    assert a.index.equals(b.index)
    assert np.allclose(a.to_numpy(float), b.to_numpy(float), rtol=1e-10, atol=1e-12, equal_nan=True)


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_writes_every_table_and_each_equals_the_direct_calls(contract_files, tmp_path, capsys):
    out = tmp_path / "scores"
    code, stdout, _ = _run(contract_files / "pred.h5ad", contract_files / "real.h5ad", "-o", out, "--no-progress",
                           capsys=capsys)
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    real, pred = ad.read_h5ad(contract_files / "real.h5ad"), ad.read_h5ad(contract_files / "pred.h5ad")

    direct = vc.metrics.evaluate(pred, real, model="prediction")
    scores = _read(out / "scores.csv")
    assert set(scores["model"]) == {"prediction"}
    _same_values(scores, direct)

    summary = pd.read_csv(out / "summary.csv")
    expected = vc.metrics.aggregate(direct, by=("model", "metric"), n_boot=1000, seed=0)
    got = summary[summary["model"] == "prediction"].set_index("metric").sort_index()
    expected = expected.set_index("metric").sort_index()
    for column in ("mean", "ci_low", "ci_high", "n"):
        assert np.allclose(got[column].to_numpy(float), expected[column].to_numpy(float), equal_nan=True), column

    # the noise ceiling: every condition has 24 cells (>= 10), so all of them, as vc.metrics.ceiling gives it
    ceiling = vc.metrics.ceiling(real, seed=0, conditions=sorted({f"{c}|{p}" for c, p in
                                                                  direct[["context", "perturbation"]].to_numpy()
                                                                  if p != "*"}))
    _same_values(_read(out / "ceiling_scores.csv"), ceiling)

    # the baseline: ContextMean fitted by hand on the other perturbations of the context, for the metrics that
    # compare a prediction with its own observation; PDS and rank of a constant answer, exactly 0.5 (registry)
    base = _read(out / "baseline_scores.csv")
    assert set(base["model"]) == {"context_mean"}
    pb = vc.pseudobulk.pseudobulk(real)
    perturbed = pb[~pb.obs["is_control"].to_numpy()]
    rows = []
    for name in perturbed.obs_names:
        context = name.split("|")[0]
        train = pb[[n for n in pb.obs_names if n != name and n.startswith(f"{context}|")]]
        rows.append(vc.baselines.ContextMean().fit(train).predict([name]))
    loo = ad.concat(rows)
    own_only = [m for m in vc.metrics.REGISTRY if m not in ("discrimination_score_l1", "discrimination_score_l2",
                                                           "discrimination_score_cosine", "rank", "hit_rate_at_k")]
    by_hand = vc.metrics.evaluate(loo, real, metrics=own_only)
    _same_values(base[base["metric"].isin(own_only)], by_hand)
    # (science.md: a constant predictor's PDS averages exactly 0.5 over a context; its rank is 0.5 everywhere)
    for metric in ("discrimination_score_l1", "discrimination_score_l2", "discrimination_score_cosine", "rank"):
        values = base[base["metric"] == metric]
        assert len(values) == len(perturbed)
        assert np.allclose(values.groupby("context")["value"].mean(), vc.metrics.REGISTRY[metric].constant)
    assert np.allclose(base.loc[base["metric"] == "rank", "value"], 0.5)

    # calibrated scores: vc.metrics.calibrate on the three tables, as written
    tables = pd.concat([_read(out / f) for f in ("scores.csv", "baseline_scores.csv", "ceiling_scores.csv")])
    expected = vc.metrics.calibrate(tables, baseline="context_mean", by=("metric",)).set_index("metric").sort_index()
    got = pd.read_csv(out / "calibrated.csv").set_index("metric").sort_index()
    assert np.allclose(got["calibrated"], expected["calibrated"], equal_nan=True)
    assert got["calibrated"].notna().any()

    record = json.loads((out / "evaluate.json").read_text())
    assert record["status"] == "complete" and record["vclib_version"] == vc.__version__
    assert record["command"][:2] == ["vclib", "evaluate"] and record["options"]["parity"] is None
    assert record["versions"]["anndata"] == version("anndata") and record["inputs"]["observed"]["cells"] == real.n_obs
    assert "DE of the observed cells" in record["seconds"]
    assert "pearson_delta" in stdout and "calibrated" in stdout  # the headline table is printed


def test_parity_cell_eval_equals_evaluate_with_its_conventions(cell_eval_files, tmp_path, capsys):
    out = tmp_path / "parity"
    code, _, _ = _run(cell_eval_files / "pred.h5ad", cell_eval_files / "real.h5ad", "-o", out, "--parity",
                      "cell-eval", "--no-progress", capsys=capsys)
    assert code == 0
    real, pred = ad.read_h5ad(cell_eval_files / "real.h5ad"), ad.read_h5ad(cell_eval_files / "pred.h5ad")
    _same_values(_read(out / "scores.csv"), vc.metrics.evaluate(pred, real, **vc.metrics.CELL_EVAL))
    # an option given explicitly overrides the parity's
    out = tmp_path / "parity_eps"
    assert _run(cell_eval_files / "pred.h5ad", cell_eval_files / "real.h5ad", "-o", out, "--parity", "cell-eval",
                "--epsilon", "1e-9", "--metrics", "overlap_at_N,mse", "--no-progress", capsys=capsys)[0] == 0
    direct = vc.metrics.evaluate(pred, real, **{**vc.metrics.CELL_EVAL, "epsilon": 1e-9},
                                 metrics=["overlap_at_N", "mse"])
    _same_values(_read(out / "scores.csv"), direct)
    assert json.loads((out / "evaluate.json").read_text())["options"]["epsilon"] == 1e-9


def test_raw_counts_are_normalised_as_read_does(tmp_path, capsys):
    sim = vc.loaders.simulate(n_contexts=2, **DESIGN, seed=0)
    counts = ad.AnnData(X=sim.layers["counts"].copy(), obs=sim.obs[["context", "perturbation"]].copy(),
                        var=sim.var[[]].copy())
    counts.write_h5ad(tmp_path / "counts.h5ad")
    pred = vc.loaders.simulate(n_contexts=2, **DESIGN, seed=1)
    pred.write_h5ad(tmp_path / "pred.h5ad")
    code, _, _ = _run(tmp_path / "pred.h5ad", tmp_path / "counts.h5ad", "-o", tmp_path / "out", "--baseline", "none",
                      "--no-progress", "--metrics", "mse,pearson_delta,overlap_at_N", capsys=capsys)
    assert code == 0
    # the independent path: read() normalises the counts (scanpy's normalize_total + log1p) into the contract
    normalised = vc.loaders.read(counts.copy())
    direct = vc.metrics.evaluate(pred, normalised, metrics=["mse", "pearson_delta", "overlap_at_N"])
    _same_values(_read(tmp_path / "out" / "scores.csv")[lambda t: t["model"] == "prediction"], direct)
    notes = _read(tmp_path / "out" / "skipped.csv")
    assert notes["reason"].str.contains("raw counts, normalised").any()
    assert (ad.read_h5ad(tmp_path / "counts.h5ad").X != counts.X).nnz == 0  # the file is left as it was


def test_the_observation_as_its_own_prediction_scores_what_the_registry_says(contract_files, tmp_path, capsys):
    out = tmp_path / "perfect"
    real = contract_files / "real.h5ad"
    assert _run(real, real, "-o", out, "--no-progress", "--baseline", "none", capsys=capsys)[0] == 0
    scores = _read(out / "scores.csv")
    checked = 0
    for name, metric in vc.metrics.REGISTRY.items():
        if metric.perfect is None:
            continue
        values = scores.loc[scores["metric"] == name, "value"].dropna()
        assert len(values) and np.allclose(values, metric.perfect, atol=1e-9), name
        checked += 1
    assert checked == sum(m.perfect is not None for m in vc.metrics.REGISTRY.values())
    # without a baseline, no calibrated score, and the reason is written
    calibrated = pd.read_csv(out / "calibrated.csv")
    assert calibrated["calibrated"].isna().all()
    assert (calibrated["calibration_note"] == "not calibratable here: no baseline").all()
    assert "no baseline was asked for" in pd.read_csv(out / "skipped.csv")["reason"].str.cat()


def test_the_ceiling_needs_enough_cells_and_says_why_it_is_missing(cell_eval_files, tmp_path, capsys):
    out = tmp_path / "few"
    code, stdout, _ = _run(cell_eval_files / "few_pred.h5ad", cell_eval_files / "few.h5ad", "-o", out, "--parity",
                           "cell-eval", "--no-progress", capsys=capsys)
    assert code == 0
    assert pd.read_csv(out / "ceiling_scores.csv").empty
    skipped = pd.read_csv(out / "skipped.csv")
    reason = skipped.loc[skipped["analysis"] == "noise ceiling", "reason"].item()
    assert "no scored condition has 10 or more observed cells" in reason
    assert "Skipped: noise ceiling: no scored condition has 10 or more" in stdout
    calibrated = pd.read_csv(out / "calibrated.csv")
    assert calibrated["calibrated"].isna().all()
    assert calibrated["calibration_note"].str.startswith("not calibratable here: no noise ceiling").all()
    # a lower threshold forms the ceiling from these 6-cell conditions (3 cells a half)
    out = tmp_path / "few_low"
    assert _run(cell_eval_files / "few_pred.h5ad", cell_eval_files / "few.h5ad", "-o", out, "--parity", "cell-eval",
                "--min-cells", "6", "--metrics", "mse,pearson_delta", "--no-progress", capsys=capsys)[0] == 0
    ceiling = _read(out / "ceiling_scores.csv")
    assert ceiling["perturbation"].nunique() == DESIGN["n_perturbations"]
    assert not (pd.read_csv(out / "skipped.csv")["analysis"] == "noise ceiling").any()


def test_conditions_with_too_few_cells_get_no_ceiling_and_are_named(tmp_path, capsys):
    real = vc.loaders.simulate(n_contexts=1, **DESIGN, seed=0)
    short = real.obs_names[(real.obs["perturbation"] == "G0003").to_numpy()][5:]
    real = real[~real.obs_names.isin(short)].copy()  # G0003 keeps 5 cells
    real.write_h5ad(tmp_path / "real.h5ad")
    vc.pseudobulk.pseudobulk(real).write_h5ad(tmp_path / "pred.h5ad")
    out = tmp_path / "out"
    assert _run(tmp_path / "pred.h5ad", tmp_path / "real.h5ad", "-o", out, "--context-key", "none",
                "--metrics", "mse_delta,pearson_delta", "--no-progress", capsys=capsys)[0] == 0
    assert set(_read(out / "ceiling_scores.csv")["perturbation"]) == {f"G000{i}" for i in range(8)} - {"G0003"}
    notes = pd.read_csv(out / "skipped.csv")
    assert "1 of 8 conditions get no ceiling (all|G0003)" in notes["reason"].str.cat(sep=" ")
    assert "calibrated scores" in set(notes["analysis"])  # computed on the 7 conditions with a ceiling, and says so


def test_no_change_baseline_and_a_baseline_file(cell_eval_files, tmp_path, capsys):
    pred, real = cell_eval_files / "pred.h5ad", cell_eval_files / "real.h5ad"
    out = tmp_path / "no_change"
    assert _run(pred, real, "-o", out, "--parity", "cell-eval", "--baseline", "no_change", "--no-progress",
                capsys=capsys)[0] == 0
    base = _read(out / "baseline_scores.csv").set_index(["perturbation", "metric"])["value"]
    # predicting the control: delta MSE is the mean squared observed delta; pearson_delta is undefined
    pb = vc.pseudobulk.pseudobulk(vc.loaders.read(real, perturbation_key="target_gene", context_key=None,
                                                  control="non-targeting"))
    X = np.asarray(pb.X, dtype=np.float64)
    control = X[pb.obs["is_control"].to_numpy()][0]
    for name, row in zip(pb.obs_names, X, strict=True):
        if not name.endswith("|control"):
            assert np.isclose(base[(name.split("|")[1], "mse_delta")], np.mean((row - control) ** 2))
    assert base.xs("pearson_delta", level="metric").isna().all()
    calibrated = pd.read_csv(out / "calibrated.csv").set_index("metric")
    assert np.isnan(calibrated.loc["pearson_delta", "calibrated"])
    assert "no condition where both no_change and the ceiling are defined" in calibrated.loc["pearson_delta",
                                                                                              "calibration_note"]
    assert np.isfinite(calibrated.loc["mse_delta", "calibrated"])

    # a baseline file: the prediction itself, so the baseline scores are the prediction's and it calibrates to 0
    out = tmp_path / "file"
    assert _run(pred, real, "-o", out, "--parity", "cell-eval", "--baseline", pred, "--no-progress",
                capsys=capsys)[0] == 0
    scores, base = _read(out / "scores.csv"), _read(out / "baseline_scores.csv")
    assert set(base["model"]) == {"pred"}
    _same_values(base, scores)
    calibrated = pd.read_csv(out / "calibrated.csv")
    assert np.allclose(calibrated["calibrated"].dropna(), 0.0) and calibrated["calibrated"].notna().any()


def test_progress_bar_names_the_stages(cell_eval_files, tmp_path, capsys):
    code, _, err = _run(cell_eval_files / "pred.h5ad", cell_eval_files / "real.h5ad", "-o", tmp_path / "bar",
                        "--parity", "cell-eval", "--metrics", "mse,overlap_at_N", capsys=capsys)
    assert code == 0
    for stage in ("reading the prediction", "reading the observation", "DE of the observed cells",
                  "DE of the predicted cells", "metrics of the prediction", "baseline context_mean",
                  "noise ceiling", "bootstrap CIs", "calibration", "writing"):
        assert stage in err, stage


# (id, PRED, REAL and the options, with "@name" for a file of the fixture folder, the expected line)
PARITY = ["@pred.h5ad", "@real.h5ad", "--parity", "cell-eval"]
BAD = [
    ("missing file", ["@missing.h5ad", *PARITY[1:]], r"^vclib: prediction file '.*missing\.h5ad' does not exist\.$"),
    ("unreadable h5ad", ["@garbage.h5ad", *PARITY[1:]],
     r"^vclib: cannot read prediction file '.*garbage\.h5ad' as h5ad \(OSError: .*\)\. Is the file complete"),
    ("cell-eval files without --parity", PARITY[:2],
     r"^vclib: the observation has no obs column 'perturbation', 'context'; columns present: 'target_gene'\. Name its "
     r"columns with --perturbation-key and --context-key\. .*--parity 'cell-eval' reads that layout\.$"),
    ("a single context named", [*PARITY[:2], "--perturbation-key", "target_gene", "--control", "non-targeting"],
     r"no obs column 'context'.*For data of a single context pass --context-key None\.$"),
    ("no control cells", [*PARITY, "--control", "ctrl"],
     r"^vclib: the observation has no cell labelled 'ctrl' in obs\['target_gene'\] \(labels seen: 'non-targeting', "
     r"'G0000'.*\)\. Name the control label with --control\.$"),
    ("prediction without its control", ["@no_control.h5ad", *PARITY[1:]],
     r"^vclib: the prediction has no cell labelled 'non-targeting'.*needs --predicted-control 'observed'\.$"),
    ("genes differ", ["@other_genes.h5ad", *PARITY[1:]],
     r"^vclib: predicted and observed genes differ: 1 observed genes not predicted \(e\.g\. 'G0000'\), 1 predicted "
     r"genes not observed \(e\.g\. 'NOT_A_GENE'\)"),
    ("baseline file with other genes", [*PARITY, "--baseline", "@other_genes.h5ad"],
     r"^vclib: baseline .*other_genes\.h5ad: predicted and observed genes differ"),
    ("unknown metric", [*PARITY, "--metrics", "mse,pds"], r"^vclib: unknown metric\(s\) \['pds'\]; valid: mse, "),
    ("bad ties", [*PARITY, "--ties", "random"], r"^vclib: --ties 'random' is not 'mid' or 'position'\.$"),
    ("unknown parity", [*PARITY[:2], "--parity", "scanpy"], r"^vclib: --parity 'scanpy' is not one of 'cell-eval'"),
    ("unknown baseline", [*PARITY, "--baseline", "training_mean"],
     r"^vclib: --baseline 'training_mean' is not one of 'context_mean', 'no_change', an \.h5ad file"),
    ("min cells 1", [*PARITY, "--min-cells", "1"],
     r"^vclib: --min-cells 1: a noise ceiling splits cells in two halves, so it needs an integer of 2 or more\.$"),
    ("unscored condition", [*PARITY, "--conditions", "all|NOPE"],
     r"^vclib: condition\(s\) 'all\|NOPE' not in the predicted data\.$"),
]


@pytest.mark.parametrize(("args", "message"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_exits_2_with_one_line_naming_it(cell_eval_files, tmp_path, capsys, args, message):
    before = _digest(cell_eval_files)
    out = tmp_path / "out"
    args = [cell_eval_files / a[1:] if a.startswith("@") else a for a in args]
    code, stdout, err = _run(*args, "-o", out, "--no-progress", capsys=capsys)
    assert code == 2
    assert err.count("\n") == 1, err  # one line
    assert re.search(message, err.strip()), err
    assert stdout == ""
    assert not out.exists()  # nothing written
    assert _digest(cell_eval_files) == before  # the user's files untouched


def test_an_error_after_the_progress_bar_started_still_ends_in_one_vclib_line(cell_eval_files, tmp_path, capsys):
    code, _, err = _run(cell_eval_files / "other_genes.h5ad", cell_eval_files / "real.h5ad", "-o", tmp_path / "o",
                        "--parity", "cell-eval", capsys=capsys)
    assert code == 2
    assert err.splitlines()[-1].startswith("vclib: predicted and observed genes differ")


def test_never_overwrites(cell_eval_files, tmp_path, capsys):
    args = [cell_eval_files / "pred.h5ad", cell_eval_files / "real.h5ad", "--parity", "cell-eval", "--metrics",
            "mse,pearson_delta", "--n-boot", "50", "--no-progress"]
    # a folder holding someone else's file
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "summary.csv").write_text("mine\n")
    code, _, err = _run(*args, "-o", foreign, capsys=capsys)
    assert code == 2 and "holds files vclib evaluate did not write (summary.csv)" in err
    assert [p.name for p in foreign.iterdir()] == ["summary.csv"] and (foreign / "summary.csv").read_text() == "mine\n"
    # an earlier finished evaluation
    done = tmp_path / "done"
    assert _run(*args, "-o", done, capsys=capsys)[0] == 0
    before = _digest(done)
    code, _, err = _run(*args, "-o", done, capsys=capsys)
    assert code == 2 and "holds the results of an earlier vclib evaluate" in err
    assert "Pass a new folder as --out-dir (or delete that one)" in err
    assert _digest(done) == before
    # an empty folder is used
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _run(*args, "-o", empty, capsys=capsys)[0] == 0 and (empty / "scores.csv").exists()
    # a folder an interrupted evaluation left (its record says it was still writing) is written again
    record = json.loads((done / "evaluate.json").read_text())
    (done / "evaluate.json").write_text(json.dumps({**record, "status": "writing"}))
    (done / "summary.csv").write_text("cut short")
    assert _run(*args, "-o", done, capsys=capsys)[0] == 0
    assert json.loads((done / "evaluate.json").read_text())["status"] == "complete"
    assert pd.read_csv(done / "summary.csv")["model"].nunique() == 3


def test_python_api_leaves_its_inputs_alone_and_writes_nothing_without_out_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    real = vc.loaders.simulate(n_contexts=2, **DESIGN, seed=0)
    pred = vc.loaders.simulate(n_contexts=2, **DESIGN, seed=1)
    copies = real.copy(), pred.copy()
    card = vc.metrics.evaluate_files(pred, real, metrics=["mse", "discrimination_score_l1"], progress=False,
                                     quiet=True)
    for before, after in zip(copies, (real, pred), strict=True):
        assert (before.X != after.X).nnz == 0 and before.obs.equals(after.obs) and before.uns.keys() == after.uns.keys()
    assert card.out_dir is None and not any(tmp_path.iterdir())
    assert list(card.headline()["metric"]) == ["mse", "discrimination_score_l1"]
    _same_values(card.scores, vc.metrics.evaluate(pred, real, metrics=["mse", "discrimination_score_l1"]))


def test_ctrl_c_exits_130_with_one_line(monkeypatch, tmp_path, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vc.metrics, "evaluate_files", interrupted)
    code, stdout, err = _run("pred.h5ad", "real.h5ad", "-o", tmp_path / "o", capsys=capsys)
    assert code == 130 and stdout == ""
    assert err.strip().startswith("vclib: interrupted;") and err.strip().count("\n") == 0
