"""`vclib evaluate --parity cell-eval` next to `cell-eval run --profile full --num-threads 2`, as whole commands.

Both commands run as subprocesses on the same two h5ad files in cell-eval's layout (obs ``target_gene``, control
``non-targeting``, one context): by default ``/tmp/msf/{real,pred}.h5ad`` when present (11,000 cells x 8,000 genes x
200 perturbations, as ``metrics_speed.py --keep /tmp/msf`` writes them), otherwise files built the same way
(``metrics_speed.build_files``; ``--small`` for a reduced design). The wall times include everything a user waits
for: python start, imports, reading both files, the work and the exit. vclib runs twice (the first run may compile
numba's kernels into its on-disk cache; the second is what every later run costs); cell-eval once (it caches
nothing). vclib evaluate also computes what cell-eval run does not: the DE of the two split halves of the
observation for the noise ceiling, the context-mean baseline, bootstrap CIs and calibrated scores.

Printed: the machine's load average before each command and the CPU seconds other processes used meanwhile, both
wall times, their ratio, vclib's time per stage (from its evaluate.json) and the parity of every metric both tools
report (max |difference| over perturbations, ``metrics_speed.parity_summary``).

Usage: ``python benchmarks/evaluate_cli.py [--files DIR] [--small] [--keep DIR]``.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import metrics_speed  # noqa: E402  (a sibling script: cell-eval's runner, the files, parity)

DEFAULT_FILES = Path("/tmp/msf")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_vclib(real: Path, pred: Path, out_dir: Path) -> dict:
    """``vclib evaluate PRED REAL -o OUT --parity cell-eval`` with the vclib beside this interpreter."""
    exe = Path(sys.executable).parent / "vclib"
    cmd = [str(exe), "evaluate", str(pred), str(real), "-o", str(out_dir), "--parity", "cell-eval", "--no-progress"]
    load = load_average()
    start = time.perf_counter()
    proc, others = metrics_speed.measured(cmd)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"vclib evaluate failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    record = json.loads((out_dir / "evaluate.json").read_text())
    return {"seconds": elapsed, "others_cpu_s": others, "load": load, "stages": record["seconds"]}


def main(files: Path | None, small: bool, keep: Path | None) -> None:
    print(f"{os.cpu_count()} CPUs; load average at the start: {load_average()}")
    with tempfile.TemporaryDirectory() as scratch:
        tmp = keep or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        if files is None and not small and (DEFAULT_FILES / "real.h5ad").exists():
            files = DEFAULT_FILES
        if files is not None:
            real, pred = files / "real.h5ad", files / "pred.h5ad"
            print(f"files: {real} ({real.stat().st_size / 1e6:.0f} MB), {pred} ({pred.stat().st_size / 1e6:.0f} MB)")
        else:
            size = metrics_speed.SMALL if small else metrics_speed.FULL
            real, pred, built = metrics_speed.build_files(size, tmp)
            print(f"files built with the simulator in {built:.1f} s (not timed): {size['n_perturbations']} "
                  f"perturbations x {size['cells_per_condition']} cells + {size['control_cells']} controls, "
                  f"{size['n_genes']} genes")
        runs = []
        for i in (1, 2):
            out = tmp / f"vclib-evaluate-{i}"
            if out.exists():
                raise SystemExit(f"{out} exists (an earlier --keep run?); pass another --keep folder")
            runs.append(run_vclib(real, pred, out))
            r = runs[-1]
            print(f"vclib evaluate --parity cell-eval, run {i}: {r['seconds']:.2f} s (load average before: "
                  f"{r['load']}; {metrics_speed.contention(r)})")
        stages = ", ".join(f"{name} {s:.2f}" for name, s in runs[-1]["stages"].items())
        print(f"  vclib's stages in run 2 (s; inside the process): {stages}")
        exe = metrics_speed.find_cell_eval()
        if exe is None:
            print("cell-eval: not installed (set CELL_EVAL or put cell-eval on PATH); no ratio, no parity.")
            return
        load = load_average()
        ce = metrics_speed.run_cell_eval(exe, real, pred, tmp / "cell-eval")
        print(f"cell-eval run --profile full --num-threads 2: {ce['seconds']:.1f} s (load average before: {load}; "
              f"{metrics_speed.contention(ce)})")
        print(f"\nratio cell-eval / vclib evaluate (whole commands): run 1 {ce['seconds'] / runs[0]['seconds']:.1f}x, "
              f"run 2 {ce['seconds'] / runs[1]['seconds']:.1f}x")
        print("parity: " + metrics_speed.parity_summary(tmp / "cell-eval", tmp / "vclib-evaluate-2" / "scores.csv"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=Path, default=None,
                        help=f"folder with real.h5ad and pred.h5ad (default {DEFAULT_FILES} when present)")
    parser.add_argument("--small", action="store_true", help="build a reduced design instead (a quick check)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the outputs of both tools in this folder")
    args = parser.parse_args()
    main(args.files, args.small, args.keep)
