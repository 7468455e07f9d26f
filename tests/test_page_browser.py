"""The technician's page in a real browser: headless Chromium (the distribution's, installed by .ci/run) driven by
Playwright, against ``meter-gateway run`` as a process reading simulated Modbus meters (a pymodbus server) and
delivering to the Wattics emulator (HTTPS) and a file.

What a technician would see: live values that change on screen, a meter that stops answering shown failing with
its error within two intervals, a bad configuration pasted shown with its line numbers and nothing changed, a good
one applied with the readings still flowing, a wrong password refused, and nothing secret in any page or download.

``PAGE_SCREENSHOTS=docs/page python -m pytest tests/test_page_browser.py`` also saves the screenshots in docs/.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.daemon import Daemon, read_jsonl
from tests.helpers.modbus import ServerThread
from tests.helpers.mosquitto import free_port
from tests.helpers.wattics_emulator import WatticsEmulator
from tests.test_modbus_source import sim
from tests.test_page import PAGE_PASSWORD, WATTICS_PASSWORD, assert_no_secret, config_text

CHROMIUM = next((p for p in (os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"))
                 if p), None)
try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - in the test extra
    sync_playwright = None  # type: ignore[assignment]

# .ci/run installs Chromium and sets METER_GATEWAY_BROWSER_TESTS=required: there, a missing browser fails.
_REQUIRED = os.environ.get("METER_GATEWAY_BROWSER_TESTS") == "required"
pytestmark = pytest.mark.skipif((CHROMIUM is None or sync_playwright is None) and not _REQUIRED,
                                reason="no Chromium here (apt-get install chromium; .ci/run installs it)")

INTERVAL = 2.0
SHOTS = os.environ.get("PAGE_SCREENSHOTS")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Required but missing: say so, rather than let Playwright look for a browser of its own it never downloaded.
    assert CHROMIUM is not None, "METER_GATEWAY_BROWSER_TESTS=required but no chromium on PATH (apt-get install chromium)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Daemon, ServerThread, WatticsEmulator, int]]:
    emu = WatticsEmulator(tmp_path / "certs").start()
    port = free_port()
    with ServerThread([sim(1), sim(2)]) as server:
        cfg = tmp_path / "config.yaml"
        cfg.write_text(config_text(tmp_path, port, server.port, emu, interval="2s"))
        cfg.chmod(0o600)
        with Daemon(cfg) as d:
            d.start()
            try:
                yield d, server, emu, port
            finally:
                rc, _ = d.stop()
                assert rc == 0
    emu.stop()


def shot(page: Page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


def sign_in(page: Page, password: str = PAGE_PASSWORD) -> None:
    page.click("#who button")
    page.fill("#password", password)
    page.click("#signin")


def test_live_values_and_a_meter_that_stops_answering(browser: Browser, site) -> None:  # type: ignore[no-untyped-def]
    _d, server, _emu, port = site
    page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone
    page.goto(f"http://127.0.0.1:{port}/#/meters")
    volts = page.locator('[data-meter="main"] [data-q="voltage_l1"]')
    expect(volts).to_have_text(re.compile(r"^\d{3}(\.\d+)?$"), timeout=10_000)
    assert 200 < float(volts.inner_text()) < 260
    # Some of the 35 values change at every reading (any one may hold still for seconds at the top of its wave, and
    # a float32 energy counter in Wh moves in steps of 256 Wh).
    values = '[data-meter="main"] .vals'
    first = page.locator(values).inner_text()
    stamp = page.locator('[data-meter="main"] .stamp').inner_text()
    for sel, before in (('[data-meter="main"] .stamp', stamp), (values, first)):
        page.wait_for_function("([sel, before]) => document.querySelector(sel).innerText !== before",
                               arg=[sel, before], timeout=3 * INTERVAL * 1000)
    shot(page, "meters-phone")

    # the second meter stops answering: its card says so, with the error, within two intervals
    server.call(lambda s: setattr(s, "silent", {2}))
    t0 = time.monotonic()
    expect(page.locator('[data-meter="sub"] .state')).to_have_text("failing", timeout=int(2 * INTERVAL * 1000))
    took = time.monotonic() - t0
    expect(page.locator('[data-meter="sub"] .problem')).to_contain_text("answer", timeout=2000)
    assert took <= 2 * INTERVAL
    expect(page.locator('[data-meter="main"] .state')).to_have_text("answering")
    page.set_viewport_size({"width": 1200, "height": 900})
    shot(page, "meters")

    # the overview says what is wrong and what to do; a meter's page shows its registers
    page.goto(f"http://127.0.0.1:{port}/#/")
    expect(page.locator("#problems")).to_contain_text("sub", timeout=5000)
    shot(page, "overview")
    page.goto(f"http://127.0.0.1:{port}/#/meter/main")
    expect(page.locator("#registers")).to_contain_text("voltage_l1")
    assert page.locator("#registers tbody tr").count() >= 30
    expect(page.locator("#answer-times")).to_contain_text("ms (median)")
    shot(page, "meter-registers")
    server.call(lambda s: setattr(s, "silent", set()))


def test_configuration_bad_then_good(browser: Browser, site, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    d, _server, emu, port = site
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(f"http://127.0.0.1:{port}/#/config")
    sign_in(page)
    area = page.locator("#config-text")
    expect(area).to_contain_text("meters:")
    text = area.input_value()
    assert WATTICS_PASSWORD not in text and '"********"' in text
    before = (tmp_path / "config.yaml").read_text()

    area.fill(text.replace("interval: 2s}", "interval: soon}", 1).replace("type: file", "type: fax"))
    page.click("#check")
    result = page.locator("#config-result")
    expect(result).to_contain_text("config.yaml (page):5: meters[main].interval")
    expect(result).to_contain_text("fax")
    shot(page, "config-problems")
    page.click("#apply")
    expect(result).to_contain_text("refused")
    assert (tmp_path / "config.yaml").read_text() == before

    out = tmp_path / "out.jsonl"
    area.fill(text.replace("name: sub, type: modbus, bus: b, unit: 2, profile: eastron_sdm630, interval: 2s",
                           "name: sub, type: modbus, bus: b, unit: 2, profile: eastron_sdm630, interval: 1s"))
    page.click("#apply")
    expect(result).to_contain_text("Applied", timeout=30_000)
    n, sent = len(read_jsonl(out)), emu.count()
    deadline = time.monotonic() + 4 * INTERVAL
    while not (len(read_jsonl(out)) > n + 2 and emu.count() > sent):  # Wattics takes them: the password was kept
        assert time.monotonic() < deadline, "readings stopped flowing after the apply"
        time.sleep(0.2)
    d.wait_log(lambda e: e.get("event") == "configuration from the page applied")


def test_wrong_password_and_nothing_secret_anywhere(browser: Browser, site) -> None:  # type: ignore[no-untyped-def]
    _d, _server, _emu, port = site
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    page.goto(f"http://127.0.0.1:{port}/#/config")
    sign_in(page, "not the password")
    expect(page.locator("#signin-message")).to_contain_text("wrong password")
    assert not [c for c in context.cookies() if c["name"] == "mg_session"]
    page.fill("#password", PAGE_PASSWORD)
    page.click("#signin")
    expect(page.locator("#signin-message")).to_contain_text("too many wrong passwords")
    time.sleep(1.1)
    page.click("#signin")
    expect(page.locator("#config-text")).to_contain_text("meters:")

    seen: dict[str, str] = {}
    for tab in ("", "meters", "meter/main", "config", "platforms", "logs"):
        page.goto(f"http://127.0.0.1:{port}/#/{tab}")
        page.wait_for_load_state("networkidle")
        time.sleep(0.5)
        seen[f"page #{tab}"] = page.content() + (page.locator("#config-text").input_value()
                                                 if tab == "config" else "")
        if tab == "platforms":
            page.locator("details summary").first.click()  # the last packet sent to Wattics, as it went
            shot(page, "platforms")
        if tab == "logs":
            shot(page, "logs")
    with page.expect_download() as dl:
        page.click("#diag")
    bundle = zipfile.ZipFile(io.BytesIO(Path(dl.value.path()).read_bytes()))
    for name in bundle.namelist():
        seen[f"bundle {name}"] = bundle.read(name).decode()
    page.goto(f"http://127.0.0.1:{port}/#/logs")
    with page.expect_download() as dl:
        page.click("text=download")
    seen["log download"] = Path(dl.value.path()).read_text()
    assert "page action" in seen["log download"] and "bundle status.json" in seen
    for where, content in seen.items():
        assert_no_secret(content, where)
    context.close()
