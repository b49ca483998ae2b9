"""JupyterLab + Debian's Chromium for the widget browser tests and benchmarks.

:class:`Lab` starts JupyterLab on 127.0.0.1, on a free port, with a random token and a
private root, config, data and runtime directory, and stops it (with its kernels)
afterwards. :meth:`Lab.kernel` connects a client to the kernel of an open notebook, so
a test can read the Python-side state of the widgets it drives in the browser.
:func:`browser` launches the system Chromium through Playwright (no browser download).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import nbformat

CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium_available() -> bool:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return False
    return os.access(CHROMIUM, os.X_OK)


def lab_available() -> bool:
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        return False
    return True


def write_notebook(path: Path, cells: list[str]) -> Path:
    """A notebook of code cells with the python3 kernel."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)
    return path


class Lab:
    """A private JupyterLab server (see module docstring); use as a context manager."""

    def __init__(self, root: Path, *, env: dict | None = None, timeout_s: float = 90.0):
        self.root = Path(root)
        self.notebooks = self.root / "notebooks"
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self._timeout_s = timeout_s
        self._extra_env = env or {}
        self.proc = None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> Lab:
        config = self.root / "config"
        for d in (self.notebooks, config / "labconfig", self.root / "data",
                  self.root / "runtime", self.root / "ipython"):
            d.mkdir(parents=True, exist_ok=True)
        # No news pop-up; every notebook cell rendered (no virtual scrolling).
        (config / "labconfig" / "page_config.json").write_text(json.dumps(
            {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
        settings = config / "lab" / "user-settings" / "@jupyterlab"
        (settings / "notebook-extension").mkdir(parents=True, exist_ok=True)
        (settings / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
            json.dumps({"windowingMode": "none", "autoStartDefaultKernel": True}))
        env = dict(os.environ)
        env.update({
            "JUPYTER_CONFIG_DIR": str(config),
            "JUPYTER_DATA_DIR": str(self.root / "data"),
            "JUPYTER_RUNTIME_DIR": str(self.root / "runtime"),
            "JUPYTERLAB_SETTINGS_DIR": str(config / "lab" / "user-settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(self.root / "workspaces"),
            "IPYTHONDIR": str(self.root / "ipython"),
            "MPLBACKEND": "Agg",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self._extra_env)
        self.log = open(self.root / "jupyterlab.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser",
             "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
             "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
             f"--ServerApp.root_dir={self.notebooks}",
             "--ServerApp.allow_root=True", "--ServerApp.terminals_enabled=False",
             "--LabApp.news_url=", "--ServerApp.open_browser=False"],
            cwd=self.notebooks, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + self._timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with code {self.proc.returncode}: "
                                   f"{self.log_text()[-2000:]}")
            try:
                self.api("status")
                return self
            except OSError:
                time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"JupyterLab did not answer on {self.url} within "
                           f"{self._timeout_s:.0f} s: {self.log_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()
        self.proc = None

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_text(self) -> str:
        try:
            return (self.root / "jupyterlab.log").read_text(errors="replace")
        except OSError:
            return ""

    # ------------------------------------------------------------------ API
    def api(self, path: str, method: str = "GET"):
        req = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read() or b"null")

    def notebook_url(self, name: str) -> str:
        return f"{self.url}/lab/tree/{name}?token={self.token}"

    def kernel(self, name: str, timeout_s: float = 60.0):
        """A started ``BlockingKernelClient`` of the kernel of notebook ``name``."""
        from jupyter_client import BlockingKernelClient

        deadline = time.monotonic() + timeout_s
        while True:
            sessions = [s for s in self.api("sessions") if s["path"].endswith(name)]
            if sessions:
                kid = sessions[0]["kernel"]["id"]
                cf = self.root / "runtime" / f"kernel-{kid}.json"
                if cf.is_file():
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"no kernel for {name}")
            time.sleep(0.25)
        client = BlockingKernelClient()
        client.load_connection_file(str(cf))
        client.start_channels()
        client.wait_for_ready(timeout=timeout_s)
        return client


def evaluate(client, expression: str, *, setup: str = "", timeout_s: float = 60.0):
    """Run ``setup`` then ``print(json.dumps(expression))`` in a kernel; return the value."""
    code = f"{setup}\nimport json as _json\nprint(_json.dumps({expression}))"
    out: list[str] = []
    errors: list[str] = []

    def hook(msg):
        kind = msg["header"]["msg_type"]
        if kind == "stream" and msg["content"]["name"] == "stdout":
            out.append(msg["content"]["text"])
        elif kind == "error":
            errors.append("\n".join(msg["content"]["traceback"]))

    client.execute_interactive(code, store_history=False, output_hook=hook, timeout=timeout_s)
    if errors:
        raise RuntimeError(f"kernel error running {expression!r}:\n{errors[0]}")
    return json.loads("".join(out).strip().splitlines()[-1])


@contextmanager
def browser(viewport=(1500, 1100)):
    """A Playwright page in the system Chromium (headless, no sandbox: CI runs as root)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-gpu",
                                    "--disable-dev-shm-usage"])
        try:
            page = b.new_page(viewport={"width": viewport[0], "height": viewport[1]},
                              device_scale_factor=1)
            yield page
        finally:
            b.close()


def open_and_run(page, lab: Lab, name: str, *, timeout_s: float = 120.0) -> None:
    """Open notebook ``name`` in JupyterLab and run all its cells from the menu."""
    page.goto(lab.notebook_url(name), timeout=timeout_s * 1000)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=timeout_s * 1000)
    dialog = page.locator(".jp-Dialog button.jp-mod-accept")
    if dialog.count():
        dialog.first.click()
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']",
                           timeout=timeout_s * 1000)
    prompt = page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt").first
    for _ in range(5):
        page.locator(".jp-Notebook .jp-Cell").first.click()
        page.click(".lm-MenuBar-itemLabel:text-is('Run')")
        page.click(".lm-Menu-item:not(.lm-mod-disabled) .lm-Menu-itemLabel"
                   ":text-is('Run All Cells')")
        try:  # the first cell's prompt turns from "[ ]:" to "[*]:" or "[1]:"
            page.wait_for_function("e => /\\[[*0-9]+\\]/.test(e.textContent)",
                                   arg=prompt.element_handle(), timeout=5000)
            return
        except Exception:  # noqa: BLE001 - the notebook was not ready: try again
            page.keyboard.press("Escape")
    raise TimeoutError(f"could not run the cells of {name}")
