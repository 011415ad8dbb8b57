"""The web app's Hub tab without a browser: its handlers against the local Hub server (tests/hub_server.py), with the
real ``huggingface_hub`` client, on a tiny llama whose base model lives on that server as ``alice/tiny-llama``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import gradio as gr
import gradio.routes
import pytest

from peftlab.webui import build_app, hub_tab
from peftlab.webui.adapters import adapter_choices, locate
from peftlab.webui.hub_tab import LOGIN_LOCAL, HubTab, card_markdown, when
from tests.hub_fixture import BASE, serve_base, train_tiny
from tests.hub_server import READ_TOKEN, WRITE_TOKEN

pytest_plugins = ["tests.hub_fixture"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_dir) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    train_tiny(runs / "20250101-000000-lora", tiny_dir)
    return runs


@pytest.fixture
def online(hub_env, tiny_dir, tmp_path, monkeypatch):
    """The Hub server with the tiny base on it, a fresh local store, and no token but the one typed in the tab."""
    serve_base(hub_env, tiny_dir)
    monkeypatch.setenv("PEFTLAB_STORE", str(tmp_path / "store"))
    monkeypatch.delenv("HF_TOKEN")
    return hub_env


@pytest.fixture
def tab(runs) -> HubTab:
    return HubTab(runs)


def adapter_of(runs: Path) -> str:
    return str(runs / "20250101-000000-lora" / "adapter")


def texts(value) -> list[str]:
    """Every string a handler returned (also inside gradio updates and data frames)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in texts(v)]
    if hasattr(value, "to_csv"):
        return [value.to_csv()]
    if isinstance(value, gr.components.Component):
        return [json.dumps(value.get_config(), default=str)]
    return [repr(value)]


def test_push_search_pull_and_open_in_chat(online, tab, runs, tmp_path):
    returned = []
    account = tab.on_check(WRITE_TOKEN)
    returned.append(account)
    assert account.startswith("Logged in as **alice** (write)") and "token from this box" in account
    assert "(read)" in tab.on_check(READ_TOKEN)

    adapter = adapter_of(runs)
    assert adapter in [v for _, v in tab.choices()]
    card, curve = tab.on_preview(adapter, "alice/web-lora")
    returned += [card]
    assert card.startswith("**README.md** header:\n\n```yaml\n") and "library_name: peft" in card
    assert f"base_model:adapter:{BASE}" in card and "alice/web-lora" in card
    assert curve.visible and curve.value is not None  # the loss-curve PNG the card links

    status = tab.on_push(adapter, "alice/web-lora", "", False, "from the app", WRITE_TOKEN)
    returned.append(status)
    repo = online.repo("alice/web-lora")
    sha = repo.branches["main"]
    assert status.startswith("Pushed to [alice/web-lora]") and f"commit `{sha}`" in status
    assert repo.commits[sha].title == "from the app"
    assert "README.md" in online.files("alice/web-lora")

    said, frame = tab.on_search(BASE, "any", "", "")  # search needs no token for public repos
    returned += [said, frame]
    assert said.startswith("1 adapter of") and list(frame["repo"]) == ["alice/web-lora"]
    assert list(frame["method"]) == ["lora"] and frame["last change"][0]
    assert len(tab.on_search(BASE, "prompt_tuning", "", "")[1]) == 0
    assert len(tab.on_search(BASE, "any", "nothing-like-it", WRITE_TOKEN)[1]) == 0

    status, report, pulled, button = tab.on_pull("alice/web-lora", WRITE_TOKEN)
    returned += [status, report, pulled, button]
    store = Path(os.environ["PEFTLAB_STORE"])
    assert pulled == str(store / "alice--web-lora") and f"commit `{sha}`" in status
    assert "adapter doctor" in report and "OK:" in report and button.interactive
    assert json.loads((store / "alice--web-lora" / "provenance.json").read_text())["sha"] == sha

    chat_values = [v for _, v in adapter_choices(runs)]  # what the chat picker lists: runs, then the store
    assert chat_values == [adapter, pulled]
    dropdown, typed_path, tabs = tab.on_open(pulled)
    returned += [dropdown, typed_path, tabs]
    assert dropdown.value == pulled and pulled in [v for _, v in dropdown.choices]
    assert typed_path == "" and tabs.selected == "chat"
    assert locate("alice--web-lora") == pulled  # a store name typed in the chat tab
    assert Path(locate("alice/web-lora")).is_dir()  # a Hub id too (through the Hub cache)

    # the token is in no returned value, no file the tab wrote, and nothing pushed
    assert not [t for t in texts(returned) if WRITE_TOKEN in t]
    for root in (tmp_path, Path(os.environ["HF_HOME"]), runs):
        for f in root.rglob("*"):
            if f.is_file():
                assert WRITE_TOKEN.encode() not in f.read_bytes(), f"the token was written to {f}"
    for repo in online.repos.values():
        for commit in repo.commits.values():
            assert all(WRITE_TOKEN.encode() not in data for data in commit.files.values())


