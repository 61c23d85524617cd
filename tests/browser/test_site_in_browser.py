"""The built site works in a real browser: navigation, search, diagrams, no console errors.

Headless Chromium is driven over the Chrome DevTools Protocol with the ``websockets`` library
(no browser download, no extra dependency). The site is built with ``mkdocs build --strict``
and served from ``http.server`` on an ephemeral port. Screenshots of the home page and a
message schema page go to ``$UNISOCK_SCREENSHOTS`` (default: a temporary directory).

Without a Chromium binary the module is skipped, unless ``UNISOCK_REQUIRE_BROWSER=1`` turns
the skip into a failure (as CI does).
"""

from __future__ import annotations

import base64
import functools
import http.server
import itertools
import json
import os
import select
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("UNISOCK_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SCALE = float(os.environ.get("UNISOCK_TIME_SCALE", "1") or 1)
TIMEOUT = 20.0 * SCALE

if not Path(CHROMIUM).is_file():
    if os.environ.get("UNISOCK_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"UNISOCK_REQUIRE_BROWSER=1 but no Chromium at {CHROMIUM}")
    pytest.skip(f"no Chromium at {CHROMIUM}", allow_module_level=True)


class DevTools:
    """A minimal CDP session on one page target: commands, events, console errors."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        self.errors: list[str] = []

    def _record(self, message: dict[str, Any]) -> None:
        method = message.get("method")
        params = message.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = [str(a.get("value", a.get("description", ""))) for a in params.get("args", [])]
            self.errors.append("console: " + " ".join(args))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            description = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(f"exception: {description}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.errors.append(f"log: {entry.get('text')} {entry.get('url', '')}".strip())
        self.events.append(message)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self.ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + TIMEOUT
        while True:
            message: dict[str, Any] = json.loads(
                self.ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            )
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self._record(message)

    def wait_for(self, method: str) -> dict[str, Any]:
        for index, seen in enumerate(self.events):
            if seen.get("method") == method:
                del self.events[: index + 1]
                return seen
        deadline = time.monotonic() + TIMEOUT
        while True:
            message: dict[str, Any] = json.loads(
                self.ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            )
            self._record(message)
            if message.get("method") == method:
                self.events.clear()
                return message

    def evaluate(self, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def until(self, condition: str) -> bool:
        """Wait in the page (not here) until the JavaScript ``condition`` holds."""
        limit = int(TIMEOUT * 800)  # answer before the DevTools read times out
        return bool(
            self.evaluate(
                "new Promise(resolve => { const t0 = Date.now(); const tick = () => {"
                f" if ({condition}) resolve(true);"
                f" else if (Date.now() - t0 > {limit}) resolve(false);"
                " else setTimeout(tick, 25); }; tick(); })"
            )
        )

    def open(self, url: str) -> None:
        self.events.clear()
        self.send("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (ROOT / "docs" / "node_modules" / "mermaid" / "dist" / "mermaid.min.js").is_file():
        pytest.fail("mermaid is not vendored: run `npm ci --prefix docs` before this test")
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def base_url(site: Path) -> Iterator[str]:
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return


def _devtools_url(process: subprocess.Popen[bytes]) -> str:
    """Chromium prints ``DevTools listening on ws://...`` on stderr once it is ready."""
    assert process.stderr is not None
    deadline = time.monotonic() + TIMEOUT
    buffer = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stderr], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(process.stderr.fileno(), 4096)
        if not chunk:
            break
        buffer += chunk
        for line in buffer.decode(errors="replace").splitlines():
            if line.startswith("DevTools listening on "):
                return line.removeprefix("DevTools listening on ").strip()
    raise RuntimeError(f"Chromium did not start: {buffer.decode(errors='replace')[-2000:]}")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevTools]:
    profile = tmp_path_factory.mktemp("chromium-profile")
    process = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--remote-debugging-port=0",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--window-size=1280,900",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        browser_url = _devtools_url(process)
        http_root = "http://" + browser_url.split("/")[2]
        with urllib.request.urlopen(http_root + "/json/list", timeout=TIMEOUT) as response:
            targets = json.load(response)
        page = next(t for t in targets if t.get("type") == "page")
        with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            tools = DevTools(ws)
            for domain in ("Page", "Runtime", "Log"):
                tools.send(f"{domain}.enable")
            tools.send(
                "Emulation.setDeviceMetricsOverride",
                width=1280,
                height=900,
                deviceScaleFactor=1,
                mobile=False,
            )
            yield tools
    finally:
        process.terminate()
        try:
            process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def screens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("UNISOCK_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screens")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


