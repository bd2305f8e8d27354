"""The browser console at `/` (WO-CONSOLE-1..8), end to end in headless Chromium.

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
from testkit.streams import CORRELATION_HEADER, StreamThread, assert_error, cancel, uid, wait_active, wait_idle
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
STORY = "Write a long, detailed story about a dragon who learns to bake bread."


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
        """Press Stream; the job id the page made (its new card is the first)."""
        first = self.page.locator("#cards .card").first
        before = first.get_attribute("data-job-id") if first.count() else None
        self.page.get_by_role("button", name="Stream").click()
        handle = self.page.wait_for_function(
            """before => {
                const card = document.querySelector('#cards .card');
                const id = card && card.dataset.jobId;
                return id && id !== before ? id : null;
            }""",
            arg=before,
        )
        job_id = handle.json_value()
        expect(self.card(job_id).locator(".job-id")).to_have_text(re.compile(r"^console-"))
        return job_id

    def card(self, job_id: str):
        return self.page.locator(f'#cards .card[data-job-id="{job_id}"]')

    def state(self, job_id: str):
        return self.card(job_id).locator(".state")

    def tokens(self, job_id: str) -> int:
        return int(self.card(job_id).locator(".tokens").inner_text())

    def wait_tokens(self, job_id: str, n: int, timeout_ms: float = UI_TIMEOUT_MS) -> None:
        self.page.wait_for_function(
            """([id, n]) => {
                const card = document.querySelector(`#cards .card[data-job-id="${id}"]`);
                return card && Number(card.querySelector('.tokens').textContent) >= n;
            }""",
            arg=[job_id, n],
            timeout=timeout_ms,
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


@pytest.fixture
def parallel_worker(shared_worker) -> Iterator:
    """A shared worker with two slots, idle before and after the test."""
    w = shared_worker("--parallel", "2", "--max-queue", "8", "--threads", "1")
    with w.client() as c:
        wait_idle(c)
    yield w
    with w.client() as c:
        wait_idle(c)


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
    done = tab.card(done_id)
    expect(tab.state(done_id)).to_have_text("completed")
    expect(done.locator(".ended")).to_have_text("eos")
    expect(done.locator(".output")).to_have_text(SHORT_ANSWER)
    expect(tab.job_row(done_id).locator(".state")).to_have_text("completed")
    expect(done.get_by_role("button", name="Cancel")).to_be_disabled()

    tab.set_params(
        "Write a long, detailed story about a dragon who learns to bake bread.",
        max_tokens=2048,
        temperature=0,
        seed=7,
    )
    job_id = tab.stream()
    card = tab.card(job_id)
    expect(tab.state(job_id)).to_have_text("running")
    tab.wait_tokens(job_id, 40)
    assert card.locator(".output").inner_text().strip()
    card.get_by_role("button", name="Cancel").click()

    expect(tab.state(job_id)).to_have_text("cancelled")
    expect(card.locator(".ended")).to_have_text("CANCELLED")
    expect(card.locator(".stop-ms")).to_have_text(re.compile(r"^\d+(\.\d)? ms$"))
    expect(card.locator(".cancel-ms")).to_have_text(re.compile(r"^\d+(\.\d)? ms$"))
    expect(card.locator(".note")).to_have_text("cancelled by client")
    expect(page.get_by_role("button", name="Stream")).to_be_enabled()
    expect(card.get_by_role("button", name="Cancel")).to_be_disabled()
    expect(tab.state(done_id)).to_have_text("completed")  # the earlier card stays as it ended

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
    assert card.locator(".output").text_content() == record["text"]
    assert tab.tokens(job_id) == record["tokens_out"]
    shown_stop_ms = float(card.locator(".stop-ms").inner_text().removesuffix(" ms"))
    assert abs(shown_stop_ms - record["stop_ms"]) <= 0.051  # shown to a tenth of a ms
    # Same-origin calls carry the worker's own origin and pass its Origin check.
    assert [r.all_headers().get("origin") for r in executes] == [worker.url] * 2

    # A finished card goes when dismissed.
    done.get_by_role("button", name="Dismiss").click()
    expect(done).to_have_count(0)
    expect(card).to_be_visible()

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
            expect(tab.state(job_id)).to_have_text("queued")
            tab.card(job_id).get_by_role("button", name="Cancel").click()
            expect(tab.state(job_id)).to_have_text("cancelled")
            expect(tab.card(job_id).locator(".tokens")).to_have_text("0")
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
        refused = tab.stream()
        expect(tab.state(refused)).to_have_text("rejected")
        expect(tab.card(refused).locator(".error")).to_contain_text("UNAUTHORIZED: missing or unknown bearer token")

        page.fill("#token", TOKEN)
        job_id = tab.stream()
        expect(tab.state(job_id)).to_have_text("completed")
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


def test_two_streams_at_once_and_a_cancel_takes_one_out(browser, parallel_worker):
    """WO-CONSOLE-8: on a worker with two slots the page streams two jobs, each on its
    card; the Slots panel shows both in their slots; a cancel on one card ends that job
    only, and the other goes on streaming. The engine may run the two jobs' tokens one
    after the other, so the job cancelled is the one streaming, and the other must
    stream after the cancel."""
    worker = parallel_worker
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        tab = ConsolePage(context.new_page(), worker.url).open()
        page = tab.page
        healths = []
        page.on("request", lambda r: healths.append(r) if r.url.endswith("/health") else None)
        expect(page.locator("#slots-parallel")).to_have_text("2")
        expect(page.locator("#slots-busy")).to_have_text("0")

        tab.set_params(STORY, max_tokens=2048, temperature=0, seed=7)
        first = tab.stream()
        second = tab.stream()
        assert first != second
        expect(page.get_by_role("button", name="Stream")).to_be_enabled()  # a third could start too

        # Both in their slots, read live from /health.
        expect(page.locator("#slots-busy")).to_have_text("2")
        slot_rows = page.locator("#slots-body tr")
        for job_id in (first, second):
            expect(page.locator(f'#slots-body tr[data-job-id="{job_id}"] td.id')).to_have_text(job_id)
        expect(slot_rows).to_have_count(2)
        # Each card tells its job's slot: one each.
        for job_id in (first, second):
            expect(tab.card(job_id).locator(".slot")).to_have_text(re.compile(r"^[01]$"))
        assert {tab.card(j).locator(".slot").inner_text() for j in (first, second)} == {"0", "1"}
        with worker.client() as c:
            health = c.get("/health").json()
        kv = page.locator("#slots-kv")
        if isinstance(health.get("kv_cells"), int):
            expect(kv).to_have_text(re.compile(r"^\d+$"))
        else:
            expect(kv).to_have_text("—")
        # Each slot's row shows the cells its job holds (WO-SLOT-7), a count that grows as it runs.
        for job_id in (first, second):
            cells = page.locator(f'#slots-body tr[data-job-id="{job_id}"] td.cells')
            expect(cells).to_have_text(re.compile(r"^[1-9]\d*$"))
        seen = [int(page.locator(f'#slots-body tr[data-job-id="{j}"] td.cells').inner_text()) for j in (first, second)]
        page.wait_for_function(
            """([ids, seen]) => ids.some((id, i) => {
                const td = document.querySelector(`#slots-body tr[data-job-id="${id}"] td.cells`);
                return td !== null && Number(td.textContent) > seen[i];
            })""",
            arg=[[first, second], seen],
            timeout=2 * UI_TIMEOUT_MS,
        )

        # Whichever streams first (both may), cancel it from its card.
        streaming = page.wait_for_function(
            """([a, b]) => {
                const n = (id) => Number(document.querySelector(
                    `#cards .card[data-job-id="${id}"] .tokens`).textContent);
                return n(a) >= 8 ? a : n(b) >= 8 ? b : null;
            }""",
            arg=[first, second],
            timeout=2 * UI_TIMEOUT_MS,  # two prompts to evaluate on one thread
        ).json_value()
        other = second if streaming == first else first
        tab.card(streaming).get_by_role("button", name="Cancel").click()
        expect(tab.state(streaming)).to_have_text("cancelled")
        expect(tab.card(streaming).locator(".note")).to_have_text("cancelled by client")

        # The other keeps its stream: it is not cancelled, and its count grows after the cancel.
        after_cancel = tab.tokens(other)
        # (It may have to evaluate its prompt first, if the engine ran the two in turn.)
        tab.wait_tokens(other, after_cancel + 10, timeout_ms=2 * UI_TIMEOUT_MS)
        with worker.client() as c:
            gone = c.get(f"/jobs/{streaming}").json()
            going = c.get(f"/jobs/{other}").json()
        assert gone["state"] == "cancelled" and gone["cancel_reason"] == "client"
        assert going["state"] in ("running", "completed") and going["tokens_out"] > after_cancel
        assert going.get("cancel_reason") is None
        expect(tab.state(other)).to_have_text(re.compile(r"^(running|completed)$"))
        assert tab.card(streaming).locator(".output").text_content() == gone["text"]
        assert tab.tokens(streaming) == gone["tokens_out"]
        if going["state"] == "running":  # the panel, read live, shows it alone in its slot
            expect(page.locator(f'#slots-body tr[data-job-id="{other}"] td.id')).to_have_text(other)
        expect(page.locator(f'#slots-body tr[data-job-id="{streaming}"]')).to_have_count(0)

        # Unless it ended on its own meanwhile, the test ends the other one from its card too.
        other_cancel = tab.card(other).get_by_role("button", name="Cancel")
        if other_cancel.is_enabled():
            other_cancel.click()
        expect(tab.state(other)).to_have_text(re.compile(r"^(cancelled|completed)$"))
        with worker.client() as c:
            record = c.get(f"/jobs/{other}").json()
        assert (record["state"], record.get("cancel_reason")) in (("cancelled", "client"), ("completed", None)), record
        assert record["tokens_out"] > after_cancel
        assert tab.card(other).locator(".output").text_content() == record["text"]
        assert tab.tokens(other) == record["tokens_out"]
        expect(tab.job_row(streaming).locator(".state")).to_have_text("cancelled")
        expect(tab.job_row(other).locator(".state")).to_have_text(record["state"])

        # With nothing of the page running, the panel is read once more, then no more.
        expect(page.locator("#slots-busy")).to_have_text("0")
        expect(slot_rows).to_have_count(0)
        polled = len(healths)
        assert polled >= 4  # read while the jobs ran
        page.wait_for_timeout(1500)  # not a wait for a condition: three polling periods, no reading
        assert len(healths) == polled
        tab.assert_clean()
    finally:
        context.close()


def test_a_slot_of_another_tenant_shows_no_job_id(browser, keyed_worker):
    """WO-CONSOLE-8: the Slots panel names only the caller's jobs; another tenant's job in
    a slot shows as such. Bob's job holds the one slot while alice's page waits."""
    ops = {"Authorization": f"Bearer {TOKENS['ops']}"}
    with keyed_worker.client(headers=ops) as c:
        wait_idle(c)
    bob = StreamThread(
        keyed_worker,
        {"job_id": uid("bob"), "prompt": LONG_PROMPT, "max_tokens": 256},
        headers={"Authorization": f"Bearer {TOKENS['bob']}"},
    ).start()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        with keyed_worker.client(headers=ops) as c:
            wait_active(c, bob.job_id)
        tab = ConsolePage(context.new_page(), keyed_worker.url)
        page = tab.page
        page.goto(tab.url + "/")
        page.fill("#token", TOKEN)
        tab.set_params("Hello", max_tokens=8)
        job_id = tab.stream()
        expect(tab.state(job_id)).to_have_text("queued")
        other = page.locator("#slots-body tr td.other")
        expect(other).to_have_text("another tenant's job")
        expect(page.locator("#slots-body")).not_to_contain_text(bob.job_id)
        expect(page.locator("#slots-busy")).to_have_text("1")
        tab.card(job_id).get_by_role("button", name="Cancel").click()
        expect(tab.state(job_id)).to_have_text("cancelled")
        tab.assert_clean()
    finally:
        context.close()
        with keyed_worker.client(headers=ops) as c:
            cancel(c, bob.job_id)
        bob.join()
        with keyed_worker.client(headers=ops) as c:
            wait_idle(c)


def test_finished_cards_give_way_to_new_ones(tab, worker):
    """WO-CONSOLE-8: at most 8 cards; a new job pushes out the oldest finished card, never
    a running one."""
    page = tab.open().page
    tab.set_params(STORY, max_tokens=2048)
    running = tab.stream()
    expect(tab.state(running)).to_have_text("running")
    tab.set_params("Hello", top_p=5)  # refused by the worker at once: cards that finish fast
    refused = []
    for _ in range(8):
        refused.append(tab.stream())
        expect(tab.state(refused[-1])).to_have_text("rejected")
    cards = page.locator("#cards .card")
    expect(cards).to_have_count(8)
    expect(tab.card(refused[0])).to_have_count(0)  # the oldest finished one went
    expect(tab.card(running)).to_be_visible()
    expect(tab.state(running)).to_have_text("running")
    expect(tab.card(refused[-1]).locator(".error")).to_contain_text("top_p")
    tab.card(running).get_by_role("button", name="Cancel").click()
    expect(tab.state(running)).to_have_text("cancelled")
    tab.assert_clean()
