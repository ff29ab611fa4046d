"""The web console in a real browser: `kasm dev` with an admin token, driven in headless
Chromium (Debian's) by Playwright. Every test saves a screenshot to target/ui-screenshots/.

The notification handler posts to a webhook receiver of this file's, which answers 503 until
the replay test says otherwise: reminders pile up in the dead-letter topic as
`retries-exhausted`, and one of them is replayed from the console once the receiver is back.
"""

import http.server
import json
import os
import pathlib
import re
import secrets
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
from playwright.sync_api import Page, expect, sync_playwright

ROOT = pathlib.Path(__file__).resolve().parents[2]
KASM = ROOT / "target" / "debug" / "kasm"
DIST = ROOT / "handlers" / "dist"
SHOTS = ROOT / "target" / "ui-screenshots"
HANDLERS = ["audit", "live-updates", "notification", "recurring"]
WAIT_MS = 60_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Webhook:
    """A receiver for the notification handler: 503 while `down`, else 200; remembers the
    idempotency key (the reminder's event id) of every request it answered 200."""

    def __init__(self):
        self.down = True
        self.delivered = set()
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                key = self.headers.get("Idempotency-Key", "")
                if hook.down:
                    self.send_response(503)
                else:
                    hook.delivered.add(key)
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


class Dev:
    """`kasm dev` as a process; its output is kept for the failure message."""

    def __init__(self, token: str, webhook: Webhook):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.token = token
        self.lines = []
        env = dict(os.environ, KASM_ADMIN_TOKEN=token)
        env.setdefault("KASM_CACHE_DIR", str(ROOT / "target" / "kasm-cache"))
        self.proc = subprocess.Popen(
            [str(KASM), "dev", "--admin", f"127.0.0.1:{self.port}",
             "--webhook", f"127.0.0.1:{webhook.port}", "--handlers-dir", str(DIST)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kasm dev exited ({self.proc.returncode}):\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.base}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"kasm dev never got ready:\n{self.output()}")
            time.sleep(0.5)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines[-60:])

    def api(self, method: str, path: str, token=None, body=None):
        """A request to the admin API: (status, JSON)."""
        req = urllib.request.Request(f"{self.base}{path}", method=method, data=body)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def webhook():
    w = Webhook()
    yield w
    w.close()


@pytest.fixture(scope="session")
def dev(webhook):
    d = Dev(secrets.token_hex(16), webhook)
    yield d
    d.stop()


