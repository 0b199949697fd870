"""The notebooks in a real browser: JupyterLab from this environment, driven in Debian's chromium by Playwright.

Every notebook runs with Run All at FAST size with its widgets on (the interactive default), on copies in a temporary
folder; no cell may end in an error, every widget must render as a control whose changes redraw its output, and a
notebook reopened after its kernel is gone must show each widget's last view (the widget state saved with it). A
run's index.html (`vclib run -p FAST True`) must load every image and link. Skipped where chromium or playwright is
missing; VCLIB_REQUIRE_BROWSER=1 (.ci/run, `make test-browser`) turns that skip into a failure. The seconds each Run
All took are printed at the end of the session.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import http.server
import json
import os
import secrets
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from conftest import ROOT

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; a test tool's own browser download cannot run here
# as the machine's notes prescribe (Playwright passes the first two as well); the rest keep chromium off the network
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RUN_ALL_TIMEOUT = 900  # seconds per notebook: a slow shared machine, not a hang
NOTEBOOKS = sorted(ROOT.glob("notebooks/[0-9][0-9]_*.ipynb"))
WIDGET_ERROR = "Error displaying widget"
# The test's own user settings. Windowing off: JupyterLab 4 empties the prompts of cells out of view, and the test
# reads them to know when Run All is done. No news toast over the notebook.
USER_SETTINGS = {"@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
                 "@jupyterlab/apputils-extension/notification": {"fetchNews": "false"}}


def _unavailable(reason: str):
    if os.environ.get("VCLIB_REQUIRE_BROWSER"):
        pytest.fail(f"{reason} (VCLIB_REQUIRE_BROWSER is set: the browser tests must run here)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Debian's chromium under Playwright, with a new empty profile; closed after the module."""
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1600, "height": 1000})
        context.set_default_timeout(60_000)
        try:
            yield context
        finally:
            context.close()


def _digest(paths) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    runtime: Path

    def api(self, method: str, path: str) -> object:
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else None

    def stop_kernels(self) -> None:
        for session in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{session['id']}")


def _kernel_pids(runtime: Path) -> list[int]:
    """Processes whose command line names a connection file in this server's runtime folder: its kernels."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if str(runtime) in proc.joinpath("cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab of this environment on 127.0.0.1 (a free port, a token), serving copies of the notebooks with
    FAST = True injected as papermill would; its own config, data, settings and runtime folders, so nothing of the
    user's ~/.jupyter is read or written. Shut down with its kernels after the module."""
    from papermill.inspection import inspect_notebook
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    before = _digest(NOTEBOOKS)
    root = tmp_path_factory.mktemp("lab")
    (root / "notebooks").mkdir()
    for path in NOTEBOOKS:
        nb = load_notebook_node(str(path))
        if "FAST" in inspect_notebook(str(path)):
            nb = parameterize_notebook(nb, {"FAST": True})
        nbformat.write(nb, root / "notebooks" / path.name)
    home = root / ".jupyter-home"
    for plugin, settings in USER_SETTINGS.items():
        target = home / "settings" / f"{plugin}.jupyterlab-settings"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(settings))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_DATA_DIR": str(home / "data"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces")}
    token = secrets.token_hex(16)
    log = (root / "jupyterlab.log").open("w")
    # port 0: the server binds a free port itself and writes it to jpserver-<pid>.json (a port picked here could be
    # taken by another process, a kernel's ZMQ socket say, before the server binds it)
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", "--port=0",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         *(["--allow-root"] if os.geteuid() == 0 else [])],  # CI runs as root
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    served = Lab("", token, root, home / "runtime")
    info = served.runtime / f"jpserver-{server.pid}.json"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited with {server.returncode}:\n{(root / 'jupyterlab.log').read_text()}")
            try:
                served.url = f"http://127.0.0.1:{json.loads(info.read_text())['port']}"
                assert "started" in served.api("GET", "/api/status")
                break
            except (OSError, ValueError, KeyError, http.client.HTTPException):  # not written or not listening yet
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer in 120 s:\n{(root / 'jupyterlab.log').read_text()}")
                time.sleep(0.5)
        yield served
    finally:
        try:
            served.api("POST", "/api/shutdown")  # shuts its kernels down, then itself
            server.wait(60)
        except (urllib.error.URLError, OSError, subprocess.TimeoutExpired):
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        log.close()
        left = _kernel_pids(served.runtime)
        for pid in left:  # kernels this server started and failed to stop
            os.kill(pid, 9)
        assert not left, f"kernels outlived the JupyterLab server: {left}"
        assert _digest(NOTEBOOKS) == before, "the browser test modified the repository's notebooks"


