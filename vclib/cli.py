"""The ``vclib`` command line: ``vclib run`` executes the notebooks with papermill."""

from __future__ import annotations

import argparse
import sys

from vclib import runner
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
                     help="'simulated' (default) or a path to an .h5ad file")
    run.add_argument("--perturbation-key", help="obs column with the perturbation")
    run.add_argument("--context-key", help="obs column with the context ('none' for a single context)")
    run.add_argument("--control", help="label of the control cells")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="any notebook parameter, as papermill's -p (repeatable)")
    run.add_argument("--results", default="results", help="parent folder of the runs (default: results)")
    run.add_argument("--name", help="name of the run folder (default: a time stamp); never overwritten")
    run.add_argument("--resume", metavar="RUN_DIR", help="finish an interrupted run in its folder")
    run.add_argument("--notebooks", help="folder of the notebooks (default: the repository's notebooks/)")
    run.add_argument("--no-html", action="store_true", help="skip the HTML copies")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    parameters = {name: runner.parse_value(value) for name, value in args.parameter}
    for option, key in [("dataset", "DATASET"), ("perturbation_key", "PERTURBATION_KEY"),
                        ("context_key", "CONTEXT_KEY"), ("control", "CONTROL")]:
        value = getattr(args, option)
        if value is not None:
            parameters[key] = None if option == "context_key" and value.lower() == "none" else value
    try:
        run_dir = runner.run(parameters=parameters, results_dir=args.results, name=args.name,
                             resume=args.resume, notebooks_dir=args.notebooks, html=not args.no_html)
    except VclibInputError as err:
        print(f"vclib: {err}", file=sys.stderr)
        return 2
    print(f"Executed notebooks and HTML copies are in {run_dir}/")
    for path in sorted(run_dir.glob("*.html")):
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
