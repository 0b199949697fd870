"""The ``vclib`` command line.

``vclib run`` executes the notebooks with papermill; ``vclib datasets list`` shows the registry of public
perturbation screens and what is cached, ``vclib datasets get NAME`` downloads, verifies and caches one.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from vclib import loaders, runner
from vclib.schema import VclibInputError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vclib", description="vclib: test virtual-cell claims on your data.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run all notebooks in order into results/<run>/",
        description="Run all notebooks in order with papermill into a new folder results/<run>/, with HTML "
        "copies. Example sweep: for d in 0 0.5 1; do vclib run -p CONTEXT_DIVERGENCE $d; done",
    )
    run.add_argument("dataset", nargs="?", default=None,
                     help="'simulated' (default), a registry name (vclib datasets list) or a path to an .h5ad")
    run.add_argument("--perturbation-key", help="obs column with the perturbation")
    run.add_argument("--context-key", help="obs column with the context ('none' for a single context)")
    run.add_argument("--control", help="label of the control cells")
    run.add_argument("--values", help="what X holds: auto (default), counts, log1p, log2p or signature")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="any notebook parameter, as papermill's -p (repeatable)")
    run.add_argument("--results", default="results", help="parent folder of the runs (default: results)")
    run.add_argument("--name", help="name of the run folder (default: a time stamp); never overwritten")
    run.add_argument("--resume", metavar="RUN_DIR", help="finish an interrupted run in its folder")
    run.add_argument("--notebooks", help="folder of the notebooks (default: the repository's notebooks/)")
    run.add_argument("--no-html", action="store_true", help="skip the HTML copies")

    datasets = sub.add_parser(
        "datasets",
        help="list, download and cache public perturbation screens",
        description="The registry of public perturbation screens (URLs and their sources: data/README.md). "
        "Files are cached in $VCLIB_DATA_DIR (default: data/cache/ of a source checkout, else the user cache).",
    )
    actions = datasets.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="every registered dataset, and whether it is cached")
    listing.add_argument("--cache-dir", help="cache folder (default: $VCLIB_DATA_DIR or data/cache/)")
    get = actions.add_parser("get", help="download, verify and cache a dataset; print where it is")
    get.add_argument("name", help="registry name, as `vclib datasets list` shows it")
    get.add_argument("--cache-dir", help="cache folder (default: $VCLIB_DATA_DIR or data/cache/)")
    get.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _datasets(args: argparse.Namespace) -> int:
    folder = loaders.cache_dir(args.cache_dir)
    if args.action == "list":
        table = loaders.available(cache_dir=folder)
        table["cached"] = table["cached"].map({True: "yes", False: "-"})
        columns = ["name", "cached", "size", "contexts", "perturbation_type", "source"]
        with pd.option_context("display.max_colwidth", 45, "display.width", 250):
            print(table[columns].to_string(index=False))
        print(f"\n{len(table)} datasets; cache: {folder}. `vclib datasets get NAME` downloads one; "
              "vc.loaders.load(NAME) reads it into the data contract.")
        return 0
    try:
        paths = loaders.fetch(args.name, cache_dir=folder, progressbar=not args.no_progress)
    except VclibInputError as err:
        print(f"vclib: {err}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


def _run(args: argparse.Namespace) -> int:
    try:
        parameters = runner.parse_parameters(args.parameter, runner.notebooks(args.notebooks))
        for option, key in [("dataset", "DATASET"), ("perturbation_key", "PERTURBATION_KEY"),
                            ("context_key", "CONTEXT_KEY"), ("control", "CONTROL"), ("values", "VALUES")]:
            value = getattr(args, option)
            if value is not None:
                parameters[key] = None if option == "context_key" and value.lower() == "none" else value
        run_dir = runner.run(parameters=parameters, results_dir=args.results, name=args.name,
                             resume=args.resume, notebooks_dir=args.notebooks, html=not args.no_html)
    except runner.Interrupted as err:
        print(f"\nvclib: {err}", file=sys.stderr)
        return 130
    except VclibInputError as err:
        print(f"vclib: {err}", file=sys.stderr)
        return 2
    print(f"Executed notebooks and HTML copies are in {run_dir}/")
    if (run_dir / runner.REPORT_FILE).exists():
        print(f"  report: {run_dir / runner.REPORT_FILE}")
    figures = runner.key_figures(run_dir)
    if figures is not None and len(figures):
        from vclib.report import figure_table

        shown = figure_table(figures[[c for c in ["split", "metric", "best_model", "best_baseline",
                                                  "beats_best_baseline", "best_learned", "learned_vs_baseline",
                                                  "learned_calibrated", "note"] if c in figures]])
        print("\nKey figures (best model and best baseline; does the best learned model beat that baseline beyond "
              "the noise, and where does it sit between the baseline (0) and the noise ceiling (1)?):")
        with pd.option_context("display.width", 200, "display.max_colwidth", 60):
            print(shown.to_string(index=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "datasets":
        return _datasets(args)
    return _run(args)
