"""Bad input at every public entry point: one named case each, answered by a VclibInputError whose message names
the offending value and the fix, never by an exception from deep inside numpy, h5py or pandas. Nothing the user
passed is modified."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import vclib as vc
from vclib import runner
from vclib.schema import VclibInputError


@pytest.fixture(scope="module")
def sim():
    return vc.loaders.simulate(n_contexts=2, n_perturbations=6, n_genes=40, cells_per_condition=12, seed=0)


@pytest.fixture(scope="module")
def files(sim, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    counts = sim.copy()
    counts.X = counts.layers["counts"].copy()
    del counts.layers["counts"]
    counts.uns = {}
    counts.write_h5ad(folder / "counts.h5ad")
    sim.write_h5ad(folder / "log1p.h5ad")
    (folder / "corrupt.h5ad").write_bytes(b"\x89HDF\r\n\x1a\n" + b"cut short" * 50)
    vc.pseudobulk.pseudobulk(sim).write_h5ad(folder / "pred.h5ad")
    half = ad.AnnData(X=sim.X.toarray().astype(np.float16), obs=sim.obs[["perturbation", "context"]].copy(),
                      var=sim.var.copy())
    half.write_h5ad(folder / "half.h5ad")
    return folder


def _raw_counts(sim):
    """Counts in X without vclib's stamp: what a user has who skipped vc.loaders.read()."""
    out = ad.AnnData(X=sim.layers["counts"].copy(), obs=sim.obs[["perturbation", "context"]].copy(),
                     var=sim.var.copy())
    return out


def _text_label(sim, key, text):
    out = sim.copy()
    labels = out.obs[key].astype(str).to_numpy().copy()
    labels[:3] = text
    out.obs[key] = labels
    out.uns = {}
    return out


def _one_cell_condition(sim):
    condition = (sim.obs["context"] == "C1") & (sim.obs["perturbation"] == sim.obs["perturbation"].cat.categories[1])
    keep = ~condition.to_numpy()
    keep[np.flatnonzero(condition.to_numpy())[0]] = True
    return sim[keep].copy()


def _external(source):
    return {"ext": vc.models.ExternalPredictions(source)}


BENCH = {"splits": ["unseen_context"], "include_ceiling": False, "progress": False, "metrics": ["mse_delta"]}

