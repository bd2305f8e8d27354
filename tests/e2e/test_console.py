"""The browser console at `/` (WO-CONSOLE-1..7), end to end in headless Chromium.

The page is driven by Playwright for Python against the system's Chromium
(`executable_path`); Playwright never downloads a browser here. The browser
tests skip, saying why, only when Playwright or Chromium is missing; with
WORKER_ORCD_REQUIRE_BROWSER=1 a missing one fails instead. With
WORKER_ORCD_CONSOLE_SCREENSHOT=<file.png> the stream-and-cancel test saves a
screenshot of the console after its cancel, tokens and job list in view.
"""

from __future__ import annotations

import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from testkit.prompts import LONG_PROMPT, SHORT_ANSWER, SHORT_PROMPT
from testkit.streams import CORRELATION_HEADER, StreamThread, assert_error, cancel, uid, wait_active
from tests.e2e.helpers import TOKENS

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # the browser tests say so and skip
    sync_playwright = None

CONSOLE_DIR = Path(__file__).resolve().parents[2] / "worker_orcd" / "http" / "console"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
ASSETS = {
    "/": "text/html",
    "/console/console.js": "text/javascript",
    "/console/console.css": "text/css",
}
TOKEN = TOKENS["alice"]
# Chromium as root in a container, on a closed network: no sandbox, no GPU, no
# calls home (refused connections would only slow it down).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
UI_TIMEOUT_MS = 30_000  # generous: the machine may be busy with other tests


