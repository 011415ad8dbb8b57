"""The Hub tab in headless Chromium against the local Hub server: log in with a typed token, preview the card and
push a tiny trained adapter, search for it, pull it (the doctor's report shows) and open it in the Chat tab.

Run: ``pytest tests/test_browser_hub.py -m browser -s`` (a screenshot of the tab goes to /tmp/hub_tab.png).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.hub_fixture import BASE, serve_base, train_tiny
from tests.hub_server import WRITE_TOKEN
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, free_port, md, running_app, wait_js

pytestmark = pytest.mark.browser
pytest_plugins = ["tests.hub_fixture"]

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = Path(os.environ.get("PEFTLAB_SCREENSHOTS") or "/tmp") / "hub.png"  # the README shows it
RUN = "20250101-000000-lora"


@pytest.fixture
def app(hub_env, tiny_dir, tmp_path):
    """``python app.py`` pointed at the Hub server (no token in its environment: the test types one), with a run
    holding a tiny trained adapter, and its own adapter store."""
    serve_base(hub_env, tiny_dir)
    runs = tmp_path / "runs"
    train_tiny(runs / RUN, tiny_dir)
    port = free_port()
    env = {
        **os.environ,
        "PEFTLAB_PORT": str(port),
        "PEFTLAB_RUNS": str(runs),
        "PEFTLAB_STORE": str(tmp_path / "store"),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "OMP_NUM_THREADS": "1",
    }  # hub_env set HF_ENDPOINT, HF_HOME, XET off
    for key in ("HF_TOKEN", "HF_HUB_OFFLINE", "SPACE_ID"):
        env.pop(key, None)
    with running_app(env, tmp_path / "app.log", timeout=120) as url:
        yield url, tmp_path


@pytest.fixture
def page(app):
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pg = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        pg.set_default_timeout(60_000)
        pg.goto(app[0])
        pg.wait_for_selector("#tab-hub-button")
        yield pg
        browser.close()


def fill(pg, elem_id: str, text: str) -> None:
    pg.locator(f"#{elem_id}").locator("textarea, input").first.fill(text)


def test_push_search_pull_and_open_in_chat(page, app, hub_env):
    pg, tmp = page, app[1]
    t0 = time.time()
    pg.click("#tab-hub-button")
    fill(pg, "hub-token", WRITE_TOKEN)
    assert pg.locator("#hub-token input").get_attribute("type") == "password"
    pg.click("#hub-check")
    wait_js(pg, "MD('hub-account').startsWith('Logged in as alice (write)')")

    assert pg.input_value("#hub-push-adapter input").startswith(RUN)  # the newest run is picked
    fill(pg, "hub-push-repo", "alice/web-lora")
    pg.click("#hub-preview")
    wait_js(pg, "MD('hub-card').includes('library_name: peft')")
    assert f"base_model:adapter:{BASE}" in md(pg, "hub-card")
    pg.wait_for_selector("#hub-card-curve img")  # the loss curve the card links
    pg.click("#hub-push")
    wait_js(pg, "MD('hub-push-status').startsWith('Pushed to')")
    sha = hub_env.repo("alice/web-lora").branches["main"]
    assert f"commit {sha}" in md(pg, "hub-push-status")

    fill(pg, "hub-search-base", BASE)
    pg.click("#hub-search")
    pg.wait_for_function("document.querySelector('#hub-search-results').innerText.includes('alice/web-lora')")
    assert md(pg, "hub-search-status").startswith("1 adapter of")
    pg.click('#hub-search-results [data-testid="cell-0-0"]')
    pg.wait_for_function(
        "document.querySelector('#hub-pull-ref input, #hub-pull-ref textarea').value === 'alice/web-lora'"
    )  # a picked result fills the pull box
    pg.click("#hub-pull")
    wait_js(pg, "MD('hub-pull-status').startsWith('Pulled')", timeout=90_000)
    assert f"at commit {sha}" in md(pg, "hub-pull-status")
    report = md(pg, "hub-pull-report")
    assert "adapter doctor" in report and "OK:" in report
    pg.wait_for_timeout(800)  # let the last updates paint before the screenshot
    pg.screenshot(path=str(SCREENSHOT), full_page=True)

    pg.click("#hub-open")
    pg.wait_for_selector("#chat-adapter", state="visible")
    pg.wait_for_function("document.querySelector('#chat-adapter input').value.startsWith('alice--web-lora')")
    wait_js(pg, "MD('chat-info').startsWith('Loaded')", timeout=90_000)  # the chat loaded it (its base: the Hub's)
    assert "alice--web-lora" in md(pg, "chat-info")
    assert WRITE_TOKEN not in pg.inner_text("body")
    for f in tmp.rglob("*"):  # the store, the Hub cache (HF_HOME), the runs, the app's log
        if f.is_file():
            assert WRITE_TOKEN.encode() not in f.read_bytes(), f"the token was written to {f}"
    print(f"\nhub tab flow in {time.time() - t0:.0f} s; screenshot {SCREENSHOT}")
