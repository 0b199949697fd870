"""Run the notebooks in order with papermill, into a fresh results folder, with HTML copies.

A run folder is never overwritten: a new run gets a new folder; ``resume=`` continues an interrupted run in
its own folder with the parameters recorded in its ``run.json``, redoing whatever is missing. A notebook counts as
finished only when both its executed copy and its HTML copy are in place (each written under a temporary name and
renamed). A failing notebook gives one :class:`RunError` naming the notebook, the section and the error, with the
partial notebook kept and papermill's traceback in the run's ``vclib.log``.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import sys
from datetime import datetime
from pathlib import Path

from vclib import __version__
from vclib.report import REPORT_FILE, RUN_FILE, key_figures, write_index
from vclib.schema import VclibInputError

LOG_FILE = "vclib.log"
CELL_TIMEOUT = 3600  # seconds; a stuck cell fails the run instead of blocking it forever

__all__ = ["LOG_FILE", "REPORT_FILE", "RUN_FILE", "Interrupted", "RunError", "declared_parameters", "kernel_for",
           "key_figures", "notebooks", "parse_parameters", "parse_value", "run"]


class RunError(VclibInputError):
    """A notebook of a run failed; the message names the notebook, its section, the error and how to resume."""


class Interrupted(RunError):
    """The run was interrupted (Ctrl-C); the message says how to resume it."""


def default_notebooks_dir() -> Path:
    """``notebooks/`` of the source tree (vclib is installed editable), else of the working directory."""
    beside = Path(__file__).resolve().parents[1] / "notebooks"
    return beside if beside.is_dir() else Path.cwd() / "notebooks"


def notebooks(directory: str | Path | None = None) -> list[Path]:
    """The workbench notebooks (``NN_name.ipynb``) in run order."""
    directory = Path(directory) if directory is not None else default_notebooks_dir()
    found = sorted(p for p in directory.glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise VclibInputError(f"no notebooks named NN_name.ipynb in {str(directory)!r}.")
    return found


FALLBACK_KERNEL = "python3"


def kernel_for(notebook: str | Path) -> str:
    """The Jupyter kernel that runs ``notebook``: the one its metadata names (``vclib``, "Python (vclib)", which
    ``make venv`` registers in the environment with ``ipykernel install --sys-prefix``) where that kernel is
    installed, else ``python3``, ipykernel's kernel for the interpreter running vclib. An environment made without
    the Makefile (``pip install -e .``, conda) so still runs the notebooks instead of failing on a missing kernel.
    """
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager

    name = nbformat.read(notebook, as_version=4).metadata.get("kernelspec", {}).get("name", FALLBACK_KERNEL)
    return name if name in KernelSpecManager().find_kernel_specs() else FALLBACK_KERNEL


BOOLEANS = {"true": True, "false": False}
NONES = ("none", "null")


def parse_value(text: str):
    """Turn a ``-p NAME VALUE`` string into a Python value, as papermill's ``-p`` does: Python literals, the
    spellings ``true`` / ``false`` / ``none`` / ``null`` in any case, anything else a string.

    Examples
    --------
    >>> parse_value("3"), parse_value("0.5"), parse_value("True"), parse_value("None"), parse_value("K562")
    (3, 0.5, True, None, 'K562')
    >>> parse_value("['unseen_context', 'combinations']")
    ['unseen_context', 'combinations']
    """
    lowered = text.strip().lower()
    if lowered in BOOLEANS:
        return BOOLEANS[lowered]
    if lowered in NONES:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _kind(default) -> str:
    return {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict"}.get(type(default), "")


def check_value(name: str, value, default):
    """A ``-p`` value checked against the type of the parameter's default in the notebooks.

    A boolean parameter takes only a boolean (``True``/``False``, any case); a list parameter given a bare word
    becomes that one-element list only when the word is not a list's spelling by mistake, otherwise an error; an
    int/float parameter refuses text. ``None`` is accepted where the default is ``None`` or documented optional.
    """
    kind = _kind(default)
    if value is None or default is None:
        return value
    if kind == "bool" and not isinstance(value, bool):
        raise VclibInputError(f"parameter {name} is a boolean (default {default!r}); got {value!r}. Use True or "
                              "False (true/false in any case).")
    if kind in ("int", "float") and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise VclibInputError(f"parameter {name} is a number (default {default!r}); got {value!r}.")
    if kind == "int" and isinstance(value, float) and not value.is_integer():
        raise VclibInputError(f"parameter {name} is an integer (default {default!r}); got {value!r}.")
    if kind == "list" and not isinstance(value, list | tuple):
        raise VclibInputError(
            f"parameter {name} is a list (default {default!r}); got the single value {value!r}. Write it as a "
            f"Python list, quoted for the shell: -p {name} \"[{value!r}]\".")
    if kind == "str" and not isinstance(value, str):
        return str(value)
    return value


def declared_parameters(paths: list[Path]) -> dict[str, dict]:
    """Parameters declared in the ``parameters`` cell of each notebook, by notebook name."""
    import papermill as pm

    return {p.name: pm.inspect_notebook(str(p)) for p in paths}


def _defaults(declared: dict[str, dict]) -> dict:
    out = {}
    for params in declared.values():
        for name, info in params.items():
            try:
                out.setdefault(name, ast.literal_eval(info["default"]))
            except (ValueError, SyntaxError):
                out.setdefault(name, info["default"])
    return out


def parse_parameters(pairs: list[tuple[str, str]], paths: list[Path] | None = None) -> dict:
    """``-p NAME VALUE`` pairs parsed and checked against the notebooks' parameter cells (names and types)."""
    paths = paths or notebooks()
    declared = declared_parameters(paths)
    defaults = _defaults(declared)
    out = {}
    for name, text in pairs:
        if name not in defaults:
            raise VclibInputError(f"no notebook has a parameter {name!r}; parameters are: "
                                  f"{', '.join(sorted(defaults))}.")
        out[name] = check_value(name, parse_value(text), defaults[name])
    return out