def chromium_path() -> str | None:
    return os.environ.get("WORKER_ORCD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _missing_browser() -> str | None:
    if sync_playwright is None:
        return "Playwright for Python is not installed (pip install -e '.[test]')"
    if chromium_path() is None:
        return "no Chromium found (apt-get install chromium, or set WORKER_ORCD_CHROMIUM)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator["Browser"]:
    missing = _missing_browser()
    if missing:
        if os.environ.get("WORKER_ORCD_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the console's browser tests cannot run: {missing}")
        pytest.skip(missing)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


class ConsolePage:
    """A tab on the console, recording what would show a broken page: script errors and
    Content-Security-Policy violations (both reported on the browser's console)."""

    def __init__(self, page: "Page", url: str) -> None:
        self.page = page
        self.url = url
        self.problems: list[str] = []
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on(
            "console",
            lambda msg: self.problems.append(f"console: {msg.text}")
            if msg.type == "error" and "Content Security Policy" in msg.text
            else None,
        )
        page.set_default_timeout(UI_TIMEOUT_MS)
        expect.set_options(timeout=UI_TIMEOUT_MS)

    def open(self) -> "ConsolePage":
        self.page.goto(self.url + "/")
        expect(self.page.locator("#worker-info")).to_contain_text("ready")
        return self

    def set_params(self, prompt: str, *, chat: bool = True, **params: object) -> None:
        self.page.fill("#prompt", prompt)
        self.page.set_checked("#chat", chat)
        for name, value in params.items():
            self.page.fill(f"#{name}", str(value))

    def stream(self) -> str:
        """Press Stream; the job id the page made."""
        self.page.get_by_role("button", name="Stream").click()
        job_id = self.page.locator("#job-id")
        expect(job_id).to_have_text(re.compile(r"^console-"))
        return job_id.inner_text()

    def state(self):
        return self.page.locator("#state")

    def wait_tokens(self, n: int) -> None:
        self.page.wait_for_function(
            "n => Number(document.getElementById('tokens').textContent) >= n", arg=n
        )

    def job_row(self, job_id: str):
        return self.page.locator(f'#jobs-body tr[data-job-id="{job_id}"]')

    def assert_clean(self) -> None:
        assert self.problems == []


@pytest.fixture
def tab(browser, worker, worker_idle) -> Iterator[ConsolePage]:
    """A tab on the shared worker's console; the worker is idle, so the page's jobs are the
    newest in its job list and run at once unless a test holds the engine."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield ConsolePage(context.new_page(), worker.url)
    context.close()


def _assert_console_headers(response: httpx.Response) -> None:
    assert response.headers["content-security-policy"] == CSP
    assert response.headers["x-content-type-options"] == "nosniff"


# --- the files and their headers (no browser needed) ---------------------------


@pytest.mark.parametrize("path", list(ASSETS))
def test_console_files_are_served_with_a_strict_policy(worker, path):
    """WO-CONSOLE-1, WO-CONSOLE-2: the page and its assets, each with the CSP and nosniff."""
    r = httpx.get(worker.url + path)
    assert r.status_code == 200
    assert r.headers["content-type"].split(";")[0] == ASSETS[path]
    assert CORRELATION_HEADER in r.headers
    _assert_console_headers(r)


def test_unknown_assets_and_other_methods_are_json_errors(worker):
    """WO-CONSOLE-1: only the page and its listed assets; every other answer is a JSON error."""
    with worker.client() as c:
        missing = c.get("/console/index.html")
        assert_error(missing, 404, "NOT_FOUND")
        _assert_console_headers(missing)
        for path in ("/console/", "/console/../pyproject.toml", "/console/a/console.js", "/index.html"):
            assert_error(c.get(path), 404, "NOT_FOUND")
        assert_error(c.post("/", content=b"{}"), 405, "METHOD_NOT_ALLOWED")
        assert c.head("/").status_code == 200


def test_the_page_needs_no_token_but_the_api_does(keyed_worker):
    """WO-CONSOLE-1, WO-CONSOLE-6: on a worker with keys the page loads without one."""
    with keyed_worker.client() as c:
        for path in ASSETS:
            r = c.get(path)
            assert r.status_code == 200, r.text
            _assert_console_headers(r)
        assert_error(c.get("/jobs"), 401, "UNAUTHORIZED")
        assert_error(c.get("/console/nope"), 404, "NOT_FOUND")  # answered like a missing file, no token asked
        assert c.get("/jobs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_the_page_has_no_inline_script_or_style():
    """WO-CONSOLE-2: everything the page runs or styles with comes from its own files."""

    class Inline(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.found: list[str] = []

        def handle_starttag(self, tag, attrs):
            names = {name for name, _ in attrs}
            if tag == "script" and "src" not in names:
                self.found.append("<script> without src")
            if tag == "style":
                self.found.append("<style>")
            self.found += [f"{tag} {name}=" for name in names if name == "style" or name.startswith("on")]
            if tag == "link" and dict(attrs).get("rel") == "stylesheet" and dict(attrs)["href"].startswith("http"):
                self.found.append("stylesheet of another origin")

    parser = Inline()
    parser.feed((CONSOLE_DIR / "index.html").read_text())
    assert parser.found == []
    script = (CONSOLE_DIR / "console.js").read_text()
    assert "innerHTML" not in script and "eval(" not in script  # the worker's text is only ever text


def test_the_files_are_package_data():
    """WO-CONSOLE-1: shipped in the wheel, beside the module that serves them."""
    import tomllib

    data = tomllib.loads((CONSOLE_DIR.parents[2] / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["worker_orcd.http"]
    for name in ("index.html", "console.js", "console.css"):
        assert any(Path("console", name).match(p) for p in patterns), name


# --- in the browser --------------------------------------------------------------


def test_stream_and_cancel_in_the_browser(tab, worker):
    """WO-CONSOLE-3..5, WO-CONSOLE-7: a job completes; another streams, is cancelled with
    the Cancel button, shows its latencies, and both appear in the job list."""
    page = tab.open().page
    expect(page.locator("#auth")).to_be_hidden()  # no keys: no token field
    executes = []
    page.on("request", lambda r: executes.append(r) if r.url.endswith("/execute") else None)

    tab.set_params(SHORT_PROMPT, chat=False, max_tokens=32, temperature=0, seed=7)
    done_id = tab.stream()
    expect(tab.state()).to_have_text("completed")
    expect(page.locator("#ended")).to_have_text("eos")
    expect(page.locator("#output")).to_have_text(SHORT_ANSWER)
    expect(tab.job_row(done_id).locator(".state")).to_have_text("completed")

    tab.set_params(
        "Write a long, detailed story about a dragon who learns to bake bread.",
        max_tokens=2048,
        temperature=0,
        seed=7,
    )
    job_id = tab.stream()
    expect(tab.state()).to_have_text("running")
    tab.wait_tokens(40)
    assert page.locator("#output").inner_text().strip()
    page.get_by_role("button", name="Cancel").click()

    expect(tab.state()).to_have_text("cancelled")
    expect(page.locator("#ended")).to_have_text("CANCELLED")
    expect(page.locator("#stop-ms")).to_have_text(re.compile(r"^\d+(\.\d)? ms$"))
    expect(page.locator("#cancel-ms")).to_have_text(re.compile(r"^\d+(\.\d)? ms$"))
    expect(page.locator("#note")).to_have_text("cancelled by client")
    expect(page.get_by_role("button", name="Stream")).to_be_enabled()
    expect(page.get_by_role("button", name="Cancel")).to_be_disabled()

    row = tab.job_row(job_id)
    expect(row.locator(".state")).to_have_text("cancelled")
    expect(row).to_contain_text("CANCELLED")
    expect(row.locator("td.num").nth(1)).to_have_text(re.compile(r" ms$"))  # stop_ms
    expect(row.locator("td.num").nth(2)).to_have_text(re.compile(r" ms$"))  # cancel_ms

    # The page's Cancel was a POST /cancel (a dropped stream would say "disconnect"),
    # and it showed every token the worker recorded, and nothing else.
    with worker.client() as c:
        record = c.get(f"/jobs/{job_id}").json()
    assert record["state"] == "cancelled" and record["cancel_reason"] == "client"
    assert page.locator("#output").text_content() == record["text"]
    assert page.locator("#tokens").inner_text() == str(record["tokens_out"])
    shown_stop_ms = float(page.locator("#stop-ms").inner_text().removesuffix(" ms"))
    assert abs(shown_stop_ms - record["stop_ms"]) <= 0.051  # shown to a tenth of a ms
    # Same-origin calls carry the worker's own origin and pass its Origin check.
    assert [r.all_headers().get("origin") for r in executes] == [worker.url] * 2

    shot = os.environ.get("WORKER_ORCD_CONSOLE_SCREENSHOT")
    if shot:
        page.set_viewport_size({"width": 1280, "height": 640})  # the page's own height, no blank below
        page.screenshot(path=shot, full_page=True)
    tab.assert_clean()


def test_cancel_works_before_the_job_starts(tab, worker):
    """WO-CONSOLE-4: the page made the id, so a job still waiting in the queue is cancelled too."""
    page = tab.open().page
    blocker = StreamThread(worker, {"job_id": uid("blocker"), "prompt": LONG_PROMPT, "max_tokens": 64})
    blocker.start()
    try:
        with worker.client() as c:
            wait_active(c, blocker.job_id)
            tab.set_params("Hello", max_tokens=16)
            job_id = tab.stream()
            expect(tab.state()).to_have_text("queued")
            page.get_by_role("button", name="Cancel").click()
            expect(tab.state()).to_have_text("cancelled")
            expect(page.locator("#tokens")).to_have_text("0")
            expect(tab.job_row(job_id).locator(".state")).to_have_text("cancelled")
            assert c.get(f"/jobs/{job_id}").json()["started_at"] is None  # it never ran
    finally:
        with worker.client() as c:
            cancel(c, blocker.job_id)
        blocker.join()
    tab.assert_clean()


def test_token_field_on_a_worker_with_keys(browser, keyed_worker):
    """WO-CONSOLE-6: the page asks for a token, shows a refusal, streams with the right
    token and keeps it for this tab only."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        tab = ConsolePage(context.new_page(), keyed_worker.url)
        page = tab.page
        page.goto(tab.url + "/")
        expect(page.locator("#auth")).to_be_visible()
        expect(page.locator("#jobs-error")).to_contain_text("UNAUTHORIZED")

        page.fill("#token", "wrong-token")
        tab.set_params("Hello", max_tokens=4)
        tab.stream()
        expect(tab.state()).to_have_text("rejected")
        expect(page.locator("#error")).to_contain_text("UNAUTHORIZED: missing or unknown bearer token")

        page.fill("#token", TOKEN)
        job_id = tab.stream()
        expect(tab.state()).to_have_text("completed")
        expect(tab.job_row(job_id).locator(".state")).to_have_text("completed")
        expect(page.locator("#jobs-error")).to_be_hidden()
        with keyed_worker.client(headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            assert c.get(f"/jobs/{job_id}").json()["state"] == "completed"  # alice's job

        page.reload()  # kept for the tab ...
        expect(page.locator("#token")).to_have_value(TOKEN)
        expect(tab.job_row(job_id)).to_be_visible()
        other = context.new_page()  # ... and for no other
        other.goto(tab.url + "/")
        expect(other.locator("#auth")).to_be_visible()
        expect(other.locator("#token")).to_have_value("")

        page.get_by_role("button", name="Forget").click()
        expect(page.locator("#token")).to_have_value("")
        assert page.evaluate("sessionStorage.length") == 0
        tab.assert_clean()
    finally:
        context.close()
