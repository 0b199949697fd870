"""The runner: parameters, never overwriting a run, resuming; and every notebook executed with papermill."""

from __future__ import annotations

import json
import shutil

import nbformat
import pytest

import vclib as vc
from vclib import cli, runner
from vclib.schema import VclibInputError

FAST = {"FAST": True}


def test_parse_value_like_papermill():
    assert runner.parse_value("3") == 3
    assert runner.parse_value("0.25") == 0.25
    assert runner.parse_value("false") is False
    assert runner.parse_value("None") is None
    assert runner.parse_value("../data/my screen.h5ad") == "../data/my screen.h5ad"


def test_unknown_parameter_lists_the_valid_ones(tmp_path):
    with pytest.raises(VclibInputError, match=r"no notebook has a parameter 'SEEED'; parameters are: .*SEED"):
        runner.run(parameters={"SEEED": 1}, results_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing was written


def test_cli_reports_bad_input(tmp_path, capsys):
    code = cli.main(["run", "-p", "NOPE", "1", "--results", str(tmp_path)])
    assert code == 2
    assert "no notebook has a parameter 'NOPE'" in capsys.readouterr().err


def test_existing_run_folder_is_never_overwritten(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("earlier results")
    with pytest.raises(VclibInputError, match=r"exists already; vclib never overwrites a run"):
        runner.run(parameters=FAST, results_dir=tmp_path, name="mine")
    assert (tmp_path / "mine" / "keep.txt").read_text() == "earlier results"


def test_resume_needs_same_parameters(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / runner.RUN_FILE).write_text(json.dumps(
        {"vclib_version": vc.__version__, "parameters": {"SEED": 1}, "notebooks": []}))
    with pytest.raises(VclibInputError, match=r"resuming needs the same parameters"):
        runner.run(parameters={"SEED": 2}, resume=run_dir)


@pytest.mark.notebooks
def test_interrupted_run_resumes(tmp_path):
    run_dir = tmp_path / "r"
    small = {**FAST, "MODELS": ["no_change", "training_mean"], "SPLITS": ["unseen_context"],
             "CAPACITY_WIDTHS": [16]}  # the resume is tested, not the science
    runner.run(parameters=small, results_dir=tmp_path, name="r", html=False)
    first = sorted(runner.notebooks())[0].name
    shutil.move(run_dir / first, tmp_path / "kept.ipynb")  # as if the run stopped before it finished
    runner.run(parameters=small, resume=run_dir, html=False)
    assert (run_dir / first).exists()


def _tiny_notebooks(folder, *, sleep: float = 0.0):
    """Two quick notebooks with a parameters cell, each writing a table: the runner's phases without the science."""
    folder.mkdir()
    for number, name in [(1, "first"), (2, "second")]:
        nb = nbformat.v4.new_notebook()
        params = nbformat.v4.new_code_cell(f'RESULTS_DIR = "."\nSLEEP = {sleep}')
        params.metadata["tags"] = ["parameters"]
        work = (f"import time, pathlib\ntime.sleep(SLEEP)\n"
                f"pathlib.Path(RESULTS_DIR, '{name}.csv').write_text('x\\n{number}\\n')")
        nb.cells = [nbformat.v4.new_markdown_cell(f"# Step {number}"), params, nbformat.v4.new_code_cell(work)]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, folder / f"0{number}_{name}.ipynb")
    return folder


def test_notebooks_name_the_vclib_kernel_and_run_where_it_is_missing(tmp_path, monkeypatch):
    """The notebooks open on "Python (vclib)"; `vclib run` uses that kernel where it is installed and falls back to
    python3 (this interpreter) where it is not, e.g. in an environment made without the Makefile."""
    import sys

    from jupyter_client.kernelspec import KernelSpecManager

    for path in runner.notebooks():
        spec = nbformat.read(path, as_version=4).metadata["kernelspec"]
        assert spec == {"name": "vclib", "display_name": "Python (vclib)", "language": "python"}, path.name
    installed = KernelSpecManager().find_kernel_specs()
    if "vclib" in installed:  # registered by `make venv`: it must run this environment's interpreter
        assert KernelSpecManager().get_kernel_spec("vclib").argv[0] == sys.executable
        assert runner.kernel_for(runner.notebooks()[0]) == "vclib"
    monkeypatch.setattr(KernelSpecManager, "find_kernel_specs",
                        lambda self: {k: v for k, v in installed.items() if k != "vclib"})
    assert runner.kernel_for(runner.notebooks()[0]) == "python3"
    notebooks = _tiny_notebooks(tmp_path / "nb")
    for path in notebooks.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        nb.metadata["kernelspec"] = {"name": "vclib", "display_name": "Python (vclib)", "language": "python"}
        nbformat.write(nb, path)
    _complete(runner.run(results_dir=tmp_path, name="r", notebooks_dir=notebooks, progress=False))


def _complete(run_dir) -> None:
    """A finished run: both notebooks, both HTML copies, both tables, an index linking every page."""
    for name in ("01_first", "02_second"):
        assert (run_dir / f"{name}.ipynb").exists() and (run_dir / f"{name}.html").exists()
        assert f'href="{name}.html"' in (run_dir / runner.REPORT_FILE).read_text()
    assert (run_dir / "second.csv").read_text() == "x\n2\n"
    assert not list(run_dir.glob(".partial-*")) and "(not run)" not in (run_dir / runner.REPORT_FILE).read_text()


def test_progress_names_the_notebook_and_the_running_section(tmp_path, capsys):
    notebooks = _tiny_notebooks(tmp_path / "nb")
    runner.run(results_dir=tmp_path, name="r", notebooks_dir=notebooks, html=False)
    shown = capsys.readouterr().out
    assert "1/2 01_first · Step 1" in shown and "2/2 02_second · Step 2" in shown


def test_kill_during_a_notebook_resumes_to_a_complete_report(tmp_path, monkeypatch):
    import papermill as pm

    notebooks = _tiny_notebooks(tmp_path / "nb")
    real = pm.execute_notebook

    def dies_in_second(path, out, **kw):
        if "02_" in path:
            real(path, out, **kw)  # ran, but the process dies before the runner sees it finish
            raise KeyboardInterrupt
        return real(path, out, **kw)

    monkeypatch.setattr(pm, "execute_notebook", dies_in_second)
    with pytest.raises(runner.Interrupted, match=r"interrupted in 02_second.ipynb.*Resume with: vclib run --resume"):
        runner.run(results_dir=tmp_path, name="r", notebooks_dir=notebooks, progress=False)
    run_dir = tmp_path / "r"
    assert (run_dir / "01_first.html").exists() and not (run_dir / "02_second.ipynb").exists()
    assert not (run_dir / runner.REPORT_FILE).exists()
    monkeypatch.setattr(pm, "execute_notebook", real)
    runner.run(resume=run_dir, notebooks_dir=notebooks, progress=False)
    _complete(run_dir)


def test_kill_between_html_and_rename_resumes_to_a_complete_report(tmp_path, monkeypatch):
    notebooks = _tiny_notebooks(tmp_path / "nb")
    real = runner._export_html

    def dies_after_first_html(notebook, target):
        real(notebook, target)
        if target.name == "01_first.html":
            raise SystemExit("killed")  # the HTML is written, the notebook not yet renamed into place

    monkeypatch.setattr(runner, "_export_html", dies_after_first_html)
    with pytest.raises(SystemExit):
        runner.run(results_dir=tmp_path, name="r", notebooks_dir=notebooks, progress=False)
    run_dir = tmp_path / "r"
    assert not (run_dir / "01_first.ipynb").exists()  # not counted as finished: it is redone on resume
    monkeypatch.setattr(runner, "_export_html", real)
    runner.run(resume=run_dir, notebooks_dir=notebooks, progress=False)
    _complete(run_dir)


def test_missing_html_or_index_is_redone_on_resume(tmp_path):
    notebooks = _tiny_notebooks(tmp_path / "nb")
    run_dir = runner.run(results_dir=tmp_path, name="r", notebooks_dir=notebooks, progress=False)
    kept = (run_dir / "02_second.ipynb").stat().st_mtime_ns
    (run_dir / "01_first.html").unlink()  # as an older vclib left it: killed between the rename and the HTML
    (run_dir / runner.REPORT_FILE).unlink()
    runner.run(resume=run_dir, notebooks_dir=notebooks, progress=False)
    _complete(run_dir)
    assert (run_dir / "02_second.ipynb").stat().st_mtime_ns == kept  # finished notebooks are not re-run


def test_sigkill_of_vclib_run_resumes(tmp_path):
    """A real SIGKILL of the whole process group while a notebook runs, then `vclib run --resume`."""
    import os
    import signal
    import subprocess
    import sys
    import time

    notebooks = _tiny_notebooks(tmp_path / "nb", sleep=1.5)
    command = [sys.executable, "-c", "import sys; from vclib.cli import main; sys.exit(main(sys.argv[1:]))",
               "run", "--results", str(tmp_path), "--name", "r", "--notebooks", str(notebooks)]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "r"
    deadline = time.monotonic() + 120
    while not (run_dir / "01_first.ipynb").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the runner and its kernel, in the second notebook
    process.wait()
    assert (run_dir / "01_first.ipynb").exists() and not (run_dir / runner.REPORT_FILE).exists()
    code = subprocess.run([*command[:3], "run", "--resume", str(run_dir), "--notebooks", str(notebooks)],
                          capture_output=True, text=True).returncode
    assert code == 0
    _complete(run_dir)
