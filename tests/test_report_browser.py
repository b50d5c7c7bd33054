"""The HTML report in headless Chromium: no console or page errors, no network request, the plots render,
the legend and the status filters respond, and a screenshot is taken.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON messages
ended by NUL on file descriptors 3 and 4), so the test needs no browser-automation package and works
with whatever Chromium version Debian ships. Without ``chromium`` the test skips, unless
``RECALLKIT_REQUIRE_BROWSER=1`` (CI sets it) makes that a failure.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from recallkit.report import write_compare, write_report
from recallkit.sweep import Store
from tests.test_report import synthetic_sweep

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--remote-debugging-pipe"]
TIMEOUT = 60.0
"""Seconds for one protocol answer or page condition: generous, the CPU is shared with sweeps."""


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def browser(tmp_path):
    path = chromium_path()
    if path is None:
        if os.environ.get("RECALLKIT_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is not installed and RECALLKIT_REQUIRE_BROWSER=1 "
                        "(apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    chrome = Chromium(path, tmp_path / "profile")
    try:
        yield chrome
    finally:
        chrome.close()


class Chromium:
    """A headless Chromium with one page, driven over the DevTools protocol on a pipe."""

    def __init__(self, executable: str, profile: Path) -> None:
        to_chrome, self._write = os.pipe()
        self._read, from_chrome = os.pipe()
        # Chromium reads commands on fd 3 and writes answers on fd 4. posix_spawn moves the pipe ends
        # there; copies numbered 10 and up cannot be overwritten by the first move before the second.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_chrome, from_chrome)]
        os.close(to_chrome)
        os.close(from_chrome)
        profile.mkdir(parents=True, exist_ok=True)
        self.log = profile / "chromium.log"
        self.pid = os.posix_spawn(
            executable, [executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"], os.environ,
            file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                          (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                          (os.POSIX_SPAWN_OPEN, 2, str(self.log), os.O_WRONLY | os.O_CREAT, 0o644),
                          (os.POSIX_SPAWN_DUP2, high[0], 3), (os.POSIX_SPAWN_DUP2, high[1], 4)],
        )
        for fd in high:
            os.close(fd)
        self._messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.events: list[dict[str, Any]] = []
        self._next_id = 0
        threading.Thread(target=self._reader, daemon=True).start()
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=1280, height=900,
                  deviceScaleFactor=1, mobile=False)

    def _reader(self) -> None:
        buffer = b""
        while chunk := os.read(self._read, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for message in messages:
                self._messages.put(json.loads(message))
        self._messages.put(None)  # the browser closed the pipe

    def call(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        """Send one command and wait for its answer; events that arrive meanwhile go to ``events``."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT
        while True:
            answer = self._messages.get(timeout=max(0.1, deadline - time.monotonic()))
            if answer is None:
                raise RuntimeError(f"chromium exited: {self.log.read_text(errors='replace')[-2000:]}")
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]
            self.events.append(answer)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = TIMEOUT) -> Any:
        """Poll ``expression`` in the page until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"page never satisfied: {expression}")
            time.sleep(0.1)
        return value

    def open(self, url: str) -> None:
        self.call("Page.navigate", session=True, url=url)
        self.wait_for("document.readyState === 'complete'")

    def click(self, selector: str) -> None:
        """A real mouse click (pressed and released) at the centre of the first match of ``selector``,
        scrolled into view first (the viewport is 900 px tall)."""
        box = self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                            "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect(); "
                            "return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", session=True, type=kind, x=box[0], y=box[1], button="left",
                      clickCount=1)

    def screenshot(self, path: Path) -> Path:
        """The whole page (up to 6000 px tall) as PNG."""
        size = self.call("Page.getLayoutMetrics", session=True)["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 6000), "scale": 1}
        data = self.call("Page.captureScreenshot", session=True, format="png", clip=clip,
                         captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors seen so far."""
        found = []
        for event in self.events:
            params = event.get("params", {})
            if event.get("method") == "Runtime.exceptionThrown":
                found.append(json.dumps(params["exceptionDetails"])[:500])
            elif event.get("method") == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                found.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif event.get("method") == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(params["entry"]["text"])
        return found

    def requests(self) -> list[str]:
        """URLs the page requested: a self-contained report requests only itself and its data: URLs."""
        return [e["params"]["request"]["url"] for e in self.events
                if e.get("method") == "Network.requestWillBeSent"]

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, queue.Empty, OSError):
            pass  # already gone; the kill below makes sure
        deadline = time.monotonic() + 10
        while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                break
            time.sleep(0.1)
        for fd in (self._write, self._read):
            os.close(fd)


