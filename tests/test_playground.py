"""The browser playground at ``/``: served offline, and driven in a real headless Chromium
against a live ``tah serve`` on loopback (skipped, with the reason, when no Chromium or no
``websocket-client`` is installed; ``.ci/run`` tries to install Debian's ``chromium``).

The screenshot is written to ``$TAH_ARTIFACT_DIR/playground.png`` when that variable is set,
else into the test's temporary folder.
"""

from __future__ import annotations

import importlib.util
import os
import re
import threading
import time
from importlib.resources import files
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient

from tah.engine.engine import Engine
from tah.engine.server import create_app

BUNDLED = str(files("tah") / "assets" / "tiny-tah")


@pytest.fixture(scope="module")
def engine():
    return Engine.from_pretrained(BUNDLED, max_batch=2, model_name="tiny-tah")


def test_page_is_served_and_self_contained(engine):
    with TestClient(create_app(engine)) as client:
        r = client.get("/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert client.get("/playground").text == r.text
    page = r.text
    assert "<script>" in page and "/v1/chat/completions" in page
    # offline: nothing is fetched from elsewhere (no CDN, no external scripts or styles)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page


class LiveServer:
    def __init__(self, engine: Engine) -> None:
        self.app = create_app(engine, shutdown_timeout=5)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)

    def __enter__(self) -> LiveServer:
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        sock = self.server.servers[0].sockets[0]
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def browser_or_skip():
    from cdp import Browser, BrowserError, find_browser

    executable = find_browser()
    if executable is None:
        pytest.skip("no chromium on PATH (apt-get install chromium, or set TAH_CHROMIUM)")
    if importlib.util.find_spec("websocket") is None:
        pytest.skip("websocket-client is not installed (pip install -e '.[dev]')")
    try:
        return Browser(executable)
    except BrowserError as exc:
        pytest.skip(f"chromium is installed but did not start here: {exc}")


def test_playground_streams_coloured_tokens_in_headless_chromium(engine, tmp_path):
    artefacts = Path(os.environ.get("TAH_ARTIFACT_DIR") or tmp_path)
    artefacts.mkdir(parents=True, exist_ok=True)
    with LiveServer(engine) as live, browser_or_skip() as browser:
        browser.navigate(live.url + "/")
        browser.wait_for("document.getElementById('model').textContent.includes('tiny-tah')")
        browser.evaluate(
            "document.getElementById('prompt').value = "
            "'Lily has 3 apples and buys 4 more. How many apples does she have?';"
            "document.getElementById('max_tokens').value = '48';"
            "document.getElementById('budget').value = '0.25'"
        )
        browser.click("#run")
        browser.wait_for("document.body.dataset.done === '1'", timeout=120)
        assert browser.evaluate("document.getElementById('error').textContent") == ""
        n_tokens = browser.evaluate("document.querySelectorAll('#output .tok').length")
        deep = browser.evaluate("document.querySelectorAll('#output .tok.d2').length")
        assert n_tokens >= 10 and deep >= 1, (n_tokens, deep)
        colour = browser.evaluate(
            "getComputedStyle(document.querySelector('#output .tok.d2')).backgroundColor"
        )
        assert colour not in ("", "rgba(0, 0, 0, 0)", "transparent")
        browser.hover("#output .tok.d2")
        info = browser.wait_for(
            "(t => t.includes('depth 2') && t)(document.getElementById('tokinfo').textContent)"
        )
        assert re.search(r"p\(think again\) [\d.e-]+ · τ [\d.e-]+", info), info
        stats = browser.evaluate("document.getElementById('stats').textContent")
        assert re.match(r"\d+ tokens · [\d.]+% iterating · avg depth [\d.]+ · [\d.]+ tok/s", stats)
        assert "budget 25.0%" in stats
        legend = browser.evaluate("document.getElementById('legend').textContent")
        assert "1" in legend and "2" in legend
        shot = artefacts / "playground.png"
        browser.screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        assert browser.errors == [], browser.errors
