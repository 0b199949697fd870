"""The figures issue 5 asks for, printed as tables.

1. Simulator: transferability as ``context_divergence`` rises, estimated (raw and noise-corrected) beside the
   simulator's ground truth.
2. Real response signatures (sigrecon): same- vs different-perturbation rank concordance for every context pair
   of the NeurIPS-2023 PBMC drugs, sci-Plex3 and Replogle K562/RPE1 sets.
3. Kang 2018 (IFN-beta, cell types) and Zhao 2021 (panobinostat, glioblastoma patients): control-cell distances
   and the transfer of the one perturbation between every pair of contexts.

Real data are read from ../shared/real-data (or $VCLIB_REAL_DATA); sections whose files are absent are skipped.
"""

import os
import time
import warnings
from pathlib import Path

import pandas as pd

import vclib as vc

ROOT = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("VCLIB_REAL_DATA", ROOT.parent / "shared" / "real-data"))
pd.set_option("display.width", 200)
pd.set_option("display.max_columns", 20)
start = time.perf_counter()

# 1 ------------------------------------------------------------------------------------------------ simulator
print("1. Simulator (4 contexts x 60 knockdowns + 10 doubles, 500 genes, 50 cells per condition), 6 context pairs "
      "per row.\n   Means over pairs; 'truth' = mean correlation of the true deltas of the shared perturbations; "
      "'weighted truth' = the same\n   weighted by sqrt(rel_a * rel_b) as the corrected estimate is.")
rows = []
for divergence in (0.0, 0.25, 0.5, 0.75, 1.0):
    adata = vc.loaders.simulate(context_divergence=divergence, seed=0)
    pairs = vc.coverage.summarize_transfer(vc.coverage.true_transfer(adata, vc.coverage.transferability(adata)))
    rows.append({"divergence": divergence, "mechanism_overlap": pairs["mechanism_overlap"].mean(),
                 "truth": pairs["true_transfer"].mean(), "weighted truth": pairs["true_transfer_weighted"].mean(),
                 "raw": pairs["same_raw"].mean(), "corrected": pairs["same_corrected"].mean(),
                 "max |corr - truth|": (pairs["same_corrected"] - pairs["true_transfer"]).abs().max(),
                 "max |corr - w.truth|": (pairs["same_corrected"] - pairs["true_transfer_weighted"]).abs().max(),
                 "chance": pairs["chance"].mean(), "r_corrected > 1": int(pairs["n_corrected_above_1"].sum())})
print(pd.DataFrame(rows).round(3).to_string(index=False))
print()

# 2 ------------------------------------------------------------------------------------------------ signatures
SIGNATURES = {"NeurIPS-2023 PBMC drugs": "neurips2023_pbmc_drugs_rank_signatures.h5ad",
              "sci-Plex3": "sciplex3_drugs_rank_signatures.h5ad",
              "Replogle K562/RPE1": "replogle2022_crispri_rank_signatures.h5ad"}
folder = REAL / "sigrecon_context_signatures"
if folder.exists():
    print("2. Real rank signatures: Spearman over genes ranked in both lists; 'different' = the same statistic "
          "for mismatched perturbations\n   (all partners where every gene is ranked, 50 random ones otherwise). "
          "No cells, so no reliability correction (uncorrected).")
    parts = []
    for name, file in SIGNATURES.items():
        # Drug names such as "(+)-JQ1" contain '+': a separator absent from every label keeps them whole.
        sig = vc.loaders.read(folder / file, values="signature", combination_sep=None)
        pairs = vc.coverage.summarize_transfer(vc.coverage.transferability(sig, seed=0))
        parts.append(pairs.assign(dataset=name))
    table = pd.concat(parts, ignore_index=True)
    table["pair"] = table["context_a"] + " - " + table["context_b"]
    table = table.rename(columns={"same_raw": "same (mean)", "same_median": "same (median)",
                                  "chance_raw": "different (mean)"})
    print(table[["dataset", "pair", "n_shared", "same (mean)", "same (median)", "different (mean)",
                 "beyond_chance"]].round(3).to_string(index=False))
    print()
else:
    print(f"2. skipped: {folder} not found\n")

# 3 ------------------------------------------------------------------------------------------------ Kang, GBM
CELLS = {"Kang 2018 IFN-beta, cell types": ("kang2018_ifnb_pbmc_muscat_subset/kang2018_muscat_example_sce.h5ad",
                                            "group_id", "cluster_id", "ctrl"),
         "Zhao 2021 panobinostat, patients": (
             "zhao2021_glioblastoma_panobinostat_lemur_subset/zhao2021_glioblastoma_panobinostat.h5ad",
             "condition", "patient_id", "ctrl")}
for number, (name, (file, perturbation_key, context_key, control)) in enumerate(CELLS.items(), start=3):
    path = REAL / file
    if not path.exists():
        print(f"{number}. skipped: {path} not found\n")
        continue
    adata = vc.loaders.read(path, perturbation_key=perturbation_key, context_key=context_key, control=control)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        distances = vc.coverage.control_distances(adata)
    pairs = vc.coverage.summarize_transfer(vc.coverage.transferability(adata))
    joined = vc.coverage.distance_vs_transfer(distances, pairs)
    joined["pair"] = joined["context_a"] + " - " + joined["context_b"]
    perturbation = sorted(set(adata.obs["perturbation"]) - {"control"})[0]
    print(f"{number}. {name}: control-cell distances (50-PC E-distance, 1 - r of control pseudobulks) and the "
          f"transfer of '{perturbation}' (Pearson r of deltas, raw and split-half corrected).")
    for w in caught:
        print(f"   warning: {w.message}")
    print(joined[["pair", "edistance", "correlation_distance", "same_raw", "same_corrected", "reliability_a",
                  "reliability_b"]].rename(columns={"same_raw": "r", "same_corrected": "r_corrected"})
          .round(3).to_string(index=False))
    for row in vc.coverage.rank_correlation(joined).itertuples():
        print(f"   {row.distance} vs corrected transfer: {row.reading}")
    print()

print(f"total {time.perf_counter() - start:.0f} s")