def assert_clean(chrome: Chromium, page: Path) -> None:
    assert chrome.errors() == []
    loaded = {url for url in chrome.requests() if not url.startswith("data:")}  # the embedded PNGs
    assert loaded == {page.resolve().as_uri()}, "the report must load nothing else"


PLOT_TRACES = ("(id) => { const plot = document.getElementById(id); if (!plot) throw new Error('no #' + id); "
               "return plot.querySelector('.main-svg') ? "
               "plot.querySelectorAll('.scatterlayer .trace').length : 0; }")
"""Traces drawn in the plot ``id`` (0 while plotly has not drawn it; an error when it is not on the page)."""


def test_report_renders_in_chromium_without_errors(tmp_path, browser):
    sweep = tmp_path / "sweep"
    synthetic_sweep(sweep)
    _, page = write_report(sweep)
    browser.open(page.resolve().as_uri())
    traces = {plot: browser.wait_for(f"({PLOT_TRACES})('{plot}')")
              for plot in ("frontier-plot", "length-plot", "curves-plot")}
    assert traces == {"frontier-plot": 2, "length-plot": 4, "curves-plot": 8}  # 2 families; 4 runs x 2 curves
    assert browser.evaluate("document.querySelectorAll('#frontier-plot .scatterlayer .point').length") == 4
    shot = browser.screenshot(tmp_path / "report.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000

    # a legend click hides a family in the frontier (plotly waits out its double-click delay first)
    browser.click("#frontier-plot .legendtoggle")
    assert browser.wait_for("document.getElementById('frontier-plot').data[0].visible === 'legendonly'")
    # the status filter hides the failed run's row, and shows it again
    failed_shown = "!document.querySelector('#runs-table tr[data-status=failed]').hidden"
    assert browser.evaluate(failed_shown)
    browser.click(".filters input[value=failed]")
    assert browser.wait_for(f"!({failed_shown})")
    browser.click(".filters input[value=failed]")
    assert browser.wait_for(failed_shown)
    assert_clean(browser, page)


def test_empty_and_compare_reports_render_in_chromium(tmp_path, browser):
    empty = tmp_path / "empty"
    Store(empty / "results.sqlite").close()
    _, page = write_report(empty)
    browser.open(page.resolve().as_uri())
    assert "No finished runs yet" in browser.evaluate("document.body.innerText")
    assert browser.evaluate("document.querySelectorAll('.js-plotly-plot').length") == 0
    assert_clean(browser, page)

    first, second = tmp_path / "first", tmp_path / "second"
    synthetic_sweep(first)
    synthetic_sweep(second, failed=False)
    _, page = write_compare([first, second])
    browser.events.clear()
    browser.open(page.resolve().as_uri())
    assert browser.wait_for(f"({PLOT_TRACES})('frontier-plot')") == 4
    names = browser.evaluate("document.getElementById('frontier-plot').data.map(t => t.name)")
    assert sorted(names) == ["first: attention", "first: linear_attention(taylor)", "second: attention",
                             "second: linear_attention(taylor)"]
    browser.screenshot(tmp_path / "compare.png")
    assert_clean(browser, page)
