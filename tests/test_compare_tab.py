"""A comparison in the background (peftlab.compare.start_background) and the Compare tab's handlers."""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("gradio")

from peftlab import compare  # noqa: E402
from peftlab.webui.compare_tab import CompareTab, status_text  # noqa: E402

ALICE, BOB = "a" * 32, "b" * 32  # browser owner ids of the form the server issues


def _wait(folder, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = compare.background_status(folder)
        if not st["running"]:
            return st
        time.sleep(0.5)
    raise AssertionError(f"comparison in {folder} still running after {timeout} s")


def test_a_background_comparison_fills_the_table_and_charts_and_reattaches(tiny_dir, tmp_path):
    tab = CompareTab(tmp_path)
    out = tab.on_start(["lora", "bitfit"], "capitals-json", None, 2, str(tiny_dir), ALICE)
    folder = out[0]
    assert folder and "compare-" in folder and out[8].interactive is True  # Stop enabled while it runs
    st = _wait(folder)
    assert [r["method"] for r in st["rows"]] == ["lora", "bitfit"]
    assert all("error" not in r for r in st["rows"]), st["rows"]
    for r in st["rows"]:  # each row is what `peftlab compare` measures, from that method's own run
        events = [json.loads(ln) for ln in open(f"{folder}/{r['method']}/progress.jsonl")]
        assert r["steps"] == 2 and max(e["step"] for e in events if e["event"] == "step") == 2
        assert r["trainable"] > 0 and 0 < r["percent"] < 100
    assert sorted(st["curves"]) == ["bitfit", "lora"] and all(len(c) == 2 for c in st["curves"].values())

    # a reloaded page (another tab object, same owner) reattaches to it; another owner does not see it
    again = CompareTab(tmp_path).on_load(ALICE)
    assert again[0] == folder and "**finished**: 2/2" in again[1]
    table, share, curves = again[3], again[4].data, again[5].data  # the charts' data
    assert list(table["method"]) == ["lora", "bitfit"]
    assert set(curves["method"]) == {"lora", "bitfit"} and len(curves) == 4
    assert sorted(share["method"]) == ["bitfit", "lora"]
    assert list(share["trainable %"]) == [r["percent"] for r in st["rows"] if r["method"] in list(share["method"])]
    assert again[6].active is False and again[7].interactive is True
    assert CompareTab(tmp_path).on_load(BOB)[0] == ""


def test_a_comparison_is_refused_with_a_message_and_can_be_stopped(tiny_dir, tmp_path):
    tab = CompareTab(tmp_path)
    out = tab.on_start([], "capitals-json", None, 2, "", ALICE)
    assert out[0] == "" and "pick at least one method" in out[1]
    out = tab.on_start(["no-such-method"], "capitals-json", None, 2, "", ALICE)
    assert out[0] == "" and "no-such-method" in out[1]
    assert not list(tmp_path.glob("compare-*"))  # nothing started, nothing left behind

    folder = compare.start_background(tmp_path, ["lora", "bitfit"], steps=200, base=str(tiny_dir), owner=ALICE)
    try:
        assert "another session" in tab.on_stop(str(folder), BOB)[1]  # not bob's to stop
        assert compare.background_status(folder)["running"]
        out = tab.on_stop(str(folder), ALICE)
    finally:
        compare.stop_background(folder)  # (the API may stop any)
    st = compare.background_status(folder)
    assert not st["running"] and "finished" in status_text(st)
    assert {r["method"] for r in st["rows"]} == {"lora", "bitfit"}
    assert all("error" in r for r in st["rows"])  # stopped before any method finished: each row says so