# (name, call(sim, files, tmp_path), message pattern)
CASES = [
    # reading data into the contract
    ("read: 0 genes", lambda s, f, t: vc.loaders.read(s[:, []].copy()),
     r"holds \d+ cells × 0 genes: nothing to analyse"),
    ("read: 0 cells", lambda s, f, t: vc.loaders.read(s[[]].copy()), r"holds 0 cells × 40 genes: nothing to analyse"),
    ("read: values='counts' on log1p", lambda s, f, t: vc.loaders.read(f / "log1p.h5ad", values="counts"),
     r"values='counts', but X does not hold integer counts \(it looks like log1p\)\. Pass values='auto'"),
    ("read: values='log1p' on counts", lambda s, f, t: vc.loaders.read(f / "counts.h5ad", values="log1p"),
     r"values='log1p', but X holds non-negative integers, i\.e\. raw counts\. Pass values='auto'"),
    ("read: values='log2p' on counts", lambda s, f, t: vc.loaders.read(f / "counts.h5ad", values="log2p"),
     r"values='log2p', but X holds non-negative integers"),
    ("read: text 'nan' perturbation", lambda s, f, t: vc.loaders.read(_text_label(s, "perturbation", "nan")),
     r"3 cells have an empty perturbation label \('nan'\) \(e\.g\. cells 'cell000000'"),
    ("read: text 'None' context", lambda s, f, t: vc.loaders.read(_text_label(s, "context", "None")),
     r"3 cells have an empty context label \('None'\)"),
    ("read: text 'NaN' perturbation", lambda s, f, t: vc.loaders.read(_text_label(s, "perturbation", "NaN")),
     r"empty perturbation label \('NaN'\)"),
    ("read: blank perturbation", lambda s, f, t: vc.loaders.read(_text_label(s, "perturbation", "  ")),
     r"3 cells have an empty perturbation label \(''\)"),
    ("read: corrupt h5ad", lambda s, f, t: vc.loaders.read(f / "corrupt.h5ad"),
     r"cannot read .*corrupt\.h5ad' as h5ad .*Is the file complete"),
    ("read: a layer that does not exist", lambda s, f, t: vc.loaders.read(s, layer="raw_counts"),
     r"layer 'raw_counts' not found; layers present: \['counts'\]"),
    ("read: backed float16", lambda s, f, t: vc.loaders.read(f / "half.h5ad", backed=True),
     r"X is float16, which backed mode cannot read"),
    ("read: a perturbation named like the control", lambda s, f, t: vc.loaders.read(
        _text_label(s, "perturbation", "control"), control="ctrl"), r"context 'C1' has no control cells"),
    # the contract checked where data enters a computation
    ("pseudobulk: raw counts that skipped read()", lambda s, f, t: vc.pseudobulk.pseudobulk(_raw_counts(s)),
     r"pseudobulk needs log1p-normalised expression, but X holds integers .*not loaded with vc\.loaders\.read\(\)"),
    ("rank_genes: raw counts that skipped read()", lambda s, f, t: vc.metrics.rank_genes(_raw_counts(s)),
     r"rank_genes needs log1p-normalised expression.*vc\.loaders\.read\(adata, perturbation_key="),
    ("rank_genes: backed file", lambda s, f, t: vc.metrics.rank_genes(vc.loaders.read(f / "counts.h5ad", backed=True)),
     r"rank_genes ranks every cell of every gene, so it needs the cells in memory; .*counts\.h5ad"),
    ("rank_genes: backed counts loaded to memory", lambda s, f, t: vc.metrics.rank_genes(
        vc.loaders.read(f / "counts.h5ad", backed=True).to_memory()), r"uns\['vclib'\] says X holds counts"),
    ("pseudobulk: no perturbation column", lambda s, f, t: vc.pseudobulk.pseudobulk(
        s, perturbation_key="guide"), r"obs has no column 'guide'"),
    ("splits: data that skipped read()", lambda s, f, t: vc.splits.unseen_context(
        s.copy().obs.rename(columns={"perturbation": "guide"}).pipe(lambda o: ad.AnnData(s.X, obs=o))),
     r"no column \['perturbation'\]: splits need data in vclib's contract; load it with vc\.loaders\.read"),
    ("splits: n_folds=0", lambda s, f, t: vc.splits.unseen_perturbation(s, n_folds=0),
     r"n_folds must be an integer of at least 2, got 0"),
    ("splits: n_folds=2.5", lambda s, f, t: vc.splits.unseen_perturbation(s, n_folds=2.5),
     r"n_folds must be an integer of at least 2, got 2\.5"),
    ("splits: holdout_singles=2", lambda s, f, t: vc.splits.combinations(s, holdout_singles=2),
     r"holdout_singles is the fraction of singles held out, in \[0, 1\); got 2"),
    # scoring
    ("evaluate: observed data backed", lambda s, f, t: vc.metrics.evaluate(
        vc.pseudobulk.pseudobulk(s), vc.loaders.read(f / "log1p.h5ad", backed=True)),
     r"observed data is opened in backed mode \(.*log1p\.h5ad\); scoring needs it in memory"),
    ("evaluate: predictions backed", lambda s, f, t: vc.metrics.evaluate(
        ad.read_h5ad(f / "pred.h5ad", backed="r"), s), r"predicted data is opened in backed mode"),
    ("evaluate: a predicted condition twice", lambda s, f, t: vc.metrics.evaluate(
        ad.concat([vc.pseudobulk.pseudobulk(s), vc.pseudobulk.pseudobulk(s)[5:6]]), s),
     r"1 predicted condition\(s\) have more than one row \('C1\|.*'\) while \d+ have one: .*Drop the "
     r"duplicates, or pass predicted_level='cells'"),
    ("evaluate: predicted text 'nan' label", lambda s, f, t: vc.metrics.evaluate(
        _text_label(vc.pseudobulk.pseudobulk(s), "perturbation", "nan"), s),
     r"3 cells have an empty perturbation label \('nan'\)"),
    ("ceiling: observed data backed", lambda s, f, t: vc.metrics.ceiling(
        vc.loaders.read(f / "log1p.h5ad", backed=True)), r"observed data is opened in backed mode"),
    ("ceiling: a 1-cell condition asked for", lambda s, f, t: vc.metrics.ceiling(
        _one_cell_condition(s), conditions=[f"C1|{s.obs['perturbation'].cat.categories[1]}"]),
     r"1 condition\(s\) cannot be split in halves"),
    # the benchmark grid
    ("benchmark: observed data backed", lambda s, f, t: vc.benchmark.run(
        vc.loaders.read(f / "log1p.h5ad", backed=True), models=["training_mean"], **BENCH),
     r"observed data is opened in backed mode"),
    ("benchmark: seeds=[]", lambda s, f, t: vc.benchmark.run(s, seeds=[], **BENCH), r"seeds= is empty"),
    ("benchmark: seeds repeat", lambda s, f, t: vc.benchmark.run(s, seeds=[1, 1], **BENCH),
     r"seeds \[1, 1\] repeat a seed"),
    ("benchmark: seeds not integers", lambda s, f, t: vc.benchmark.run(s, seeds=["0"], **BENCH),
     r"seeds must be integers; got \['0'\]"),
    ("benchmark: models a string", lambda s, f, t: vc.benchmark.run(s, models="mlp", **BENCH),
     r"models= takes a list of names or a dict, not the string 'mlp'; write models=\['mlp'\]"),
    ("benchmark: models empty", lambda s, f, t: vc.benchmark.run(s, models=[], **BENCH), r"models= is empty"),
    ("benchmark: a model called ceiling", lambda s, f, t: vc.benchmark.run(
        s, models={"ceiling": vc.baselines.NoChange()}, **BENCH), r"'ceiling' is the noise ceiling's name"),
    ("benchmark: evaluate_options sets conditions", lambda s, f, t: vc.benchmark.run(
        s, models=["no_change"], evaluate_options={"conditions": []}, **BENCH),
     r"evaluate_options may not set 'conditions'"),
    ("benchmark: observed_de with a prepared Observed", lambda s, f, t: vc.benchmark.run(
        vc.metrics.prepare(s), models=["no_change"], observed_de=vc.metrics.rank_genes(s), **BENCH),
     r"pass observed_de= with an AnnData, not with a prepared Observed"),
    ("benchmark: corrupt predictions file", lambda s, f, t: vc.benchmark.run(
        s, models=_external(str(f / "corrupt.h5ad")), **BENCH),
     r"cannot read external predictions .*corrupt\.h5ad' as h5ad \(OSError: .*Write it again"),
    ("benchmark: {splt} template typo", lambda s, f, t: vc.benchmark.run(
        s, models=_external(str(f / "{splt}_{fold}.h5ad")), **BENCH),
     r"the predictions path .*\{splt\}_\{fold\}\.h5ad' has a placeholder other than \{split\} and \{fold\} "
     r"\(KeyError: 'splt'\)"),
    ("benchmark: predictions file missing", lambda s, f, t: vc.benchmark.run(
        s, models=_external(str(t / "{split}_{fold}.h5ad")), **BENCH),
     r"external predictions .*unseen_context_C1\.h5ad' not found \(split 'unseen_context', fold 'C1'\)"),
    # run parameters
    ("-p FAST no", lambda s, f, t: runner.parse_parameters([("FAST", "no")]),
     r"parameter FAST is a boolean \(default False\); got 'no'\. Use True or False"),
    ("-p FAST 1", lambda s, f, t: runner.parse_parameters([("FAST", "1")]),
     r"parameter FAST is a boolean \(default False\); got 1"),
    ("-p MODELS mlp", lambda s, f, t: runner.parse_parameters([("MODELS", "mlp")]),
     r"parameter MODELS is a list .*got the single value 'mlp'\. Write it as a Python list, quoted for the shell: "
     r"-p MODELS \"\['mlp'\]\""),
    ("-p SEEDS 3", lambda s, f, t: runner.parse_parameters([("SEEDS", "3")]),
     r"parameter SEEDS is a list .*-p SEEDS \"\[3\]\""),
    ("-p SEED three", lambda s, f, t: runner.parse_parameters([("SEED", "three")]),
     r"parameter SEED is a number \(default 0\); got 'three'"),
    ("-p N_FOLDS 2.5", lambda s, f, t: runner.parse_parameters([("N_FOLDS", "2.5")]),
     r"parameter N_FOLDS is an integer \(default 5\); got 2\.5"),
    ("--name an absolute path", lambda s, f, t: runner.run(results_dir=t, name=str(t / "elsewhere")),
     r"--name '.*elsewhere' must be a folder name, not a path"),
    ("--name ..", lambda s, f, t: runner.run(results_dir=t, name=".."), r"--name '\.\.' must be a folder name"),
    ("--resume a folder that is not a run", lambda s, f, t: runner.run(resume=t),
     r"is not a vclib run folder \(no run\.json\)"),
    ("dataset path that does not exist", lambda s, f, t: runner.run(parameters={"DATASET": "nowhere/screen.h5ad"},
                                                                    results_dir=t),
     r"dataset 'nowhere/screen\.h5ad' is neither 'simulated', a registered dataset .*looked for"),
]