def resolve_dataset(value, *, cwd: Path) -> str:
    """``DATASET`` as the notebooks need it: a path relative to the caller's folder made absolute (the notebooks
    run in ``notebooks/``); ``"simulated"`` and registry names unchanged."""
    from vclib.loaders import REGISTRY

    text = str(value)
    if text == "simulated" or text in REGISTRY:
        return text
    path = Path(text).expanduser()
    path = path if path.is_absolute() else (cwd / path)
    if not path.exists():
        raise VclibInputError(
            f"dataset {text!r} is neither 'simulated', a registered dataset (`vclib datasets list`), nor an existing "
            f"file (looked for {str(path)!r})."
        )
    return str(path.resolve())


def _new_run_dir(results_dir: Path, name: str | None) -> Path:
    if name is not None:
        if not name or Path(name).name != name or name in (".", ".."):
            raise VclibInputError(f"--name {name!r} must be a folder name, not a path; the run goes to "
                                  f"{str(results_dir)!r}/NAME (choose the parent with --results).")
        run_dir = results_dir / name
        if run_dir.exists():
            raise VclibInputError(
                f"results folder {str(run_dir)!r} exists already; vclib never overwrites a run. Choose another "
                "--name, or pass --resume to finish an interrupted run."
            )
        return run_dir
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = results_dir / stamp
    i = 1
    while run_dir.exists():
        run_dir = results_dir / f"{stamp}-{i}"
        i += 1
    return run_dir


def _section(nb, cell_index: int) -> str:
    """The title of the markdown heading above a cell (its section), or the cell's number."""
    for cell in reversed(nb.cells[: cell_index + 1]):
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return f"cell {cell_index + 1}"


