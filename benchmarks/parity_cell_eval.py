"""Parity of ``vclib.metrics.evaluate`` with cell-eval 0.8.2 on the same prediction/observation pairs.

Both tools get the same two h5ad files in cell-eval's layout (obs ``target_gene``, control ``non-targeting``,
CSR without explicit zeros, no unused categories, the same genes in the same order, log1p values). vclib is
configured as cell-eval: ``predicted_control="predicted"`` (the prediction's own control cells on the predicted
side), ``ties="position"`` (PDS ties broken by row order, score 1 - r/N), ``epsilon=0`` (lfc pseudocount),
``exclude="own"``, ``no_de=0`` (overlap/precision of a perturbation without observed DE genes, when vclib has
the option) and ``context_key=None``. cell-eval runs through its CLI (``cell-eval run --profile full``).

Pairs:

* ``sim-seed``: simulator, one context, 25 perturbations x 300 genes, 50 cells each; prediction = a second draw
  of the same design with another seed (unrelated effects, metrics near chance).
* ``sim-thinned``: simulator with 5 combinations; prediction = the observed counts binomially thinned to half
  and renormalised (related, noisier).
* ``norman``: the Norman 2019 part of ``../shared/real-data/perturbench_devel_norman19_mcfaline23/devel.h5ad``;
  each condition's cells (control included) split at random into two halves, one the prediction, the other the
  observation.

For every pair the script prints, per metric shared by ``results.csv`` and vclib, the maximum
``|cell-eval - vclib|`` over perturbations (NaN vs NaN counts as equal, NaN vs a number as inf) and whether it
is within 1e-6, plus the wall time of each side. Target: every shared metric within 1e-6. When a DE-based
metric differs, it compares the DE tables (p, FDR, lfc, significance calls) and re-scores with vclib's metric
functions on cell-eval's tables, swapping one input at a time, to name the input that causes the difference.

cell-eval is found through the environment variable ``CELL_EVAL``, else ``cell-eval`` on PATH, else
``/work/celleval-venv/bin/cell-eval``; without it only the vclib side runs.

Usage: ``python benchmarks/parity_cell_eval.py [--threads 2] [--keep DIR] [--diagnose]``.
"""

import argparse
import inspect
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from scipy import sparse, stats

import vclib as vc
from vclib.metrics import _functions as fn  # array-level metric functions for the diagnostics

TOL = 1e-6
PERT_COL = "target_gene"
CONTROL = "non-targeting"
FDR = 0.05
FALLBACK_CELL_EVAL = "/work/celleval-venv/bin/cell-eval"
NORMAN = Path(__file__).resolve().parents[1] / ".." / "shared" / "real-data" / \
    "perturbench_devel_norman19_mcfaline23" / "devel.h5ad"
MAIN_METRICS = ["pearson_delta", "mse", "mae", "discrimination_score_l1", "overlap_at_N", "precision_at_N",
                "de_direction_match", "de_spearman_lfc_sig"]
DE_BASED = {"overlap_at_N", "precision_at_N", "de_direction_match", "de_spearman_lfc_sig"}


def cell_eval_convention(func) -> dict:
    """``no_de=0`` (overlap/precision of a perturbation without observed DE genes is 0, as cell-eval writes) when
    this vclib version has the option; older versions always gave 0."""
    return {"no_de": 0.0} if "no_de" in inspect.signature(func).parameters else {}


VCLIB_OPTIONS = dict(perturbation_key=PERT_COL, context_key=None, control=CONTROL, predicted_control="predicted",
                     ties="position", epsilon=0.0, exclude="own", **cell_eval_convention(vc.metrics.evaluate))


def find_cell_eval() -> str | None:
    """Path of the cell-eval executable, or None."""
    for candidate in (os.environ.get("CELL_EVAL"), shutil.which("cell-eval")):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return FALLBACK_CELL_EVAL if os.access(FALLBACK_CELL_EVAL, os.X_OK) else None


# ---------------------------------------------------------------------------------------------- building pairs