@pytest.mark.parametrize(("call", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_named_with_its_fix(sim, files, tmp_path, call, message):
    before = sim.copy()
    with pytest.raises(VclibInputError, match=message):
        call(sim, files, tmp_path)
    assert np.array_equal(np.asarray(sim.X.todense() if sparse.issparse(sim.X) else sim.X),
                          np.asarray(before.X.todense() if sparse.issparse(before.X) else before.X))
    assert sim.obs.equals(before.obs)  # nothing the user passed was modified
    assert not any(tmp_path.iterdir())  # and nothing was written


def test_float16_log1p_is_read_as_float32(sim):
    half = sim.copy()
    half.X = sim.X.toarray().astype(np.float16) if sparse.issparse(sim.X) else sim.X.astype(np.float16)
    half.uns = {}
    out = vc.loaders.read(half, values="log1p")
    assert out.X.dtype == np.float32
    assert np.array_equal(np.asarray(out.X), half.X.astype(np.float32))  # every float16 value is a float32 exactly


def test_a_control_label_spelled_like_a_missing_value_is_the_control(sim):
    relabelled = sim.copy()
    relabelled.obs["perturbation"] = relabelled.obs["perturbation"].astype(str).replace({"control": "None"})
    relabelled.uns = {}
    out = vc.loaders.read(relabelled, control="None")
    assert (out.obs["perturbation"] == "control").sum() == (sim.obs["perturbation"] == "control").sum()


def test_a_bare_split_name_is_one_split(sim):
    table = vc.benchmark.split_tables(sim, splits="unseen_context")
    assert set(table["split"]) == {"unseen_context"}


def test_a_one_cell_condition_gets_no_ceiling_and_a_note(sim):
    table = vc.benchmark.run(_one_cell_condition(sim), models=["training_mean"], **{**BENCH, "include_ceiling": True})
    lonely = f"C1|{sim.obs['perturbation'].cat.categories[1]}"
    scored = table["context"] + "|" + table["perturbation"]
    assert lonely in set(scored[table["model"] == "training_mean"])  # the model is still scored on it
    assert lonely not in set(scored[table["model"] == "ceiling"])
    assert any(n["reason"].startswith("1 of ") and "too few cells to split in halves" in n["reason"]
               for n in table.attrs["notes"])


def test_ceiling_names_the_conditions_it_leaves_out(sim):
    lonely = f"C1|{sim.obs['perturbation'].cat.categories[1]}"
    table = vc.metrics.ceiling(_one_cell_condition(sim), metrics=["mse_delta"])
    assert lonely not in set(table["context"] + "|" + table["perturbation"])
    assert table.attrs["notes"] == [{"analysis": "noise ceiling", "reason": (
        "1 condition(s) have too few cells to split in halves (2 per condition and 2 control cells per context) and "
        f"get no ceiling: {lonely}")}]
    assert "notes" not in vc.metrics.ceiling(sim, metrics=["mse_delta"]).attrs or \
        not vc.metrics.ceiling(sim, metrics=["mse_delta"]).attrs["notes"]
