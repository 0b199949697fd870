"""read(): the data contract, value detection and conversion, and one clear error per kind of bad input."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import sparse

import vclib as vc
from vclib.schema import VclibInputError


def _counts_adata(sim) -> ad.AnnData:
    """The simulated data as a user would bring it: raw counts in X, their own column names."""
    user = ad.AnnData(X=sim.layers["counts"].copy(), var=pd.DataFrame(index=sim.var_names.copy()))
    user.obs["guide"] = sim.obs["perturbation"].astype(str).str.replace("control", "NT").to_numpy()
    user.obs["guide"] = user.obs["guide"].str.replace("+", "_", regex=False)
    user.obs["line"] = sim.obs["context"].to_numpy()
    user.obs_names = sim.obs_names.copy()
    return user


def test_counts_are_detected_converted_and_kept(sim):
    user = _counts_adata(sim)
    before = user.copy()
    out = vc.loaders.read(user, perturbation_key="guide", context_key="line", control="NT", combination_sep="_")
    # the input is untouched
    assert (user.X != before.X).nnz == 0
    assert list(user.obs.columns) == ["guide", "line"]
    # X is scanpy's normalize_total(1e4) + log1p of the counts, the counts are kept
    expected = sc.pp.log1p(sc.pp.normalize_total(ad.AnnData(before.X.astype(np.float32)), target_sum=1e4,
                                                 copy=True), copy=True).X
    np.testing.assert_allclose(out.X.toarray(), expected.toarray(), rtol=1e-6)
    assert (out.layers["counts"] != before.X).nnz == 0
    assert out.uns["vclib"]["found"] == "counts"
    # labels in the contract: control and sorted "A+B"
    assert set(out.obs["perturbation"]) == set(sim.obs["perturbation"])
    assert (out.obs["context"].astype(str) == sim.obs["context"].astype(str)).all()


def test_log1p_is_kept(sim):
    out = vc.loaders.read(sim)
    assert out.uns["vclib"]["found"] == "log1p"
    assert (out.X != sim.X).nnz == 0
    assert out is not sim


def test_log2_is_refused_then_converted_exactly(sim):
    log2 = sim.copy()
    log2.X = log2.X.copy()
    log2.X.data = np.log2(np.expm1(log2.X.data) + 1)
    with pytest.raises(VclibInputError, match=r"log2\(x \+ 1\).*values='log2p'"):
        vc.loaders.read(log2)
    out = vc.loaders.read(log2, values="log2p")
    np.testing.assert_allclose(out.X.toarray(), sim.X.toarray(), rtol=1e-5, atol=1e-6)


def test_single_context_without_column(sim):
    sim.obs = sim.obs.drop(columns="context")
    out = vc.loaders.read(sim, context_key=None)
    assert out.obs["context"].unique().tolist() == ["all"]


def test_combination_labels_are_canonical():
    assert vc.schema.canonical_label("B_A", control="ctrl", sep="_") == "A+B"
    assert vc.schema.canonical_label("KLF1+ctrl", control="ctrl") == "KLF1"
    assert vc.schema.canonical_label("ctrl", control="ctrl") == "control"
    assert vc.schema.targets("A+B") == ["A", "B"]


@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_detect_values(fmt):
    rng = np.random.default_rng(0)
    counts = rng.poisson(rng.gamma(0.5, 2, size=(50, 300))).astype(np.float64)
    counts[:, 0] += 1  # every cell has counts
    norm = counts / counts.sum(1, keepdims=True) * 1e4
    to = (lambda m: m) if fmt == "dense" else sparse.csr_matrix
    assert vc.schema.detect_values(to(counts)) == "counts"
    assert vc.schema.detect_values(to(np.log1p(norm))) == "log1p"
    assert vc.schema.detect_values(to(np.log2(norm + 1))) == "log2p"
    assert vc.schema.detect_values(to(norm)) == "normalised"
    assert vc.schema.detect_values(np.log1p(norm) - 1) == "negative"
    assert vc.schema.detect_values(to(rng.random((50, 300)))) == "unknown"


# --- bad input: one test per case, matching the message --------------------------------------------------

def test_missing_perturbation_column_names_the_columns(sim):
    with pytest.raises(VclibInputError, match=r"no column 'guide'; columns present: 'perturbation', 'context'"):
        vc.loaders.read(sim, perturbation_key="guide")


def test_missing_context_column_suggests_none(sim):
    with pytest.raises(VclibInputError, match=r"no column 'cell_line'.*context_key=None"):
        vc.loaders.read(sim, context_key="cell_line")


def test_control_absent_in_a_context(sim):
    keep = ~((sim.obs["context"] == "C2") & (sim.obs["perturbation"] == "control")).to_numpy()
    with pytest.raises(VclibInputError, match=r"context 'C2' has no control cells \(control label 'control' "
                                              r"not found in obs\['perturbation'\]; labels seen: 'G0000'"):
        vc.loaders.read(sim[keep].copy())


def test_wrong_control_label(sim):
    with pytest.raises(VclibInputError, match=r"context 'C1' has no control cells.*control label 'ctrl'"):
        vc.loaders.read(sim, control="ctrl")


def test_duplicated_gene_names(sim):
    sim.var_names = ["G0000"] + list(sim.var_names[1:-1]) + ["G0005"]
    with pytest.raises(VclibInputError, match=r"gene names occur more than once: 'G0005'.*var_names_make_unique"):
        vc.loaders.read(sim)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_values(sim, bad):
    sim.X = sim.X.toarray()
    sim.X[3, 5] = bad
    with pytest.raises(VclibInputError, match=r"NaN or infinite values \(1 entries, e.g. in cells cell000003\)"):
        vc.loaders.read(sim)


def test_negative_values(sim):
    sim.X = sim.X.toarray()
    sim.X[4, 2] = -0.5
    with pytest.raises(VclibInputError, match=r"negative values \(e.g. in cells cell000004.*layer='counts'"):
        vc.loaders.read(sim)


def test_scaled_matrix(sim):
    scaled = sc.pp.scale(sim, copy=True)
    with pytest.raises(VclibInputError, match=r"negative values.*not scaled/centred data"):
        vc.loaders.read(scaled)


def test_scaled_matrix_with_layer_fix(sim):
    scaled = sc.pp.scale(sim, copy=True)
    out = vc.loaders.read(scaled, layer="counts")
    assert out.uns["vclib"]["found"] == "counts"


def test_empty_condition_label(sim):
    labels = sim.obs["perturbation"].astype(object)
    labels.iloc[[10, 11]] = np.nan
    sim.obs["perturbation"] = labels
    with pytest.raises(VclibInputError, match=r"2 cells have an empty perturbation label \(NaN\) \(e.g. cells "
                                              r"'cell000010', 'cell000011'\)"):
        vc.loaders.read(sim)


def test_blank_context_label(sim):
    ctx = sim.obs["context"].astype(str)
    ctx.iloc[0] = " "
    sim.obs["context"] = ctx
    with pytest.raises(VclibInputError, match=r"1 cells have an empty context label"):
        vc.loaders.read(sim)


def test_unreadable_file(tmp_path):
    path = tmp_path / "broken.h5ad"
    path.write_bytes(b"this is not an hdf5 file")
    with pytest.raises(VclibInputError, match=r"cannot read .*broken.h5ad' as h5ad.*written by anndata"):
        vc.loaders.read(path)


def test_missing_file(tmp_path):
    with pytest.raises(VclibInputError, match=r"does not exist"):
        vc.loaders.read(tmp_path / "nope.h5ad")


def test_not_h5ad(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n")
    with pytest.raises(VclibInputError, match=r"vclib reads AnnData .h5ad files"):
        vc.loaders.read(path)


def test_unknown_values_option(sim):
    with pytest.raises(VclibInputError, match=r"values='logs' is not one of"):
        vc.loaders.read(sim, values="logs")


def test_file_round_trip_and_backed(sim, tmp_path):
    path = tmp_path / "sim.h5ad"
    _counts_adata(sim).write_h5ad(path)
    out = vc.loaders.read(path, perturbation_key="guide", context_key="line", control="NT", combination_sep="_")
    assert out.uns["vclib"]["source"] == str(path)
    backed = vc.loaders.read(path, perturbation_key="guide", context_key="line", control="NT",
                             combination_sep="_", backed=True)
    assert backed.isbacked and backed.uns["vclib"]["values"] == "counts"
    vc.schema.validate(backed)


def test_backed_read_never_modifies_the_callers_object(sim, tmp_path):
    path = tmp_path / "sim.h5ad"
    _counts_adata(sim).write_h5ad(path)
    keys = {"perturbation_key": "guide", "context_key": "line", "control": "NT", "combination_sep": "_"}
    mine = ad.read_h5ad(path, backed="r")
    obs, uns = mine.obs.copy(), dict(mine.uns)
    out = vc.loaders.read(mine, backed=True, **keys)
    assert out is not mine and out.isbacked
    pd.testing.assert_frame_equal(mine.obs, obs)
    assert dict(mine.uns) == uns and "perturbation" not in mine.obs
    in_memory = ad.read_h5ad(path)
    before = in_memory.obs.copy()
    with pytest.raises(VclibInputError, match="already in memory: pass backed=False"):
        vc.loaders.read(in_memory, backed=True, **keys)
    pd.testing.assert_frame_equal(in_memory.obs, before)


def test_drug_names_with_plus_are_single_perturbations(sim):
    drugs = sim.copy()
    labels = drugs.obs["perturbation"].astype(str)
    drugs.obs["perturbation"] = labels.where(labels != "G0001", "(+)-JQ1").where(labels != "control", "DMSO")
    out = vc.loaders.read(drugs, control="DMSO", combination_sep=None)
    assert "(plus)-JQ1" in set(out.obs["perturbation"]) and "control" in set(out.obs["perturbation"])
    assert set(out.obs.loc[out.obs["perturbation"] == "(plus)-JQ1", "perturbation_original"]) == {"(+)-JQ1"}
    assert not any("+" in p for p in out.obs["perturbation"].unique() if "G0" not in p)