@contextlib.contextmanager
def _stderr_to(path: Path):
    """Send this process's file descriptor 2 (and the kernel's, which inherits it) to a log file: the Jupyter
    kernel's start-up warnings go there, not to the terminal. The progress bars write to stdout."""
    sys.stderr.flush()
    saved = os.dup(2)
    with path.open("a") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _section_engine():
    """papermill's nbclient engine, with the progress bar's label naming the section of the running cell (the grid
    of notebook 02 runs for minutes: the bar says so instead of looking stalled). Registered as ``"vclib"``."""
    from papermill.engines import NBClientEngine, papermill_engines

    class SectionEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
            label, start = (nb_man.pbar.desc if nb_man.pbar else ""), nb_man.cell_start

            def cell_start(cell, cell_index=None, **options):
                start(cell, cell_index, **options)
                if nb_man.pbar is not None and cell_index is not None:
                    section = _section(nb_man.nb, cell_index)
                    nb_man.pbar.set_description(f"{label} · {section[:40]}", refresh=True)

            nb_man.cell_start = cell_start
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register("vclib", SectionEngine)
    return "vclib"


def _export_html(notebook: Path, target: Path) -> None:
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook, as_version=4)
    nb.metadata["title"] = _section(nb, 0) if nb.cells else notebook.stem
    body, _ = HTMLExporter().from_notebook_node(nb, resources={"metadata": {"name": nb.metadata["title"]}})
    tmp = target.with_name(f".partial-{target.name}")
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, target)


