"""The dashboard in a real browser (headless Chromium, the system's, driven by Playwright)
against a running CPU cluster: sign in with the printed URL, see both replicas with live
numbers, drain one and see it change state, undo it, and visit every page. Screenshots of each
page go to build/screenshots/ (FLEETLM_SCREENSHOTS overrides)."""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import free_port, started_stack, tiny_config_yaml
from .test_lora_stack import _save_adapter

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = Path(os.environ.get("FLEETLM_SCREENSHOTS", Path(__file__).parents[2] / "build/screenshots"))

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium on this machine (`make test` installs it as root with apt-get)",
)


@pytest.fixture(scope="module")
def stack(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    root = tmp_path_factory.mktemp("dash-adapters")
    _save_adapter(root / "sql", 8, 8, ["q_proj", "v_proj"], seed=1)
    text = tiny_config_yaml(replicas=2, http_port=free_port()) + (
        f"adapters:\n  max_loras: 2\n  allowed_dirs: [{root}]\n"
        f"  preload:\n    - {{name: sql, path: {root / 'sql'}}}\n"
    )
    with started_stack(text, http_path="direct") as st:
        yield st


@pytest.fixture(scope="module")
def page(stack: object) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1400, "height": 900})
        tab.on("dialog", lambda dialog: dialog.accept())  # every action asks first
        yield tab
        browser.close()


def _traffic(url: str, stop: threading.Event) -> None:
    """Requests while the test looks, so the numbers move (base and adapter)."""
    body = {"prompt": [5, 6, 7, 8], "max_tokens": 24, "ignore_eos": True}
    while not stop.is_set():
        for model in ("fleetlm/tiny-llama", "sql"):
            httpx.post(f"{url}/v1/completions", json={**body, "model": model}, timeout=60)


def test_the_dashboard_shows_the_fleet_and_its_actions_work(stack: object, page: object) -> None:
    from playwright.sync_api import expect

    stop = threading.Event()
    load = threading.Thread(target=_traffic, args=(stack.base_url, stop), daemon=True)
    load.start()
    try:
        _check_pages(stack, page, expect)
    finally:
        stop.set()
        load.join(60)


def _check_pages(stack: object, page: object, expect: object) -> None:
    token = stack.cluster.admin_token.value
    page.goto(f"{stack.admin_url}/?token={token}")
    # Signed in: the token left the address bar for an HttpOnly cookie.
    assert page.url == f"{stack.admin_url}/dashboard/"
    cookie = next(c for c in page.context.cookies() if c["name"] == "fleetlm_admin")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    expect(page.locator("#live")).to_have_text("live", timeout=15_000)
    rows = page.locator("#replicas tr[data-replica]")
    expect(rows).to_have_count(2, timeout=15_000)
    expect(page.locator("#replicas .state.ready")).to_have_count(2)
    # Live numbers: the requests above show up as steps per second on some replica.
    steps = page.locator("#replicas td:nth-child(8)")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#replicas td:nth-child(8)')]"
        ".some(td => parseFloat(td.textContent) > 0)",
        timeout=20_000,
    )
    assert steps.count() == 2
    page.wait_for_timeout(3000)  # let the charts gather a few snapshots for the screenshot
    page.screenshot(path=str(SHOTS / "overview.png"), full_page=True)

    # Drain the first replica: it is cordoned and its requests move; the page follows.
    first = rows.first.get_attribute("data-replica")
    rows.first.locator("button[data-act=drain]").click()
    expect(page.locator(f"tr[data-replica='{first}'] .state")).to_have_text(
        "drained", timeout=30_000
    )
    expect(page.locator("#toast")).to_contain_text(first)
    page.screenshot(path=str(SHOTS / "drained.png"), full_page=True)
    page.locator(f"tr[data-replica='{first}'] button[data-act=uncordon]").click()
    expect(page.locator(f"tr[data-replica='{first}'] .state")).to_have_text("ready", timeout=30_000)

    page.locator(f"a[href='#/replica/{first}']").first.click()
    expect(page.locator("#detail")).to_contain_text(first)
    expect(page.locator("#reqs")).not_to_contain_text("loading", timeout=10_000)
    page.screenshot(path=str(SHOTS / "replica.png"), full_page=True)

    page.click("a[data-page=migrations]")
    expect(page.locator("#migs")).to_be_visible()
    page.screenshot(path=str(SHOTS / "migrations.png"), full_page=True)

    page.click("a[data-page=adapters]")
    expect(page.locator("#ads")).to_contain_text("sql")
    expect(page.locator("#ads")).to_contain_text("GPU", timeout=10_000)  # on some device
    page.screenshot(path=str(SHOTS / "adapters.png"), full_page=True)

    page.click("a[data-page=policy]")
    expect(page.locator("#yaml")).to_have_value(re.compile("dispatch"), timeout=10_000)
    page.fill("#yaml", "dispatch:\n  policy: no_such_policy\n")
    page.click("#yaml-apply")
    expect(page.locator("#yaml-errors")).to_contain_text("dispatch.policy")
    page.screenshot(path=str(SHOTS / "policy.png"), full_page=True)

    page.click("a[data-page=events]")
    expect(page.locator("#evs")).to_contain_text("replica_draining")
    page.screenshot(path=str(SHOTS / "events.png"), full_page=True)