@pytest.fixture(scope="session")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=os.environ.get("KASM_CHROMIUM", "/usr/bin/chromium"),
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser, request):
    """A fresh browser context (nothing in its session storage) at 1280 × 900."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    p = context.new_page()
    errors = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    yield p
    context.close()
    assert not errors, f"the page's script failed: {errors}"


def shot(page: Page, name: str, full_page=True):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full_page)


def sign_in(page: Page, dev: Dev, token=None):
    page.goto(f"{dev.base}/#/login")
    page.fill("#token", token or dev.token)
    page.click("button[type=submit]")


def fits_a_phone(page: Page, name: str):
    """At 390 px wide the page does not scroll sideways (wide tables scroll in their box)."""
    size = page.viewport_size
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(200)
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{name}: the page is {overflow} px wider than a 390 px screen"
    shot(page, f"{name}-390", full_page=False)
    page.set_viewport_size(size)


def card(page: Page, name: str):
    return page.locator(f"article.handler[data-handler='{name}']")


def test_without_the_token_every_page_is_the_sign_in_form_and_the_api_answers_401(page, dev):
    for route in ["/", "/#/handlers/audit", "/#/handlers/notification/dead-letters", "/#/health"]:
        page.goto(f"{dev.base}{route}")
        expect(page.locator("h1")).to_have_text("401 — sign in to see this page")
        expect(page.locator("#token")).to_be_visible()
        assert "audit" not in page.locator("main").inner_text()
    shot(page, "01-unauthorized")
    for path in ["/v1/handlers", "/v1/handlers/audit", "/v1/handlers/notification/dlq", "/openapi.json"]:
        status, body = dev.api("GET", path)
        assert status == 401, (path, status, body)
    # The console's own routes hold no data: the same bytes with and without a token.
    for asset in ["/", "/console.js", "/console.css"]:
        with urllib.request.urlopen(f"{dev.base}{asset}") as r:
            assert r.status == 200
            assert "default-src 'none'" in r.headers["Content-Security-Policy"]
            assert b"group_id\":" not in r.read()


def test_a_wrong_token_is_refused_and_the_right_one_shows_the_four_handlers(page, dev):
    sign_in(page, dev, token="not-the-token")
    expect(page.locator(".message.error")).to_contain_text("401")
    expect(page.locator("#token")).to_be_visible()
    sign_in(page, dev)
    for name in HANDLERS:
        expect(card(page, name)).to_be_visible()
        expect(card(page, name).locator(".badge")).to_have_text("running")
    expect(card(page, "audit").locator("table")).to_contain_text("task-events/")
    # The token stays in the tab: a reload is still signed in, and it is in no URL.
    page.reload()
    expect(card(page, "recurring")).to_be_visible()
    assert dev.token not in page.url
    # The chart fills as the sampler reads the counters (every 5 s).
    expect(card(page, "audit").locator("svg.chart rect").first).to_be_attached(timeout=WAIT_MS)
    shot(page, "02-handlers-1280")
    page.set_viewport_size({"width": 390, "height": 844})
    expect(card(page, "notification")).to_be_visible()
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than a 390 px screen"
    shot(page, "03-handlers-390")


def test_pause_and_resume_a_handler(page, dev):
    sign_in(page, dev)
    recurring = card(page, "recurring")
    recurring.get_by_role("button", name="Pause").click()
    expect(card(page, "recurring").locator(".badge")).to_have_text("paused")
    assert dev.api("GET", "/v1/handlers/recurring", dev.token)[1]["status"] == "paused"
    shot(page, "04-paused")
    card(page, "recurring").get_by_role("button", name="Resume").click()
    expect(card(page, "recurring").locator(".badge")).to_have_text("running")
    assert dev.api("GET", "/v1/handlers/recurring", dev.token)[1]["status"] == "running"


def test_deploy_a_new_version_see_it_in_the_history_and_roll_back(page, dev):
    before = dev.api("GET", "/v1/handlers/live-updates", dev.token)[1]["active_version"]["sha256"]
    sign_in(page, dev)
    expect(card(page, "live-updates")).to_be_visible()
    page.goto(f"{dev.base}/#/handlers/live-updates")
    expect(page.locator("#active-version")).to_have_text(before)
    # The JavaScript twin of the Rust handler: same world, same grant (websocket).
    page.set_input_files("#component", str(DIST / "js-live-updates.wasm"))
    page.click("#deploy")
    expect(page.locator("#deploy-result .message.ok")).to_contain_text("Deployed", timeout=120_000)
    after = dev.api("GET", "/v1/handlers/live-updates", dev.token)[1]["active_version"]["sha256"]
    assert after != before
    expect(page.locator("#active-version")).to_have_text(after)
    newest = page.locator("#history tbody tr").first
    expect(newest).to_have_attribute("data-to", after)
    expect(newest).to_contain_text("deploy")
    shot(page, "05-deployed")
    fits_a_phone(page, "05-deployed")
    page.click("#rollback")
    expect(page.locator("#confirm")).to_contain_text("Roll live-updates back")
    page.click("#confirm-ok")
    expect(page.locator("#deploy-result .message.ok")).to_contain_text("Rolled back", timeout=120_000)
    expect(page.locator("#active-version")).to_have_text(before)
    expect(page.locator("#history tbody tr").first).to_contain_text("rollback")


def test_a_refused_component_shows_the_reason_and_the_old_version_keeps_serving(page, dev, tmp_path):
    before = dev.api("GET", "/v1/handlers/audit", dev.token)[1]["active_version"]["sha256"]
    bad = tmp_path / "not-a-component.wasm"
    bad.write_bytes(b"this is not webassembly")
    sign_in(page, dev)
    expect(card(page, "audit")).to_be_visible()
    page.goto(f"{dev.base}/#/handlers/audit")
    page.set_input_files("#component", str(bad))
    page.click("#deploy")
    refusal = page.locator("#deploy-result .message.error")
    expect(refusal).to_contain_text("Refused (422)")
    expect(refusal).to_contain_text("not a WebAssembly file")
    expect(refusal).to_contain_text("keeps serving")
    shot(page, "06-refused")
    assert dev.api("GET", "/v1/handlers/audit", dev.token)[1]["active_version"]["sha256"] == before


def test_replay_a_dead_letter_and_see_it_handled(page, dev, webhook):
    # While the receiver answers 503, reminders end in the dead-letter topic.
    deadline = time.monotonic() + 120
    while True:
        status, page_ = dev.api("GET", "/v1/handlers/notification/dlq?limit=100", dev.token)
        assert status == 200, page_
        kinds = {r["provenance"]["error_kind"] for r in page_["records"]}
        if "retries-exhausted" in kinds:
            break
        assert time.monotonic() < deadline, f"no dead letter yet: {page_}"
        time.sleep(1)
    webhook.down = False
    sign_in(page, dev)
    expect(card(page, "notification")).to_be_visible()
    page.goto(f"{dev.base}/#/handlers/notification/dead-letters")
    page.select_option("#kind", "retries-exhausted")
    rows = page.locator("#dead-letters tbody tr[data-kind='retries-exhausted']")
    expect(rows.first).to_be_visible()
    assert page.locator("#dead-letters tbody tr:not([data-kind='retries-exhausted'])").count() == 0
    row = rows.first
    event_id = row.get_attribute("data-event-id")
    assert re.fullmatch(r"rem-\d+", event_id), event_id
    row.locator("details summary").click()
    expect(row.locator("pre.payload")).to_contain_text(event_id)
    row.locator("input[type=checkbox]").check()
    expect(page.locator("#selected-count")).to_have_text("1 selected")
    shot(page, "07-dead-letters", full_page=False)
    fits_a_phone(page, "07-dead-letters")
    page.click("#replay")
    dialog = page.locator("#confirm")
    expect(dialog).to_contain_text("Replay 1 dead letter of notification to reminders")
    expect(dialog).to_contain_text("at most 3 times")
    shot(page, "08-replay-confirm", full_page=False)
    page.click("#confirm-ok")
    expect(page.locator("#replay-result .message.ok")).to_contain_text(f"Replayed 1: {event_id}")
    # Handled: the receiver got it, and the handler counts it.
    deadline = time.monotonic() + 60
    while event_id not in webhook.delivered:
        assert time.monotonic() < deadline, f"{event_id} was replayed but never delivered"
        time.sleep(0.2)
    shot(page, "09-replayed", full_page=False)


def test_health_in_words(page, dev):
    sign_in(page, dev)
    expect(card(page, "audit")).to_be_visible()
    page.goto(f"{dev.base}/#/health")
    expect(page.locator("#live")).to_have_text("live")
    for name in HANDLERS:
        words = page.locator(f"article[data-handler='{name}'] .words")
        expect(words).to_contain_text(f"{name} is live and ready: consumer loop consuming")
        expect(words).to_contain_text("broker reachable")
    shot(page, "10-health")
    fits_a_phone(page, "10-health")