def run(
    *,
    parameters: dict | None = None,
    results_dir: str | Path = "results",
    name: str | None = None,
    resume: str | Path | None = None,
    notebooks_dir: str | Path | None = None,
    html: bool = True,
    kernel_name: str | None = None,
    progress: bool = True,
    cwd: str | Path | None = None,
) -> Path:
    """Execute every notebook in order into a new results folder and return that folder.

    Parameters
    ----------
    parameters
        Notebook parameters by name (e.g. ``{"DATASET": "simulated", "FAST": True}``). Each notebook gets the
        ones its ``parameters`` cell declares; a name no notebook declares is an error, and so is a value of the
        wrong type. ``RESULTS_DIR`` is always set to the run folder, and ``WIDGETS`` defaults to False
        (interactive explorers are for JupyterLab; the HTML report is static). A relative ``DATASET`` path is
        taken relative to ``cwd``.
    results_dir
        Parent folder of the runs (relative to ``cwd``).
    name
        Name of the run folder (a name, not a path); default a time stamp. An existing folder is never
        overwritten.
    resume
        A run folder to continue with the parameters its ``run.json`` recorded (``parameters``, if given, must
        match them); notebooks already finished there are skipped, anything missing is redone.
    notebooks_dir
        Where the notebooks are (default: the repository's ``notebooks/``).
    html
        Also write an HTML copy of each executed notebook and the run's ``index.html``.
    kernel_name
        Jupyter kernel; default the notebook's own where it is installed (the "Python (vclib)" kernel ``make venv``
        registers), else ``python3`` (:func:`kernel_for`).
    progress
        Show a progress bar per notebook.
    cwd
        Folder that relative paths are relative to (default: the current working directory).

    Returns
    -------
    The run folder, holding the executed notebooks, their HTML copies, ``index.html`` (the dataset and parameters,
    links, the key figures and plots, what was skipped and why), ``run.json``, ``vclib.log`` and every table the
    notebooks wrote.

    Raises
    ------
    RunError
        When a notebook fails: which notebook, which section, the error, where the partial notebook and the log
        are, and the command that resumes.
    """
    cwd = Path(cwd) if cwd is not None else Path.cwd()
    paths = notebooks(notebooks_dir)
    declared = declared_parameters(paths)
    defaults = _defaults(declared)
    given = dict(parameters or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise VclibInputError(
            f"no notebook has a parameter {', '.join(map(repr, unknown))}; parameters are: "
            f"{', '.join(sorted(defaults))}."
        )
    given = {k: check_value(k, v, defaults[k]) for k, v in given.items()}
    if "DATASET" in given:
        given["DATASET"] = resolve_dataset(given["DATASET"], cwd=cwd)
    if given.get("EXTERNAL"):  # prediction folders / templates, relative to the caller's folder like DATASET
        given["EXTERNAL"] = {name: str(Path(source) if Path(source).is_absolute() else cwd / source)
                             for name, source in given["EXTERNAL"].items()}
    if resume is not None:
        run_dir = Path(resume) if Path(resume).is_absolute() else cwd / resume
        if not (run_dir / RUN_FILE).exists():
            raise VclibInputError(f"{str(run_dir)!r} is not a vclib run folder (no {RUN_FILE}).")
        previous = json.loads((run_dir / RUN_FILE).read_text())
        if previous["vclib_version"] != __version__:
            raise VclibInputError(f"{str(run_dir)!r} was run with vclib {previous['vclib_version']}; resuming needs "
                                  f"the same version (this is {__version__}). Start a new run instead.")
        if given and given != previous["parameters"]:
            raise VclibInputError(
                f"{str(run_dir)!r} was run with {previous['parameters']}; resuming needs the same parameters, got "
                f"{given}. Leave out -p to resume with the recorded ones."
            )
        given = previous["parameters"]
    else:
        run_dir = _new_run_dir(Path(results_dir) if Path(results_dir).is_absolute() else cwd / results_dir, name)
        run_dir.mkdir(parents=True)
        (run_dir / RUN_FILE).write_text(json.dumps(
            {"vclib_version": __version__, "parameters": given, "notebooks": [p.name for p in paths]},
            indent=2, default=str))

    import papermill as pm

    log = run_dir / LOG_FILE
    for number, path in enumerate(paths, 1):
        out, page = run_dir / path.name, run_dir / path.with_suffix(".html").name
        if out.exists() and html and not page.exists():  # stopped between the notebook and its HTML copy
            _export_html(out, page)
        if out.exists():
            continue
        partial = run_dir / f".partial-{path.name}"
        own = {k: v for k, v in given.items() if k in declared[path.name]}
        if "RESULTS_DIR" in declared[path.name]:
            own["RESULTS_DIR"] = str(run_dir.resolve())
        if "WIDGETS" in declared[path.name]:  # batch runs render static HTML, where widgets cannot respond
            own.setdefault("WIDGETS", False)
        bar = {"desc": f"{number}/{len(paths)} {path.stem}", "file": sys.stdout} if progress else False
        kernel = kernel_name or kernel_for(path)
        try:
            with _stderr_to(log):
                pm.execute_notebook(str(path), str(partial), parameters=own, cwd=str(path.parent),
                                    kernel_name=kernel, progress_bar=bar, execution_timeout=CELL_TIMEOUT,
                                    engine_name=_section_engine())
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted in {path.name}; the finished notebooks are kept. Resume with: vclib run "
                              f"--resume {run_dir}") from None
        except pm.PapermillExecutionError as err:
            import nbformat

            section = _section(nbformat.read(partial, as_version=4), err.cell_index)
            with log.open("a") as handle:
                handle.write(f"\n--- {path.name}, section {section!r}, cell {err.cell_index + 1}\n")
                handle.write("\n".join(err.traceback) + "\n")
            raise RunError(
                f"notebook {path.name} failed in section {section!r} ({err.ename}: {err.evalue}).\n"
                f"  partial notebook: {partial}\n  full traceback: {log}\n"
                f"  after fixing the cause, resume with: vclib run --resume {run_dir}"
            ) from None
        if html:
            _export_html(partial, page)
        os.replace(partial, out)  # the notebook counts as done only once it ran to the end (and has its HTML)
    if html:
        write_index(run_dir, paths)
    return run_dir