def test_a_push_without_a_token_or_with_a_read_only_one_says_how_to_log_in(online, tab, runs):
    adapter = adapter_of(runs)
    status = tab.on_push(adapter, "alice/nope", "", False, "", "")
    assert status.startswith("**Push failed:** pushing needs a Hugging Face token") and LOGIN_LOCAL in status
    status = tab.on_push(adapter, "alice/nope", "", False, "", READ_TOKEN)
    assert "read-only" in status and LOGIN_LOCAL in status and READ_TOKEN not in status
    assert ("model", "alice/nope") not in online.repos  # nothing was created
    account = tab.on_check("")
    assert account.startswith("**Not logged in:**") and LOGIN_LOCAL in account
    assert tab.on_check("hf_notarealtoken123").startswith("**Not logged in:** checking the login: the Hub refused")
    assert "notarealtoken" not in tab.on_check("hf_notarealtoken123")


def test_hub_errors_are_shown_not_raised(online, tab, runs):
    assert "invalid Hub repo id" in tab.on_push(adapter_of(runs), "no slash", "", False, "", WRITE_TOKEN)
    status, report, pulled, button = tab.on_pull("alice/missing", "")
    assert status.startswith("**Pull failed:**") and "not found" in status
    assert (report, pulled, button.interactive) == ("", "", False)
    assert "invalid Hub repo id" in tab.on_pull("", "")[0]
    assert tab.on_push(None, "alice/x", "", False, "", WRITE_TOKEN) == "Pick an adapter to push."
    assert tab.on_open("") == (gr.skip(), gr.skip(), gr.skip())
    assert "No card" in tab.on_preview(str(runs), "alice/x")[0]  # the runs folder holds no adapter


def test_the_app_has_a_hub_tab_with_a_password_box_or_a_login_button_in_a_space(runs, monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    ids = {b.elem_id: b for b in build_app(runs).blocks.values() if getattr(b, "elem_id", None)}
    token = ids["hub-token"]
    assert isinstance(token, gr.Textbox) and token.type == "password" and token.value == ""
    assert "hub-login" not in ids and "tab-hub" in ids
    monkeypatch.setenv("SPACE_ID", "alice/peftlab")
    monkeypatch.setattr(hub_tab, "find_spec", lambda name: object())  # as if gradio[oauth] were installed
    monkeypatch.setattr(gradio.routes, "attach_oauth", lambda app: None)  # its routes need it
    demo = build_app(runs)
    ids = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert isinstance(ids["hub-login"], gr.LoginButton) and "hub-token" not in ids and demo.peftlab_hub.space


def test_card_markdown_and_times():
    text = "---\nlibrary_name: peft\n---\n# x\n\n![loss curve](loss_curve.png)\n"
    shown = card_markdown(text)
    assert (
        shown.startswith("**README.md** header:\n\n```yaml\nlibrary_name: peft\n```")
        and "](loss_curve.png)" not in shown
    )
    assert when("2025-05-09T07:35:25.000Z") == "2025-05-09 07:35" and when(None) == ""
