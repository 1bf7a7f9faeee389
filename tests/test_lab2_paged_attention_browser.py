"""Lab 2's stepper in a real browser: JupyterLab as `make lab` starts it, headless Chromium, one click.

Why a browser: nbclient (test_notebooks.py) runs the cells but renders nothing, so it cannot see a
widget that fails to load in JupyterLab (an ipywidgets / jupyterlab_widgets mismatch shows "Error
displaying widget" or "Failed to load model class" in the page while every cell succeeds). Here a
headless Chromium, driven by Playwright with Debian's /usr/bin/chromium (no `playwright install`:
this machine's network is closed), opens Lab 2 in JupyterLab, runs its cells up to the stepper,
clicks "engine.step()" and sees the block table redrawn by the live engine in the kernel.

The server gets `make lab`'s flags plus what a test needs: a free port, a token, no browser of its
own, and a temporary root (a copy of the notebook: the real one is never saved), workspace,
settings and runtime folder. On failure a screenshot and the page's text go to the test's tmp dir.
Install what it needs with `bash tests/install_browser.sh` (`make test` does).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import psutil
import pytest
import requests

from labs.core.paths import NOTEBOOKS_DIR

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
INSTALL_CMD = "bash tests/install_browser.sh"
BACKGROUND_INSTALL_LOG = Path(__file__).resolve().parents[1] / "logs" / "browser-install.log"  # `make test`'s
BACKGROUND_INSTALL_EXIT = BACKGROUND_INSTALL_LOG.with_suffix(".exit")  # written when that install ends
BACKGROUND_INSTALL_WAIT_S = 900  # apt-get of Chromium and its libraries on a slow mirror, beside the tests
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NOTEBOOK = "02_paged_attention.ipynb"
STEP_BUTTON = "engine.step()"
# The engine starts in the kernel in ~20-60 s on 2 cores; other tests may share those cores.
KERNEL_TIMEOUT_MS = 180_000
ENGINE_TIMEOUT_MS = 600_000
STEP_TIMEOUT_MS = 180_000
WIDGET_TIMEOUT_MS = 60_000  # from the cell's end to its widget drawn
SERVER_START_TIMEOUT_S = 120
# What the page shows when a widget, a cell or the kernel fails.
PAGE_ERRORS = re.compile(r"Error displaying widget|Failed to load model class|Traceback \(most recent call last\)"
                         r"|kernel appears to have died|Kernel Restarting|Dead kernel"
                         r"|[VH]Box\(children=", re.IGNORECASE)  # the text stand-in of a widget that did not render


def _can_install_chromium() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def wait_for_background_install(log: Path = BACKGROUND_INSTALL_LOG, exit_file: Path = BACKGROUND_INSTALL_EXIT,
                                timeout_s: float = BACKGROUND_INSTALL_WAIT_S) -> str | None:
    """Wait for `make test`'s background install of Chromium, if one is running; None when none was
    started or it succeeded, else why it did not (its exit status and the log's last lines)."""
    if not log.exists():
        return None
    deadline = time.monotonic() + timeout_s
    while not exit_file.exists():
        if time.monotonic() > deadline:
            return f"the background install ({log}) did not end within {timeout_s:.0f} s"
        time.sleep(1)
    status = exit_file.read_text().strip()
    if status == "0":
        return None
    return f"the background install failed (exit {status}); {log} ends:\n" + "\n".join(log.read_text().splitlines()[-15:])


@pytest.mark.parametrize("apt_get_exit", [0, 100])
def test_make_tests_background_install_is_waited_for_and_its_failure_named(apt_get_exit: int, tmp_path: Path) -> None:
    """`install_browser.sh --background` returns at once; the test waits for the install's end and
    names a failure with its log. apt-get is a stand-in here (a fresh machine's real install is CI's)."""
    if not _can_install_chromium():
        pytest.skip("the script installs only as root with apt-get")
    fake_bin, chromium, logs = tmp_path / "bin", tmp_path / "chromium", tmp_path / "logs"
    fake_bin.mkdir()
    (fake_bin / "apt-get").write_text(
        "#!/bin/sh\nsleep 1\n" + (f"[ \"$1\" = install ] && printf '#!/bin/sh\\necho Chromium 1\\n' > {chromium}"
                                  f" && chmod +x {chromium}\nexit 0\n" if apt_get_exit == 0 else
                                  "echo 'E: Unable to locate package chromium' >&2\nexit 100\n"))
    (fake_bin / "apt-get").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", "WORKBOOK_CHROMIUM": str(chromium),
           "WORKBOOK_BROWSER_LOG_DIR": str(logs)}
    started = time.monotonic()
    done = subprocess.run(["bash", "tests/install_browser.sh", "--background", sys.executable],
                          cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "in the background" in done.stdout, done.stdout + done.stderr
    assert time.monotonic() - started < 1 + 0.9, "the install must not hold make test"
    failed = wait_for_background_install(logs / "browser-install.log", logs / "browser-install.exit", timeout_s=60)
    if apt_get_exit == 0:
        assert failed is None and chromium.exists()
    else:
        assert failed and "(exit 1)" in failed and "Unable to locate package chromium" in failed, failed
    assert wait_for_background_install(tmp_path / "none.log", tmp_path / "none.exit") is None, "no install: no wait"


def _require_browser() -> None:
    """Fail when the browser is missing but installable (CI must not skip silently); skip otherwise."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail(f"Playwright for Python is missing: it is in pyproject's `test` extra; run `{INSTALL_CMD}`")
    if not CHROMIUM.exists() and (failed := wait_for_background_install()):
        pytest.fail(failed)
    if not CHROMIUM.exists():
        if _can_install_chromium():
            pytest.fail(f"{CHROMIUM} is missing; run `{INSTALL_CMD}` (apt-get install -y chromium)")
        pytest.skip(f"{CHROMIUM} is missing and cannot be installed here (needs root and apt-get): "
                    f"run `sudo apt-get install -y chromium` or `sudo {INSTALL_CMD}`")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LabServer:
    url: str
    token: str
    proc: subprocess.Popen[bytes]
    log: Path
    notebook: Path  # the copy it serves

    def api(self, method: str, path: str, timeout: float = 10) -> requests.Response:
        return requests.request(method, f"{self.url}{path}", headers={"Authorization": f"token {self.token}"},
                                timeout=timeout)

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def _stop_tree(proc: subprocess.Popen[bytes], extra: list[psutil.Process]) -> list[str]:
    """Stop the server, then anything it started that outlived it; returns what had to be killed."""
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
    alive = []
    for p in extra:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
                p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(extra, timeout=15)
    return alive


@pytest.fixture
def lab_server(tmp_path: Path) -> Iterator[LabServer]:
    """`make lab`'s server (`jupyter lab --ip 127.0.0.1 --ServerApp.root_dir=...`) on a copy of Lab 2."""
    _require_browser()
    root = tmp_path / "notebooks"
    root.mkdir()
    shutil.copy(NOTEBOOKS_DIR / NOTEBOOK, root / NOTEBOOK)
    port, token = _free_port(), os.urandom(16).hex()
    log = tmp_path / "jupyter-lab.log"
    # A fresh JupyterLab user: no news prompt, no update check (the network is closed anyway).
    settings = tmp_path / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    cmd = [str(Path(sys.executable).with_name("jupyter")), "lab", "--ip", "127.0.0.1",
           f"--ServerApp.root_dir={root}",  # the flags of `make lab`; what follows is the test's own
           f"--port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", "--no-browser",
           f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
           f"--LabApp.user_settings_dir={tmp_path / 'user-settings'}"]
    if os.geteuid() == 0:  # CI runs as root; jupyter refuses to without this
        cmd.append("--allow-root")
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    server = LabServer(f"http://127.0.0.1:{port}", token, proc, log, root / NOTEBOOK)
    started: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"jupyter lab exited ({proc.returncode}):\n{server.log_tail()}"
            try:
                if server.api("GET", "/api/status", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, f"jupyter lab not up in {SERVER_START_TIMEOUT_S} s:\n{server.log_tail()}"
            time.sleep(0.5)
        yield server
    finally:
        if proc.poll() is None:
            started = psutil.Process(proc.pid).children(recursive=True)  # the kernel and whatever it started
            try:
                for kernel in server.api("GET", "/api/kernels").json():
                    server.api("DELETE", f"/api/kernels/{kernel['id']}", timeout=60)
                server.api("POST", "/api/shutdown")
            except requests.RequestException:
                pass
        killed = _stop_tree(proc, started)
        assert not killed, f"processes outlived the JupyterLab server and had to be killed: {killed}"


# Where errors show: cell outputs (widget views included), dialogs (a dead kernel), the status bar.
ERROR_PLACES = ".jp-OutputArea-output, .jp-Dialog, #jp-main-statusbar"


def _page_errors(page: object) -> list[str]:
    texts = page.locator(ERROR_PLACES).all_inner_texts()  # type: ignore[attr-defined]
    return [line for text in texts for line in text.splitlines() if PAGE_ERRORS.search(line)]


def test_lab2_stepper_redraws_the_block_table_in_jupyterlab(lab_server: LabServer, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        try:
            _drive_lab2(page, lab_server)
        except BaseException:
            try:
                page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
                (tmp_path / "failure-page.txt").write_text(page.locator("body").inner_text())
            except Exception as exc:  # the page may be gone; the original failure matters more
                print(f"no failure screenshot: {exc}")
            print(f"screenshot and page text: {tmp_path}\njupyter lab log:\n{lab_server.log_tail()}")
            raise
        finally:
            context.close()


def _drive_lab2(page: object, server: LabServer) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    page.goto(f"{server.url}/lab/tree/{NOTEBOOK}?token={server.token}")
    notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
    cells = notebook.locator(".jp-Notebook .jp-Cell")
    # The whole notebook is loaded and its kernel is up: JupyterLab does not queue runs for a kernel
    # that is still starting.
    sources = [cell.source for cell in nbformat.read(server.notebook, as_version=4).cells]
    expect(cells).to_have_count(len(sources), timeout=KERNEL_TIMEOUT_MS)
    expect(page.locator("#jp-main-statusbar")).to_contain_text(
        re.compile(r"Python 3.*\|\s*Idle"), timeout=KERNEL_TIMEOUT_MS)

    # The cells up to and including the one that displays the stepper, as a learner runs them.
    stepper_cell = next(i for i, src in enumerate(sources) if re.search(r"^stepper\s*$", src, re.MULTILINE))
    cells.first.click()
    page.keyboard.press("Escape")  # command mode
    for i in range(stepper_cell + 1):
        expect(cells.nth(i)).to_have_class(re.compile(r"\bjp-mod-active\b"))
        page.keyboard.press("Shift+Enter")
    expect(cells.nth(stepper_cell + 1)).to_have_class(re.compile(r"\bjp-mod-active\b"))

    # The stepper cell finishes once the engine has started in the kernel (or an error shows first).
    page.wait_for_function(
        """([index, errors, places]) => {
             const shown = [...document.querySelectorAll(places)].map(e => e.innerText).join('\\n');
             if (new RegExp(errors, 'i').test(shown)) return true;
             const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
             if (!panel) return false;
             const cell = panel.querySelectorAll('.jp-Notebook .jp-Cell')[index];
             const prompt = cell && cell.querySelector('.jp-InputArea-prompt');
             return !!prompt && /\\[\\d+\\]/.test(prompt.innerText);
           }""",
        arg=[stepper_cell, PAGE_ERRORS.pattern, ERROR_PLACES], timeout=ENGINE_TIMEOUT_MS, polling=1000)
    assert not _page_errors(page), f"the page shows errors: {_page_errors(page)}"
    stepper = cells.nth(stepper_cell)
    step_button = stepper.get_by_role("button", name=STEP_BUTTON)
    expect(step_button, "the stepper cell ran but shows no widget: is the jupyterlab_widgets extension "
           "installed and enabled (`jupyter labextension list`)?").to_be_visible(timeout=WIDGET_TIMEOUT_MS)
    expect(stepper.get_by_role("button", name="step x10")).to_be_visible()
    output = stepper.locator(".widget-output")
    expect(output).to_have_count(1)
    expect(output.locator("img")).to_have_count(1, timeout=STEP_TIMEOUT_MS)  # the block pool before any step
    before = output.inner_html()

    idle = re.compile(r"\|\s*Idle")
    step_button.click()
    expect(output).to_contain_text(re.compile(r"step\s+1\b"), timeout=STEP_TIMEOUT_MS)
    expect(output).to_contain_text("block table A", timeout=STEP_TIMEOUT_MS)
    expect(output).to_contain_text("block table B", timeout=STEP_TIMEOUT_MS)
    # the redraw ends with the block pool picture and an idle kernel
    expect(output.locator("img")).to_have_count(1, timeout=STEP_TIMEOUT_MS)
    expect(page.locator("#jp-main-statusbar")).to_contain_text(idle, timeout=STEP_TIMEOUT_MS)
    first = output.inner_html()
    assert first != before, "the block table output did not change after engine.step()"
    assert not _page_errors(page), f"the page shows errors: {_page_errors(page)}"

    step_button.click()  # a second click redraws again, one step on
    expect(output).to_contain_text(re.compile(r"step\s+2\b"), timeout=STEP_TIMEOUT_MS)
    expect(output.locator("img")).to_have_count(1, timeout=STEP_TIMEOUT_MS)
    expect(page.locator("#jp-main-statusbar")).to_contain_text(idle, timeout=STEP_TIMEOUT_MS)
    assert output.inner_html() != first
    assert not _page_errors(page), f"the page shows errors: {_page_errors(page)}"
    assert "Error displaying widget" not in notebook.inner_text()