def cell_eval_layout(X, labels, obs_names, var_names, dtype) -> ad.AnnData:
    """An AnnData cell-eval 0.8.2 accepts: CSR without explicit zeros, categorical labels without unused ones."""
    X = sparse.csr_matrix(X, dtype=dtype)
    X.eliminate_zeros()
    X.sort_indices()
    frac = np.abs(X.data - np.round(X.data))
    if not (frac > 1e-3).any():
        raise ValueError("X is integer-valued; cell-eval would renormalise it in place.")
    labels = np.where(np.asarray(labels, dtype=str) == vc.schema.CONTROL, CONTROL, np.asarray(labels, dtype=str))
    obs = pd.DataFrame({PERT_COL: pd.Categorical(labels)}, index=pd.Index(obs_names, dtype=str))
    obs[PERT_COL] = obs[PERT_COL].cat.remove_unused_categories()
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(var_names, dtype=str)))


def from_contract(adata: ad.AnnData, dtype=np.float32) -> ad.AnnData:
    return cell_eval_layout(adata.X, adata.obs["perturbation"], adata.obs_names, adata.var_names, dtype)


def sim_seed_pair() -> tuple[ad.AnnData, ad.AnnData]:
    """Observation and an independent second draw of the same design (same genes and perturbations)."""
    design = dict(n_contexts=1, n_perturbations=25, n_combinations=0, n_genes=300, cells_per_condition=50,
                  control_cells=200)
    return from_contract(vc.loaders.simulate(**design, seed=2)), from_contract(vc.loaders.simulate(**design, seed=1))


def sim_thinned_pair() -> tuple[ad.AnnData, ad.AnnData]:
    """Observation, and its counts binomially thinned to half, renormalised and log1p'd (with 5 combinations)."""
    real = vc.loaders.simulate(n_contexts=1, n_perturbations=25, n_combinations=5, n_genes=300,
                               cells_per_condition=50, control_cells=200, seed=3)
    counts = sparse.csr_matrix(real.layers["counts"])
    thinned = counts.copy()
    thinned.data = np.random.default_rng(4).binomial(counts.data.astype(np.int64), 0.5).astype(np.float32)
    thinned.eliminate_zeros()
    pred = ad.AnnData(X=thinned, obs=real.obs.copy(), var=real.var.copy())
    sc.pp.normalize_total(pred, target_sum=1e4)
    sc.pp.log1p(pred)
    return from_contract(pred), from_contract(real)


