"""The helpers of the benchmark scripts that produce reported figures: the scaling slope and the drawn screens."""

import importlib.util
import sys
from pathlib import Path

import anndata as ad
import numpy as np

import vclib as vc

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return module


def test_scaling_slope_recovers_the_exponent():
    scaling = _script("metrics_scaling")
    sizes = np.array([50.0, 200.0, 800.0])
    for exponent in (0.5, 1.0, 2.0):
        assert abs(scaling.slope(sizes, 3.0 * sizes**exponent) - exponent) < 1e-12


def test_drawn_screen_is_in_cell_eval_layout_and_scores(tmp_path):
    scaling = _script("metrics_scaling")
    for name, seed in (("real", 0), ("pred", 1)):
        scaling.write_screen(tmp_path / f"{name}.h5ad", 4, 60, cells=12, controls=30, seed=seed)
    real = ad.read_h5ad(tmp_path / "real.h5ad")
    assert real.n_obs == 4 * 12 + 30 and real.n_vars == 60
    assert (real.obs["target_gene"] == "non-targeting").sum() == 30
    assert real.X.dtype == np.float32 and real.X.has_sorted_indices and not (real.X.data == 0).any()
    assert vc.schema.detect_values(real.X) == "log1p"
    table = vc.metrics.evaluate(ad.read_h5ad(tmp_path / "pred.h5ad"), real, **vc.metrics.CELL_EVAL)
    assert set(table["perturbation"]) >= {f"P{i}" for i in range(4)}


def test_parity_tells_a_cut_inside_tied_lfc_from_a_real_difference(tmp_path):
    speed = _script("metrics_speed")
    import pandas as pd

    # perturbation A: 2 observed DE genes; the prediction's 3 significant genes tie at -inf, so its top-2 cut is
    # inside a tie. B: no tie at the cut (|lfc| 3 > 2 > 1).
    def table(rows):
        return pd.DataFrame(rows, columns=["target", "feature", "log2_fold_change", "fdr"])

    table([("A", "g1", 2.0, 0.01), ("A", "g2", 1.0, 0.01), ("B", "g1", 3.0, 0.01), ("B", "g2", 2.0, 0.01)]).to_csv(
        tmp_path / "real_de.csv", index=False)
    table([("A", "g1", -np.inf, 0.01), ("A", "g2", -np.inf, 0.01), ("A", "g3", -np.inf, 0.01),
           ("B", "g1", 3.0, 0.01), ("B", "g2", 2.0, 0.01), ("B", "g3", 1.0, 0.01), ("B", "g4", 9.0, 0.5)]).to_csv(
        tmp_path / "pred_de.csv", index=False)
    for differ, expected in ((["A"], (1, 0)), (["B"], (0, 1)), (["A", "B"], (1, 1))):
        note = speed.tied_cuts(tmp_path, {"overlap_at_N": differ})
        assert f"{expected[0]} have their top-k cut inside exactly tied" in note and f"{expected[1]} do not" in note
    assert speed.tied_cuts(tmp_path, {}) == ""
    assert speed.tied_cuts(tmp_path, {"mse": ["A"]}) == ""  # only overlap/precision have a top-k cut
