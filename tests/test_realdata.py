"""read() opens every h5ad in ../shared/real-data with its key mapping (skipped where the folder is absent)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REAL_DATA, real_file

import vclib as vc

pytestmark = pytest.mark.realdata

# file, read() options, expected contexts, expected found values
CASES = {
    "kang2018_ifnb_pbmc_muscat_subset/kang2018_muscat_example_sce.h5ad": (
        {"perturbation_key": "group_id", "context_key": "cluster_id", "control": "ctrl"}, 5, "counts"),
    "kang2018_ifnb_pbmc_distinct_subset/kang2018_distinct_Kang_subset.h5ad": (
        {"perturbation_key": "stim", "context_key": "cell", "control": "ctrl", "values": "log2p"}, 8, "log2p"),
    "zhao2021_glioblastoma_panobinostat_lemur_subset/zhao2021_glioblastoma_panobinostat.h5ad": (
        {"perturbation_key": "condition", "context_key": "patient_id", "control": "ctrl"}, 5, "counts"),
    "perturbench_devel_norman19_mcfaline23/devel.h5ad": (
        {"perturbation_key": "condition", "context_key": "cell_type", "control": "control"}, 4, "log1p"),
    "sigrecon_context_signatures/neurips2023_pbmc_drugs_rank_signatures.h5ad": (
        {"values": "signature"}, 4, "signature"),
    "sigrecon_context_signatures/sciplex3_drugs_rank_signatures.h5ad": ({"values": "signature"}, 3, "signature"),
    "sigrecon_context_signatures/replogle2022_crispri_rank_signatures.h5ad": (
        {"values": "signature"}, 2, "signature"),
    "sigrecon_context_signatures/drugmatrix_rat_bulk_rank_signatures.h5ad": (
        {"values": "signature"}, 2, "signature"),
}


def test_every_real_h5ad_is_covered():
    if not REAL_DATA.exists():
        pytest.skip(f"{REAL_DATA} not found: the real-data folder is absent on this machine")
    found = {str(p.relative_to(REAL_DATA)) for p in REAL_DATA.glob("*/*.h5ad")}
    assert found == set(CASES), "a new real-data file needs a key mapping in CASES"


@pytest.mark.parametrize("relative", sorted(CASES))
def test_read_real_file(relative):
    options, n_contexts, found = CASES[relative]
    adata = vc.loaders.read(real_file(relative), **options)
    assert adata.uns["vclib"]["found"] == found
    assert adata.obs["context"].nunique() == n_contexts
    if found != "signature":
        assert (adata.obs["perturbation"] == "control").any()
        vc.schema.validate(adata)


def test_kang_interferon_response_points_up():
    """Biology check: interferon-stimulated genes rise in every cell type after IFN-beta."""
    adata = vc.loaders.read(real_file(next(k for k in CASES if "muscat" in k)), **CASES[
        next(k for k in CASES if "muscat" in k)][0])
    d = vc.pseudobulk.deltas(vc.pseudobulk.pseudobulk(adata))
    isg = [g for g in ["ISG15", "IFIT3", "IFI6", "MX1", "ISG20"] if g in d.var_names]
    assert len(isg) >= 4
    assert (np.asarray(d[:, isg].X) > 0.5).all()


def test_log2_kang_matches_natural_log1p_of_cpm_scale():
    """The distinct subset's log2 values convert exactly: ln(2) * log2(1 + x) = log1p(x)."""
    relative = next(k for k in CASES if "distinct" in k)
    raw = __import__("anndata").read_h5ad(real_file(relative))
    adata = vc.loaders.read(raw, **CASES[relative][0])
    x = raw.X[:50].toarray()
    np.testing.assert_allclose(adata.X[:50].toarray(), np.log1p(np.exp2(x) - 1), rtol=1e-5, atol=1e-6)


def test_log2_kang_is_refused_without_the_option():
    relative = next(k for k in CASES if "distinct" in k)
    options = {k: v for k, v in CASES[relative][0].items() if k != "values"}
    with pytest.raises(vc.schema.VclibInputError, match=r"log2\(x \+ 1\)"):
        vc.loaders.read(real_file(relative), **options)


def _norman():
    relative = "perturbench_devel_norman19_mcfaline23/devel.h5ad"
    adata = vc.loaders.read(real_file(relative), **CASES[relative][0])
    return adata[(adata.obs["context"] == "k562").to_numpy()].copy()


def test_constant_predictor_pds_is_one_half_on_norman():
    """Predicting the control everywhere: exactly 0.5 with the default exclusion (the union of the context's
    targets, left out of every distance), for every distance; data-dependent with per-query exclusion."""
    adata = _norman()
    control = vc.metrics.predict_control(adata)
    metrics = ["discrimination_score_l1", "discrimination_score_l2", "discrimination_score_cosine"]
    default = vc.metrics.evaluate(control, adata, metrics=metrics).groupby("metric")["value"].mean()
    assert default.to_dict() == {m: 0.5 for m in metrics}
    own = vc.metrics.evaluate(control, adata, metrics=metrics, exclude="own").groupby("metric")["value"].mean()
    assert own["discrimination_score_l1"] != 0.5  # the symmetry breaks: 0.5085 on this subset
    assert vc.metrics.REGISTRY["discrimination_score_l1"].constant == 0.5