def _open(browser, lab: Lab, name: str):
    """A new page of JupyterLab (?reset: no tabs restored) with this notebook opened from the file browser, on its
    own kernel. Opened once the Launcher offers "Python (vclib)": a notebook opened by URL asks its kernel before
    JupyterLab has its kernel list and can get a "Select Kernel" dialog for no reason of the notebook's."""
    page = browser.new_page()
    page.goto(f"{lab.url}/lab?reset&token={lab.token}")
    page.locator(".jp-LauncherCard").get_by_text("Python (vclib)", exact=True).first.wait_for(timeout=120_000)
    page.locator(".jp-DirListing-item").get_by_text("notebooks", exact=True).dblclick()
    page.locator(".jp-DirListing-item").get_by_text(name, exact=True).dblclick()
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell")
    kernel = page.locator(".jp-NotebookPanel .jp-Toolbar-kernelName").first
    try:
        page.wait_for_function(KERNEL_READY, timeout=120_000)
    except Exception:
        pass  # the assertions below say what is shown instead
    assert not page.locator(".jp-Dialog").count(), f"opening {name}: {page.locator('.jp-Dialog').inner_text()}"
    assert kernel.inner_text().strip() == "Python (vclib)", f"{name} opened on {kernel.inner_text()!r}"
    return page


KERNEL_READY = """() => document.querySelector('.jp-Dialog') || (
  document.querySelector('.jp-NotebookPanel .jp-Toolbar-kernelName')?.textContent.trim() === 'Python (vclib)'
  && document.querySelector('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator')?.dataset.status === 'idle')"""


def _evidence(page, lab: Lab, name: str) -> None:
    """A screenshot of the page a step failed on, its path printed with the failure."""
    shot = lab.root / f"{name}-failure.png"
    try:
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot of the failure: {shot}")
    except Exception as err:  # the page may be gone; the failure itself matters more
        print(f"no screenshot ({err})")