def norman_pair(seed: int = 0) -> tuple[ad.AnnData, ad.AnnData] | None:
    """Two random halves of each Norman condition (control included): (prediction, observation)."""
    if not NORMAN.exists():
        return None
    full = vc.loaders.read(NORMAN, perturbation_key="condition", context_key="cell_type", control="control")
    norman = full[full.obs["dataset"] == "norman19"]
    rng = np.random.default_rng(seed)
    first, second = [], []
    for _, rows in norman.obs.groupby("perturbation", observed=True).indices.items():
        rows = rng.permutation(rows)
        first.append(rows[: rows.size // 2])
        second.append(rows[rows.size // 2:])
    pred, real = (norman[np.sort(np.concatenate(part))] for part in (first, second))
    # The file holds float64 log1p values; keep float64 so both sides see the stored numbers.
    return from_contract(pred, np.float64), from_contract(real, np.float64)


# ---------------------------------------------------------------------------------------------- running

def run_cell_eval(exe: str, pred_path: Path, real_path: Path, outdir: Path, threads: int):
    """cell-eval's results.csv (indexed by perturbation) and the wall time of the CLI process."""
    cmd = [exe, "run", "-ap", str(pred_path), "-ar", str(real_path), "--pert-col", PERT_COL, "--control-pert",
           CONTROL, "--profile", "full", "--num-threads", str(threads), "-o", str(outdir)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    (outdir / "cell_eval.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"cell-eval failed (rc {proc.returncode}); last lines:\n{proc.stderr[-2000:]}")
    results = pd.read_csv(outdir / "results.csv").set_index("perturbation")
    return results, elapsed


def run_vclib(pred: ad.AnnData, real: ad.AnnData):
    """vclib's evaluate as a perturbation x metric table and its wall time."""
    start = time.perf_counter()
    table = vc.metrics.evaluate(pred, real, **VCLIB_OPTIONS)
    elapsed = time.perf_counter() - start
    wide = table[table["perturbation"] != "*"].pivot(index="perturbation", columns="metric", values="value")
    return wide, elapsed


# ---------------------------------------------------------------------------------------------- comparing

def max_abs_diff(a, b) -> tuple[float, int]:
    """Max |a - b| with NaN == NaN and NaN vs a number = inf; and how many entries differ by more than TOL."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    same_inf = np.isinf(a) & (a == b)
    with np.errstate(invalid="ignore"):
        d = np.where(both_nan | same_inf, 0.0, np.abs(a - b))
    d = np.where(np.isnan(d), np.inf, d)
    return (float(d.max()) if d.size else 0.0), int((d > TOL).sum())


def comparison_table(ce: pd.DataFrame, vcl: pd.DataFrame) -> pd.DataFrame:
    perts = ce.index.astype(str)
    missing = sorted(set(perts) ^ set(vcl.index.astype(str)))
    if missing:
        raise RuntimeError(f"perturbation sets differ between the tools: {missing[:10]}")
    shared = [m for m in MAIN_METRICS if m in ce.columns and m in vcl.columns]
    shared += sorted((set(ce.columns) & set(vcl.columns)) - set(shared))
    rows = []
    for m in shared:
        diff, n_bad = max_abs_diff(ce.loc[perts, m], vcl.loc[perts, m])
        rows.append({"metric": m, "max_abs_diff": diff, "within_tol": diff <= TOL,
                     "n_differ": f"{n_bad}/{len(perts)}", "extra": m not in MAIN_METRICS})
    return pd.DataFrame(rows)


def print_table(table: pd.DataFrame) -> None:
    print(f"  {'metric':<36} {'max |cell-eval - vclib|':>24}  {'<= 1e-6':<8} {'perts > 1e-6':>12}")
    for r in table.itertuples(index=False):
        name = r.metric + (" (extra)" if r.extra else "")
        print(f"  {name:<36} {r.max_abs_diff:>24.3g}  {'yes' if r.within_tol else 'NO':<8} {r.n_differ:>12}")


# ---------------------------------------------------------------------------------------------- DE diagnostics

def cell_eval_de(path: Path, perts: list[str], genes: pd.Index) -> dict[str, np.ndarray]:
    """cell-eval's DE table as perturbation x gene matrices in the float32 cell-eval uses for the metrics."""
    de = pd.read_csv(path)
    out = {}
    for col in ("log2_fold_change", "fdr", "p_value"):
        wide = de.pivot(index="target", columns="feature", values=col)
        out[col] = wide.loc[perts, genes].to_numpy(dtype=np.float64)
    return out


def vclib_de(adata: ad.AnnData, perts: list[str]) -> dict[str, np.ndarray]:
    contract = vc.loaders.read(adata, perturbation_key=PERT_COL, context_key=None, control=CONTROL)
    de = vc.metrics.rank_genes(contract, epsilon=0.0).subset([f"{vc.schema.DEFAULT_CONTEXT}|{p}" for p in perts])
    return {"log2_fold_change": de.lfc, "fdr": de.fdr, "p_value": de.pvalue}


def de_metric_values(pred: dict, real: dict) -> dict[str, np.ndarray]:
    """The four DE metrics from two DE tables with vclib's array functions (cell-eval's definitions)."""
    sig_r = real["fdr"].astype(np.float32) < np.float32(FDR)
    sig_p = pred["fdr"].astype(np.float32) < np.float32(FDR)
    lr, lp = real["log2_fold_change"], pred["log2_fold_change"]
    return {"overlap_at_N": fn.de_overlap(lp, sig_p, lr, sig_r, **cell_eval_convention(fn.de_overlap)),
            "precision_at_N": fn.de_precision(lp, sig_p, lr, sig_r, **cell_eval_convention(fn.de_precision)),
            "de_direction_match": fn.de_direction(lp, lr, sig_r),
            "de_spearman_lfc_sig": fn.de_spearman(lp, lr, sig_r)}


def compare_de_tables(side: str, ce: dict, vcl: dict) -> None:
    p_diff, _ = max_abs_diff(ce["p_value"], vcl["p_value"])
    fdr_diff, _ = max_abs_diff(ce["fdr"], vcl["fdr"])
    flips = int(((ce["fdr"].astype(np.float32) < FDR) != (vcl["fdr"].astype(np.float32) < FDR)).sum())
    a, b = ce["log2_fold_change"], vcl["log2_fold_change"]
    finite = np.isfinite(a) & np.isfinite(b)
    lfc_diff = float(np.abs(a[finite] - b[finite]).max()) if finite.any() else 0.0
    f32_mismatch = int((a.astype(np.float32) != b.astype(np.float32)).sum())
    sign_mismatch = int((np.sign(a) != np.sign(b)).sum())
    inf_mismatch = int((np.isinf(a) != np.isinf(b)).sum())
    print(f"    {side:<5} DE: max|dp| {p_diff:.2g}, max|dfdr| {fdr_diff:.2g}, significance flips {flips}; "
          f"max|dlfc| (finite) {lfc_diff:.2g}, float32 lfc mismatches {f32_mismatch}/{a.size}, "
          f"sign mismatches {sign_mismatch}, inf mismatches {inf_mismatch}")


def pdex_style_lfc(adata: ad.AnnData, perts: list[str]) -> np.ndarray:
    """lfc as pdex 0.3.0 computes it: mean of X in X's dtype (scipy sparse mean), expm1 in that dtype, then
    log2 of the ratio in float64 with epsilon 0 (0/0 -> 0)."""
    labels = adata.obs[PERT_COL].astype(str).to_numpy()

    def bulk(rows):
        return np.expm1(np.asarray(adata.X[rows].mean(axis=0)).ravel()).astype(np.float64)

    ref = bulk(labels == CONTROL)
    with np.errstate(divide="ignore", invalid="ignore"):
        lfc = np.vstack([np.log2(bulk(labels == p) / ref) for p in perts])
    return np.where(np.isnan(lfc), 0.0, lfc)


def explain_de(ce_results: pd.DataFrame, outdir: Path, pred: ad.AnnData, real: ad.AnnData, bad: list[str]) -> None:
    """Locate the cause of differing DE metrics by swapping DE inputs between the two engines."""
    perts = [str(p) for p in ce_results.index]
    genes = real.var_names
    ce = {"real": cell_eval_de(outdir / "real_de.csv", perts, genes),
          "pred": cell_eval_de(outdir / "pred_de.csv", perts, genes)}
    vcl = {"real": vclib_de(real, perts), "pred": vclib_de(pred, perts)}
    print("  DE diagnostics (cell-eval/pdex tables vs vc.metrics.rank_genes with epsilon=0):")
    for side, adata in (("real", real), ("pred", pred)):
        compare_de_tables(side, ce[side], vcl[side])
        pdex_lfc = pdex_style_lfc(adata, perts)
        diff, _ = max_abs_diff(ce[side]["log2_fold_change"], pdex_lfc)
        n_f32 = int((pdex_lfc.astype(np.float32) != ce[side]["log2_fold_change"].astype(np.float32)).sum())
        print(f"          lfc recomputed pdex-style (means and expm1 in {adata.X.dtype}, log2 ratio in float64): "
              f"max diff to cell-eval {diff:.2g}, float32 mismatches {n_f32}")

    def mixed(lfc_from: str, fdr_from: str) -> tuple[dict, dict]:
        src = {"cell-eval": ce, "vclib": vcl}
        return tuple({"log2_fold_change": src[lfc_from][s]["log2_fold_change"], "fdr": src[fdr_from][s]["fdr"]}
                     for s in ("pred", "real"))

    print(f"    re-scored with vclib's metric functions; max |cell-eval results.csv - re-score| for {', '.join(bad)}:")
    worst = {}
    for lfc_from, fdr_from in (("cell-eval", "cell-eval"), ("vclib", "cell-eval"), ("cell-eval", "vclib"),
                               ("vclib", "vclib")):
        values = de_metric_values(*mixed(lfc_from, fdr_from))
        diffs = {m: max_abs_diff(ce_results.loc[perts, m], values[m])[0] for m in bad}
        worst[lfc_from, fdr_from] = max(diffs.values())
        print(f"      lfc from {lfc_from:<9}, fdr from {fdr_from:<9}: "
              + ", ".join(f"{m} {d:.3g}" for m, d in diffs.items()))
    print("    => " + de_verdict(worst))


def de_verdict(worst: dict) -> str:
    """Which DE input explains the difference, from the swap experiment."""
    if worst["cell-eval", "cell-eval"] > TOL:
        return ("vclib's metric functions on cell-eval's own DE tables already differ: the metric definitions "
                "differ (not the DE engine).")
    if worst["vclib", "vclib"] <= TOL:
        return ("on vclib's DE tables the re-score matches cell-eval: the DE engines agree to the metrics' "
                "resolution; any difference in evaluate comes from outside the DE tables.")
    causes = []
    if worst["vclib", "cell-eval"] > TOL:
        causes.append("the lfc: vclib's rank_genes averages X in float64, pdex 0.3.0 takes the mean and expm1 in "
                      "X's dtype (float32), which moves lfc by ~1e-6 and reorders near-tied |lfc| (top-N cut, "
                      "Spearman ranks) or flips the sign of ~0 lfc. Needed: a rank_genes/evaluate option computing "
                      "the DE means in X's dtype, pdex-style.")
    if worst["cell-eval", "vclib"] > TOL:
        causes.append("the FDR: significance calls (float32 fdr < 0.05) differ; see the p/FDR lines above (tie "
                      "correction, continuity, asymptotic vs exact p).")
    return "cause: " + " ".join(causes) if causes else "only the combination of vclib's lfc and FDR differs."


def pseudobulks(adata: ad.AnnData, dtype) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Perturbations, their pseudobulk and the control pseudobulk, rounded to ``dtype`` like cell-eval's means."""
    contract = vc.loaders.read(adata, perturbation_key=PERT_COL, context_key=None, control=CONTROL)
    pb = vc.pseudobulk.pseudobulk(contract)
    is_ctrl = pb.obs["is_control"].to_numpy()
    X = np.asarray(pb.X).astype(dtype)
    return pb.obs["perturbation"].astype(str)[~is_ctrl].tolist(), X[~is_ctrl], X[is_ctrl]


def pseudobulk_metric_values(p_pb, r_pb, p_ctrl, r_ctrl, dtype) -> dict[str, np.ndarray]:
    """mse/mae (raw and delta) and pearson_delta with deltas, means and correlation computed in ``dtype``."""
    dP, dO = (p_pb - p_ctrl).astype(dtype), (r_pb - r_ctrl).astype(dtype)
    p_pb, r_pb = p_pb.astype(dtype), r_pb.astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        pearson = np.array([stats.pearsonr(a, b)[0] for a, b in zip(dP, dO, strict=True)])
    return {"mse": ((p_pb - r_pb) ** 2).mean(axis=1, dtype=dtype),
            "mae": np.abs(p_pb - r_pb).mean(axis=1, dtype=dtype),
            "mse_delta": ((dP - dO) ** 2).mean(axis=1, dtype=dtype),
            "mae_delta": np.abs(dP - dO).mean(axis=1, dtype=dtype),
            "pearson_delta": pearson}


def explain_pseudobulk(pred: ad.AnnData, real: ad.AnnData, ce_results: pd.DataFrame) -> None:
    """Re-score the pseudobulk metrics with cell-eval's precision: means rounded to X's dtype (polars casts the
    float64 mean back), then the differences, averages and correlation computed in that dtype (scikit-learn and
    scipy keep float32)."""
    dtype = real.X.dtype
    perts, p_pb, p_ctrl = pseudobulks(pred, dtype)
    _, r_pb, r_ctrl = pseudobulks(real, dtype)
    variants = [("float64", np.float64)] + ([(str(np.dtype(dtype)), dtype)] if dtype != np.float64 else [])
    for label, arithmetic in variants:
        values = pseudobulk_metric_values(p_pb, r_pb, p_ctrl, r_ctrl, arithmetic)
        diffs = ", ".join(f"{m} {max_abs_diff(ce_results.loc[perts, m], v)[0]:.2g}" for m, v in values.items())
        print(f"  means rounded to {dtype}, arithmetic in {label}: max diff {diffs}")
    if dtype == np.float32:
        print("  => residuals on the pseudobulk metrics are cell-eval's float32 rounding (relative ~1e-7 of the "
              "value); vclib works in float64. No vclib option needed; compare these metrics with rtol 1e-6 if values "
              "are large.")


def explain_pds(pred: ad.AnnData, real: ad.AnnData, ce_results: pd.DataFrame) -> None:
    """Re-score PDS L1 with cell-eval's exclusion rule (only the gene named exactly like the label) and 'own'."""
    genes = {g: i for i, g in enumerate(real.var_names)}
    perts, p_pb, p_ctrl = pseudobulks(pred, np.float64)
    _, r_pb, r_ctrl = pseudobulks(real, np.float64)
    label_rule = [[genes[p]] if p in genes else [] for p in perts]
    own_rule = [[genes[t] for t in vc.schema.targets(p) if t in genes] for p in perts]
    n_combos = sum("+" in p for p in perts)
    for name, rule in (("the gene named as the label (cell-eval)", label_rule),
                       ("every target gene (vclib 'own')", own_rule)):
        score = fn.discrimination_score(p_pb - p_ctrl, r_pb - r_ctrl, distance="l1", exclude=rule, ties="position")
        diff, n_bad = max_abs_diff(ce_results.loc[perts, "discrimination_score_l1"], score)
        print(f"  PDS L1 excluding {name:<40}: max diff {diff:.3g} ({n_bad} perts; {n_combos} combinations)")


# ---------------------------------------------------------------------------------------------- main

def run_pair(name: str, pred: ad.AnnData, real: ad.AnnData, exe: str | None, workdir: Path, threads: int,
             diagnose: bool) -> None:
    n_perts = real.obs[PERT_COL].nunique() - 1
    print(f"\n=== {name}: {real.n_obs} observed / {pred.n_obs} predicted cells x {real.n_vars} genes, "
          f"{n_perts} perturbations, X {real.X.dtype}")
    vcl, t_vc = run_vclib(pred, real)
    print(f"  vclib evaluate (all metrics, DE of both sides inside, in-process): {t_vc:.2f} s")
    if exe is None:
        print("  cell-eval not installed (set CELL_EVAL or put cell-eval on PATH): vclib side only.")
        return
    outdir = workdir / name
    outdir.mkdir(parents=True, exist_ok=True)
    pred_path, real_path = outdir / "pred.h5ad", outdir / "real.h5ad"
    pred.write_h5ad(pred_path)
    real.write_h5ad(real_path)
    ce, t_ce = run_cell_eval(exe, pred_path, real_path, outdir, threads)
    print(f"  cell-eval run --profile full (CLI process incl. startup and numba JIT): {t_ce:.2f} s")
    table = comparison_table(ce, vcl)
    print_table(table)
    bad = table.loc[~table["within_tol"], "metric"].tolist()
    print("  all shared metrics within 1e-6." if not bad else f"  NOT within 1e-6: {', '.join(bad)}")
    pseudobulk_metrics = {"pearson_delta", "mse", "mae", "mse_delta", "mae_delta"}
    residual = table.loc[table["metric"].isin(pseudobulk_metrics), "max_abs_diff"].max()
    if diagnose or residual > 1e-12:
        explain_pseudobulk(pred, real, ce)
    de_bad = [m for m in table["metric"] if m in DE_BASED and (diagnose or m in bad)]
    if de_bad:
        explain_de(ce, outdir, pred, real, de_bad)
    combos_with_targets = any(len(vc.schema.targets(p)) > 1 and set(vc.schema.targets(p)) & set(real.var_names)
                              for p in ce.index.astype(str))
    if diagnose or combos_with_targets or "discrimination_score_l1" in bad:
        explain_pds(pred, real, ce)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="cell-eval --num-threads")
    parser.add_argument("--keep", type=Path, default=None, help="keep the files and cell-eval outputs here")
    parser.add_argument("--diagnose", action="store_true", help="print the DE/pseudobulk/PDS diagnostics always")
    args = parser.parse_args()
    exe = find_cell_eval()
    print(f"cell-eval: {exe or 'not found'}; vclib options: {VCLIB_OPTIONS}")
    pairs = [("sim-seed", sim_seed_pair), ("sim-thinned", sim_thinned_pair), ("norman", norman_pair)]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or Path(tmp)
        for name, build in pairs:
            pair = build()
            if pair is None:
                print(f"\n=== {name}: skipped, {NORMAN} not found.")
                continue
            run_pair(name, *pair, exe, workdir, args.threads, args.diagnose)


if __name__ == "__main__":
    sys.exit(main())
