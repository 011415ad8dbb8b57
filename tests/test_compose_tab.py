"""The Compose tab's handlers (peftlab.webui.compose_tab): save a weighted merge, sweep two parents, chat with the
parents and the composition side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("gradio")
pytest.importorskip("peftlab_hub")

from peftlab.errors import PeftlabError  # noqa: E402
from peftlab.generate import generate_batch  # noqa: E402
from peftlab.io import load_adapter, read_adapter  # noqa: E402
from peftlab.models import load_model  # noqa: E402
from peftlab.train import TrainArgs, train  # noqa: E402
from peftlab.webui.compose_tab import ComposeTab, combination_types, parse_weights  # noqa: E402

ALICE = "a" * 32  # a browser owner id of the form the server issues


@pytest.fixture(scope="module")
def parents(tmp_path_factory, tiny_dir) -> tuple[Path, list[str]]:
    """A runs folder with two LoRA runs on the tiny base (different seeds and datasets)."""
    root = tmp_path_factory.mktemp("compose-runs")
    for name, dataset, seed in (("caps", "capitals-json", 0), ("dates", "iso-dates", 1)):
        train(
            TrainArgs(
                method="lora",
                base_model=str(tiny_dir),
                dataset=dataset,
                output_dir=str(root / name),
                max_steps=2,
                batch_size=2,
                max_length=48,
                max_eval_samples=4,
                learning_rate=2e-2,
                seed=seed,
                device="cpu",
            )
        )
    return root, [str(root / "caps" / "adapter"), str(root / "dates" / "adapter")]


def test_weights_are_parsed_or_refused_with_a_reason():
    assert parse_weights("0.7, 0.3", 2) == [0.7, 0.3] and parse_weights("  ", 3) is None
    with pytest.raises(PeftlabError, match="1 weight.s. for 2 parent"):
        parse_weights("1", 2)
    with pytest.raises(PeftlabError, match="numbers"):
        parse_weights("a, b", 2)
    with pytest.raises(PeftlabError, match="finite"):
        parse_weights("nan, 1", 2)
    kinds = combination_types()
    assert {"cat", "svd", "linear", "ties"} <= set(kinds)


def test_save_writes_a_loadable_merge_under_the_runs_folder(parents):
    root, folders = parents
    tab = ComposeTab(root)
    status, folder = tab.on_save(folders, "", "0.5, 0.5", "cat", None, None, "mix", browser=ALICE, progress=None)
    assert status.startswith("Saved **mix**") and folder == str(root / "mix" / "adapter")
    files = read_adapter(folder)
    meta = json.loads((Path(folder) / "peftlab.json").read_text())
    assert files.method.name == "lora" and meta["composition"]["weights"] == [0.5, 0.5]
    assert str(root / "mix" / "adapter") in {v for _, v in tab.choices()}  # every picker offers it now
    status, folder = tab.on_save(folders, "", "0.5, 0.5", "cat", None, None, "mix", browser=ALICE, progress=None)
    assert "already exists" in status and folder == ""  # nothing overwritten
    status, _ = tab.on_save(folders, "", "1", "cat", None, None, "other", browser=ALICE, progress=None)
    assert "1 weight(s) for 2 parent(s)" in status and not (root / "other").exists()


def test_sweep_draws_loss_against_the_weight(parents):
    root, folders = parents
    status, png, table = ComposeTab(root).on_sweep(folders, "", "capitals-json", 3, progress=None)
    assert status.startswith("Best weight w = "), status
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(table["w"]) == [0.0, 0.5, 1.0] and table["eval loss"].notna().all()
    status, png, table = ComposeTab(root).on_sweep(folders[:1], "", "capitals-json", 3, progress=None)
    assert "exactly two parents" in status and png is None


def test_chat_answers_from_each_parent_the_composition_and_the_base_in_one_pass(parents, tiny_dir):
    root, folders = parents
    tab = ComposeTab(root)
    _, composed = tab.on_save(folders, "", "", "cat", None, None, "chat-mix", browser=ALICE, progress=None)
    frame, status = tab.on_chat(folders, "", composed, "What is the capital of France?", max_new_tokens=6)
    assert status == "Replies in one batched pass."
    assert list(frame["model"]) == ["caps", "dates", "composition: chat-mix", "base"]
    # each reply is what that adapter alone generates
    model, tok = load_model(str(tiny_dir), device="cpu")
    for folder, reply in zip([*folders, composed], list(frame["reply"])[:3], strict=True):
        name = load_adapter(model, folder, Path(folder).parent.name)
        alone = generate_batch(model, tok, ["What is the capital of France?"], max_new_tokens=6, rows=[name])
        assert alone == [reply]
    assert generate_batch(model, tok, ["What is the capital of France?"], max_new_tokens=6, rows=[None]) == [
        frame["reply"].iloc[3]
    ]
    assert tab.on_chat(folders, "", "", "  ", max_new_tokens=6) == (None, "Type a message first.")


def test_save_never_writes_into_another_runs_folder_and_belongs_to_its_page(parents, monkeypatch):
    """A name taken by another run (here a queued job's, without an adapter yet) is refused; a saved composition is
    a run of the page that saved it, offered to that page only while sessions are kept apart."""
    from peftlab import jobs
    from peftlab.webui.adapters import adapter_choices, viewer

    monkeypatch.delenv("PEFTLAB_SHARE_JOBS", raising=False)
    root, folders = parents
    tab = ComposeTab(root)
    taken = root / "queued-run"
    taken.mkdir()
    jobs.Job(taken, 0, [], "lora", jobs.QUEUED, owner="b" * 32, queued=1.0).save()
    status, folder = tab.on_save(folders, "", "", "cat", None, None, "queued-run", browser=ALICE, progress=None)
    assert "already exists" in status and folder == "" and not (taken / "adapter").exists()
    assert jobs.Job.load(taken).status == jobs.QUEUED

    status, folder = tab.on_save(folders, "", "", "cat", None, None, "alices-mix", browser=ALICE, progress=None)
    assert status.startswith("Saved **alices-mix**")
    saved = jobs.Job.load(root / "alices-mix")
    assert saved.owner == ALICE and saved.status == "done" and saved.method == "lora"
    assert folder in {v for _, v in adapter_choices(root, owners=viewer(ALICE))}
    assert folder not in {v for _, v in adapter_choices(root, owners=viewer("b" * 32))}