DIAGRAMS_DRAWN = (
    # The theme replaces each <pre class="mermaid"> source with a <div class="mermaid"> that
    # holds the drawing in a closed shadow root, so "drawn" is: no source left, and every
    # diagram has a height.
    "document.querySelector('pre.mermaid') === null && "
    "Array.from(document.querySelectorAll('div.mermaid'))"
    ".every(el => el.getBoundingClientRect().height > 50)"
)


def nav_links(browser: DevTools, base_url: str) -> list[str]:
    links = browser.evaluate(
        "Array.from(document.querySelectorAll('nav.md-nav--primary a.md-nav__link[href]'))"
        ".map(a => a.href.split('#')[0])"
    )
    return sorted({link for link in links if link.startswith(base_url)})


def test_home_page_renders_its_diagram_and_is_captured(
    browser: DevTools, base_url: str, screens: Path
) -> None:
    browser.open(base_url)
    title = browser.evaluate("document.querySelector('h1').textContent.replace('¶', '').trim()")
    assert title == "Unisock"
    assert browser.evaluate("document.querySelectorAll('.mermaid').length") == 1
    assert browser.until(DIAGRAMS_DRAWN), "diagram not drawn"
    browser.screenshot(screens / "home.png")
    assert (screens / "home.png").stat().st_size > 10_000
    assert browser.errors == []


def test_every_page_in_the_navigation_loads_without_console_errors(
    browser: DevTools, base_url: str
) -> None:
    browser.open(base_url)
    pages = nav_links(browser, base_url)
    assert len(pages) >= 40, pages
    problems = []
    for url in pages:
        browser.errors.clear()
        browser.open(url)
        title = browser.evaluate("document.title")
        if "404" in title:
            problems.append(f"{url}: not found")
        has_diagram = browser.evaluate("document.querySelector('.mermaid') !== null")
        if has_diagram and not browser.until(DIAGRAMS_DRAWN):
            problems.append(f"{url}: a diagram was not drawn")
        problems.extend(f"{url}: {error}" for error in browser.errors)
    assert problems == []


def test_search_finds_backoff(browser: DevTools, base_url: str) -> None:
    browser.open(base_url)
    browser.errors.clear()
    browser.evaluate("document.querySelector('label[for=\"__search\"]').click()")
    browser.evaluate("document.querySelector('input.md-search__input').focus()")
    browser.send("Input.insertText", text="backoff")
    assert browser.until("document.querySelectorAll('.md-search-result__item').length > 0")
    hrefs = browser.evaluate(
        "Array.from(document.querySelectorAll('.md-search-result__item a')).map(a => a.href)"
    )
    assert any("topics/reconnection/" in href for href in hrefs), hrefs
    assert browser.errors == []


def test_schema_page_shows_fields_and_examples_and_is_captured(
    browser: DevTools, base_url: str, screens: Path
) -> None:
    browser.open(base_url + "reference/schemas/subscribe/")
    headings = browser.evaluate(
        "Array.from(document.querySelectorAll('h2'))"
        ".map(h => h.textContent.replace('¶', '').trim())"
    )
    assert {"Fields", "Valid examples", "Invalid examples"} <= set(headings)
    fields = browser.evaluate(
        "Array.from(document.querySelectorAll('table code')).map(c => c.textContent)"
    )
    assert {"type", "id", "channel", "filter"} <= set(fields)
    browser.screenshot(screens / "schema-subscribe.png")
    assert (screens / "schema-subscribe.png").stat().st_size > 10_000
    assert browser.errors == []
