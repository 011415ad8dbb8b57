"""The Runs, Evaluate and Compare tabs in headless Chromium, on a tiny base model (fast): a run trained beforehand
is listed with its curve and opens in Chat; the Evaluate tab scores it next to the base and offers the export; the
Compare tab runs two methods in the background and survives a page reload; the Compose tab merges the two runs,
sweeps their weights and chats with parents and composition side by side.

Screenshots go to ``$PEFTLAB_SCREENSHOTS`` when set (the README's come from here), else to the test's tmp folder.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.test_browser import browser, free_port, md, running_app, shots, wait_js  # noqa: F401, F811 (browser: a fixture)

pytestmark = [pytest.mark.browser]


@pytest.fixture(scope="module")
def tabs_app(tmp_path_factory, tiny_dir):
    """``python app.py`` over a runs folder holding two finished LoRA runs on the tiny base: ``dates`` (2 steps),
    then ``tiny-lora`` (3 steps, the newest)."""
    from peftlab.train import TrainArgs, train

    runs = tmp_path_factory.mktemp("tab-runs")
    for name, dataset, steps in (("dates", "iso-dates", 2), ("tiny-lora", "capitals-json", 3)):
        train(
            TrainArgs(
                method="lora",
                base_model=str(tiny_dir),
                dataset=dataset,
                output_dir=str(runs / name),
                max_steps=steps,
                batch_size=2,
                max_length=48,
                max_eval_samples=4,
                learning_rate=1e-2,
                device="cpu",
            )
        )
    env = {
        **os.environ,
        "PEFTLAB_PORT": str(free_port()),
        "PEFTLAB_RUNS": str(runs),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "OMP_NUM_THREADS": "1",
    }
    with running_app(env, runs.parent / "tabs-app.log") as url:
        yield url, runs


@pytest.fixture
def page(browser, tabs_app):  # noqa: F811 (the fixture imported from test_browser)
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    pg.goto(tabs_app[0])
    pg.wait_for_selector("#tab-runs-button")
    yield pg
    ctx.close()


def table_text(pg, elem_id: str) -> str:
    return pg.inner_text(f"#{elem_id}")


def test_runs_tab_lists_the_run_draws_its_curve_and_opens_it_in_chat(page, tabs_app, tmp_path):
    pg = page
    pg.click("#tab-runs-button")
    pg.wait_for_function("() => (document.querySelector('#runs-table') || {}).innerText?.includes('tiny-lora')")
    text = table_text(pg, "runs-table")
    assert "lora" in text and "capitals-json" in text and "3/3" in text and "done" in text
    pg.wait_for_selector("#runs-plot .mark-line path")  # the overlay draws the run's curve
    wait_js(pg, "MD('runs-details').includes('tiny-lora')")
    pg.wait_for_timeout(800)
    pg.screenshot(path=str(shots(tmp_path) / "runs.png"), full_page=True)
    pg.click("#runs-chat")
    wait_js(pg, "MD('chat-info').includes('Loaded')", timeout=120_000)
    assert "tiny-lora" in md(pg, "chat-info")
    assert pg.is_visible("#chat-msg")


def test_evaluate_tab_scores_the_run_next_to_the_base(page, tabs_app, tmp_path):
    pg = page
    pg.click("#tab-evaluate-button")
    pg.click("#eval-adapters input")
    pg.click('li[role="option"]:has-text("tiny-lora")')
    pg.keyboard.press("Escape")
    pg.click("#eval-run")
    wait_js(pg, "MD('eval-status').length > 0", timeout=240_000)
    assert md(pg, "eval-status").startswith("Evaluated 1 adapter"), md(pg, "eval-status")
    metrics = table_text(pg, "eval-metrics")
    assert "base" in metrics and "tiny-lora" in metrics
    assert pg.locator("#eval-samples-table tbody tr").count() >= 1
    assert pg.locator("#eval-files a").count() == 2  # evaluation.json and evaluation.csv
    pg.wait_for_timeout(500)
    pg.screenshot(path=str(shots(tmp_path) / "evaluate.png"), full_page=True)


def test_compare_tab_runs_in_the_background_and_survives_a_reload(page, tabs_app, tmp_path, tiny_dir):
    pg = page
    pg.click("#tab-compare-button")
    for box in pg.locator("#compare-methods input[type=checkbox]").all():
        label = box.evaluate("e => e.closest('label').innerText.trim()")
        if (label in ("lora", "bitfit")) != box.is_checked():
            box.click()
    pg.fill("#compare-steps input", "2")
    pg.fill("#compare-base textarea", str(tiny_dir))
    pg.click("#compare-start")
    wait_js(pg, "MD('compare-status').startsWith('Comparison')")
    pg.reload()  # the comparison goes on; the reloaded page reattaches to it
    pg.click("#tab-compare-button")
    wait_js(pg, "MD('compare-status').includes('finished')", timeout=300_000)
    assert "2/2" in md(pg, "compare-status")
    table = table_text(pg, "compare-table")
    assert "lora" in table and "bitfit" in table and "error" not in table
    pg.wait_for_selector("#compare-curves .mark-line path")
    time.sleep(0.5)
    pg.screenshot(path=str(shots(tmp_path) / "compare.png"), full_page=True)


def test_compose_tab_saves_sweeps_and_chats_side_by_side(page, tabs_app, tmp_path):
    pg, runs = page, tabs_app[1]
    pg.click("#tab-compose-button")
    for run in ("tiny-lora", "dates"):
        pg.click("#compose-parents input")
        pg.click(f'li[role="option"][aria-label^="{run} ("]')
    pg.keyboard.press("Escape")
    pg.fill("#compose-weights textarea", "0.5, 0.5")
    pg.fill("#compose-name textarea", "half-half")
    pg.click("#compose-save")
    wait_js(pg, "MD('compose-status').length > 0", timeout=120_000)
    assert md(pg, "compose-status").startswith("Saved half-half"), md(pg, "compose-status")
    assert (runs / "half-half" / "adapter" / "adapter_model.safetensors").exists()

    pg.click("#compose-sweep")
    wait_js(pg, "MD('compose-sweep-status').length > 0", timeout=240_000)
    assert md(pg, "compose-sweep-status").startswith("Best weight w = "), md(pg, "compose-sweep-status")
    pg.wait_for_selector("#compose-sweep-plot img")
    assert "0.25" in table_text(pg, "compose-sweep-table")  # 5 weights: 0, 0.25, 0.5, 0.75, 1

    pg.fill("#compose-msg textarea", "What is the capital of France?")
    pg.press("#compose-msg textarea", "Enter")
    wait_js(pg, "MD('compose-chat-status').length > 0", timeout=120_000)
    assert md(pg, "compose-chat-status") == "Replies in one batched pass."
    replies = table_text(pg, "compose-replies")
    assert "tiny-lora" in replies and "dates" in replies and "composition: half-half" in replies and "base" in replies
    pg.wait_for_timeout(500)
    pg.screenshot(path=str(shots(tmp_path) / "compose.png"), full_page=True)
