"""The HTML report rendered by a real browser: headless Chromium driven over the DevTools protocol.

Skips with a message where no Chromium is installed (``.ci/run`` installs Debian's ``chromium``).
"""

import itertools
import json
import shutil
import subprocess
import time
from urllib.request import urlopen

import pytest

from medtransfer.report import report_folder

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM = next(filter(None, map(shutil.which, BROWSERS)), None)

PAGE_STATE = """JSON.stringify({
  ready: document.readyState,
  summaryRows: Array.from(document.querySelectorAll("table.summary tbody tr")).length,
  sections: Array.from(document.querySelectorAll("section")).map(s => s.id),
  images: Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth})),
})"""


class DevTools:
    """Minimal DevTools-protocol client for one page: commands by id, events collected as they arrive."""

    def __init__(self, url: str, websocket):
        self.socket = websocket.create_connection(url, timeout=60, suppress_origin=True)
        self.ids = itertools.count(1)
        self.events = []

    def call(self, method: str, **params) -> dict:
        request = next(self.ids)
        self.socket.send(json.dumps({"id": request, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == request:
                assert "error" not in message, message
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str) -> None:
        while not any(e.get("method") == method for e in self.events):
            self.events.append(json.loads(self.socket.recv()))

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors (e.g. a resource that failed to load)."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(f"console: {params.get('args')}")
            elif method == "Runtime.exceptionThrown":
                found.append(f"exception: {params.get('exceptionDetails')}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                found.append(f"log: {params['entry'].get('text')}")
        return found


def _start_chromium(profile):
    process = subprocess.Popen(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = profile / "DevToolsActivePort"  # Chromium writes its chosen port here
    deadline = time.monotonic() + 90
    while not (port_file.exists() and port_file.read_text().strip()):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{CHROMIUM} did not start a DevTools endpoint (exit code {process.poll()})")
        time.sleep(0.2)
    return process, int(port_file.read_text().split()[0])


def test_report_renders_without_errors_with_table_and_every_figure(experiment, tmp_path):
    if CHROMIUM is None:
        pytest.skip(f"no Chromium found (looked for {', '.join(BROWSERS)}): install Debian's 'chromium' package "
                    "to run the report-rendering test (.ci/run does)")
    websocket = pytest.importorskip("websocket", reason="websocket-client (the 'test' extra) drives Chromium")
    folder, _ = experiment
    report = report_folder(folder, tmp_path / "report")
    expected_figures = report.read_text(encoding="utf-8").count("<img ")
    process, port = _start_chromium(tmp_path / "profile")
    try:
        targets = json.load(urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30))
        page = DevTools(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"], websocket)
        for domain in ("Runtime", "Log", "Page"):
            page.call(f"{domain}.enable")
        page.call("Page.navigate", url=report.as_uri())
        page.wait_for("Page.loadEventFired")
        state = json.loads(page.call("Runtime.evaluate", expression=PAGE_STATE, returnByValue=True)["result"]["value"])
        errors = page.errors()
        page.socket.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert errors == []
    assert state["ready"] == "complete"
    assert state["sections"] == ["overview", "summary", "figures", "comparisons", "missing", "warnings", "environment",
                                 "runs"]
    assert state["summaryRows"] == 2 * 8  # two metrics x (2 inits x 4 strategies)
    assert expected_figures == 4 and len(state["images"]) == 4
    assert all(i["complete"] and i["width"] > 0 for i in state["images"]), state["images"]