def _menu(page, menu: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel").get_by_text(menu, exact=True).click()
    page.locator(".lm-Menu-itemLabel").get_by_text(item, exact=True).click()


WIDGETS_SHOWN = """([n, error]) => document.body.innerText.includes(error) || [
  ...document.querySelectorAll('.jp-OutputArea-output')].filter(o => o.querySelector('.jupyter-widgets')).length >= n"""

ALL_RAN = """() => {
  const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')].map(p => p.textContent);
  return prompts.length > 0 && !prompts.some(p => p.includes('*')) && prompts.some(p => /\\d/.test(p));
}"""


def _run_all(page) -> float:
    """Run All, wait until no cell is running or queued; the seconds it took."""
    start = time.monotonic()
    _menu(page, "Run", "Run All Cells")
    page.wait_for_function(ALL_RAN, timeout=RUN_ALL_TIMEOUT * 1000, polling=500)
    return time.monotonic() - start


def _save(page, path: Path) -> nbformat.NotebookNode:
    """File > Save Notebook; the notebook as written, once the server has written all of it (it writes in place)."""
    clicked = time.time_ns()
    _menu(page, "File", "Save Notebook")
    deadline = time.monotonic() + 120
    while True:
        try:
            if path.stat().st_mtime_ns > clicked:
                return nbformat.read(path, as_version=4)
        except (OSError, nbformat.reader.NotJSONError):
            pass  # being written
        assert time.monotonic() < deadline, f"{path.name} was not saved within 120 s"
        time.sleep(0.5)


def _widget_outputs(page):
    """Each output area that holds a widget: the explorers and the progress bars."""
    return page.locator(".jp-OutputArea-output:has(.jupyter-widgets)")


def _explorers(page):
    """The output areas of the cells that display a vc.widgets explorer."""
    cells = page.locator(".jp-CodeCell", has=page.locator(".jp-InputArea", has_text="vc.widgets."))
    return cells.locator(".jp-OutputArea-output:has(.jupyter-widgets)")


def _image(widget) -> str:
    """The src of the figure a widget shows (empty while it redraws)."""
    images = widget.locator("img")
    return images.first.get_attribute("src") if images.count() else ""


def _check_widgets(page) -> list[dict]:
    """Every widget renders (no error text), every explorer is a control, and changing each of its dropdowns redraws
    its figure. Returns, per explorer, the values its dropdowns were left at (what a reopened notebook shows)."""
    assert page.get_by_text(WIDGET_ERROR).count() == 0
    widgets = _explorers(page)
    last = []
    for i in range(widgets.count()):
        widget = widgets.nth(i)
        widget.scroll_into_view_if_needed()
        selects = widget.locator("select")
        assert selects.count() >= 1, f"widget {i} shows no dropdown: {widget.inner_text()[:300]}"
        widget.locator("img").first.wait_for()
        for j in range(selects.count()):
            select = selects.nth(j)
            options = select.locator("option").all_inner_texts()
            if len(options) < 2:
                continue
            before = _image(widget)
            current = select.input_value()
            choice = next(v for v in select.locator("option").evaluate_all("os => os.map(o => o.value)")
                          if v != current)
            select.select_option(choice)
            page.wait_for_function("([w, b]) => { const i = w.querySelector('img'); return i && i.src !== b; }",
                                   arg=[widget.element_handle(), before], timeout=60_000)
            assert _image(widget) not in ("", before)
        last.append({"values": [s.input_value() for s in selects.all()], "image": _image(widget)})
    return last


def _check_failure_browser(page) -> None:
    """Notebook 03's browser: split and model come first; the condition list is that split's and model's only, and
    the dropdown is wide enough to show every label whole."""
    widgets = _explorers(page)
    boxes = [widgets.nth(i) for i in range(widgets.count()) if widgets.nth(i).locator("select").count() == 3]
    assert len(boxes) == 1, "notebook 03 shows no failure browser with split, model and condition"
    browser_box = boxes[0]
    selects = browser_box.locator("select")
    labels = [t.split("\n")[0] for t in browser_box.locator(".widget-dropdown label").all_inner_texts()]
    assert labels == ["split", "model", "condition"]
    conditions = [c.replace("\xa0", " ") for c in selects.nth(2).locator("option").all_inner_texts()]
    assert conditions and all(" | " in c for c in conditions), conditions  # ipywidgets shows spaces as NBSP
    fits = selects.nth(2).evaluate("""s => {
      const style = getComputedStyle(s), ctx = document.createElement('canvas').getContext('2d');
      ctx.font = `${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
      const widest = Math.max(...[...s.options].map(o => ctx.measureText(o.text).width));
      return {widest, inner: s.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight)};
    }""")
    assert fits["inner"] >= fits["widest"], f"condition labels are cut: {fits}"


def test_notebooks_run_all_in_jupyterlab(browser, lab, record_property):
    """Run All on each notebook in order (03 reads what 01 and 02 wrote), its widgets, then the reopened notebook."""
    timings = {}
    for path in NOTEBOOKS:
        copy = lab.root / "notebooks" / path.name
        page = _open(browser, lab, path.name)
        try:
            timings[path.stem] = _run_all(page)
            saved = _save(page, copy)
            errors = [f"cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, c in enumerate(saved.cells)
                      for o in c.get("outputs", []) if o.get("output_type") == "error"]
            assert not errors, f"{path.name}: {errors}"
            code = [c for c in saved.cells if c.cell_type == "code"]
            assert all(c.execution_count for c in code), f"{path.name}: not every cell ran"
            explorers = _check_widgets(page)
            if path.name.startswith("03"):
                _check_failure_browser(page)
            shown = _widget_outputs(page).count()
            saved = _save(page, copy)
        except Exception:
            _evidence(page, lab, path.stem)
            raise
        finally:
            page.close()
        lab.stop_kernels()
        if not shown:
            continue
        # reopened with its kernel gone, the notebook shows every widget from the state saved with it, each explorer
        # as it was left, instead of "Error displaying widget: model not found"
        assert saved.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json"), (
            f"{path.name} was saved without its widget state: is jupyter-config/lab-settings.json installed in "
            "this environment (make venv)?")
        page = _open(browser, lab, path.name)
        try:
            page.wait_for_function(WIDGETS_SHOWN, arg=[shown, WIDGET_ERROR], timeout=60_000)
            assert page.get_by_text(WIDGET_ERROR).count() == 0, page.get_by_text(WIDGET_ERROR).first.inner_text()
            assert _widget_outputs(page).count() == shown
            reopened = _explorers(page)
            views = [{"values": [s.input_value() for s in reopened.nth(i).locator("select").all()],
                      "image": _image(reopened.nth(i))} for i in range(reopened.count())]
            assert [v["values"] for v in views] == [e["values"] for e in explorers]
            assert [v["image"] for v in views] == [e["image"] for e in explorers], "not the figures last shown"
        except Exception:
            _evidence(page, lab, f"{path.stem}-reopened")
            raise
        finally:
            page.close()
        lab.stop_kernels()
    for name, seconds in timings.items():
        record_property("timing", f"{name}: Run All in JupyterLab {seconds:.1f} s")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def serve(tmp_path):
    """Serve a folder on 127.0.0.1 (a free port) while the test runs."""
    servers = []

    def start(folder: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_run_report_loads_every_image_and_link(browser, serve, tmp_path, record_property):
    """A run's index.html, served over HTTP: every image decodes and every link leads to a page of the run folder."""
    vclib = Path(sys.executable).with_name("vclib")
    start = time.monotonic()
    subprocess.run([str(vclib), "run", "-p", "FAST", "True", "--results", str(tmp_path), "--name", "r"],
                   check=True, stdout=subprocess.DEVNULL, cwd=tmp_path)
    record_property("timing", f"vclib run -p FAST True: {time.monotonic() - start:.1f} s")
    url = serve(tmp_path / "r")
    page = browser.new_page()
    failed = []
    page.on("requestfailed", lambda request: failed.append(f"{request.url}: {request.failure}"))
    page.on("response", lambda response: response.status >= 400 and failed.append(f"{response.url}: {response.status}"))
    try:
        page.goto(f"{url}/index.html", wait_until="load")
        images = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.src, i.complete && i.naturalWidth > 0])")
        assert images and all(ok for _, ok in images), images
        links = page.eval_on_selector_all("a[href]", "links => links.map(a => a.href)")
        assert len(links) >= len(NOTEBOOKS)
        for link in links:
            assert link.startswith(url), f"index.html links outside the run folder: {link}"
            response = page.request.get(link)
            assert response.ok and response.body(), f"{link}: {response.status}"
        assert not failed, failed
    finally:
        page.close()
