"""Weight sweeps (``peftlab_hub.sweep``, ``peftlab compose --sweep``): each point is the mixture it names (the same
loss as the composition ``compose`` writes for those weights, loaded afresh), both ways of applying weights agree,
the JSON and the plot are written together, bad input is refused before anything is written."""

from __future__ import annotations

import json

import pytest
import torch

import peftlab
from peftlab.cli import main
from peftlab.data import encode_rows, load_rows
from peftlab.models import load_model
from peftlab.train import eval_loss
from peftlab_hub import compose
from peftlab_hub.compose import CompositionError
from peftlab_hub.sweep import Mixture, sweep

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def parents(tiny_dir, tmp_path_factory):
    """Two random LoRAs of different ranks and alphas (so a wrong scaling shows) and a small chat dataset."""
    root = tmp_path_factory.mktemp("sweep")
    folders = []
    for seed, cfg in ((1, {"r": 4, "lora_alpha": 8}), (2, {"r": 2, "lora_alpha": 16})):
        model, _ = load_model(tiny_dir)
        torch.manual_seed(seed)
        peftlab.add_adapter(model, "lora", {"init_lora_weights": False, **cfg})
        folders.append(peftlab.save_adapter(model, root / f"p{seed}"))
    rows = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(10)]
    data = root / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return folders, str(data)


def _loss(tiny_dir, folder, data) -> float:
    model, tok = load_model(tiny_dir)
    peftlab.load_adapter(model, folder)
    return eval_loss(model, encode_rows(load_rows(data), tok), tok.pad_token_id, 8)


def test_sweep_points_are_the_compositions_they_name_and_json_png_are_written(parents, tiny_dir, tmp_path):
    folders, data = parents
    out = tmp_path / "sweep"
    result = sweep(folders, data, grid=[0.0, 0.25, 1.0], split="all", max_new_tokens=3, output=out, quiet=True)
    saved = json.loads((out / "sweep.json").read_text())
    assert [p["w"] for p in saved["points"]] == [0.0, 0.25, 1.0]
    assert saved["points"] == result["points"] and saved["rows"] == 10
    assert all(p["exact_match"] is not None for p in saved["points"])
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # w=1 is the first parent alone, w=0 the second; w=0.25 is compose's cat merge of 0.25 and 0.75
    assert saved["points"][2]["eval_loss"] == pytest.approx(_loss(tiny_dir, folders[0], data), abs=1e-5)
    assert saved["points"][0]["eval_loss"] == pytest.approx(_loss(tiny_dir, folders[1], data), abs=1e-5)
    merged = compose(folders, [0.25, 0.75], "cat", output=tmp_path / "m")
    assert saved["points"][1]["eval_loss"] == pytest.approx(_loss(tiny_dir, merged, data), abs=1e-5)
    assert len({round(p["eval_loss"], 6) for p in saved["points"]}) == 3
    assert saved["best"]["eval_loss"] == min(p["eval_loss"] for p in saved["points"])


def test_scale_and_merge_modes_give_the_same_points(parents):
    folders, data = parents
    by_mode = {}
    for mode in ("scale", "merge"):
        mixture = Mixture(folders, prefer=mode)
        assert mixture.mode == mode
        result = sweep(folders, data, grid=[0.3, 0.9], split="all", exact=False, mixture=mixture, quiet=True)
        by_mode[mode] = [p["eval_loss"] for p in result["points"]]
    assert by_mode["scale"] == pytest.approx(by_mode["merge"], abs=1e-5)


def test_the_default_grid_and_progress_on_stderr(parents, capsys):
    folders, data = parents
    result = sweep(folders, data, split="all", exact=False)
    assert [p["w"] for p in result["points"]] == [i / 10 for i in range(11)]
    assert [p["weights"][1] for p in result["points"]] == pytest.approx([1 - i / 10 for i in range(11)])
    err = capsys.readouterr().err
    assert "sweep: 1/11 w=0: eval loss" in err and "sweep: 11/11 w=1:" in err


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"grid": [0.5, float("nan")]}, "finite"),
        ({"grid": []}, "empty"),
        ({"grid": ["x"]}, "not a number"),
        ({"split": "test"}, "split"),
        ({"max_samples": 0}, "max_samples"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(parents, tmp_path, kwargs, match):
    folders, data = parents
    out = tmp_path / "out"
    with pytest.raises(CompositionError, match=match):
        sweep(folders, data, output=out, quiet=True, **kwargs)
    assert not out.exists()


def test_an_output_folder_of_other_files_is_refused_and_kept(parents, tmp_path):
    """The sweep's folder is written whole (atomic_dir): a folder of other files is refused, not emptied; a
    folder holding an earlier sweep is replaced."""
    from peftlab.errors import ConfigError

    folders, data = parents
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty and holds no sweep"):
        sweep(folders, data, output=mine, quiet=True, grid=[0.5], exact=False)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    out = tmp_path / "out"
    sweep(folders, data, output=out, quiet=True, grid=[0.5], exact=False)
    sweep(folders, data, output=out, quiet=True, grid=[0.0, 1.0], exact=False)
    assert [p["w"] for p in json.loads((out / "sweep.json").read_text())["points"]] == [0.0, 1.0]


def test_a_sweep_needs_two_parents(parents, tmp_path):
    folders, data = parents
    with pytest.raises(CompositionError, match="two parents, got 3"):
        sweep([*folders, folders[0]], data, output=tmp_path / "out")


def test_compose_sweep_cli(parents, tmp_path, capsys):
    folders, data = parents
    out = tmp_path / "cli"
    argv = ["compose", *map(str, folders), "--sweep", data, "--grid", "0", "1", "--output", str(out)]
    argv += ["--split", "all", "--no-exact-match"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "eval loss" in printed and "best (lowest eval loss)" in printed
    saved = json.loads((out / "sweep.json").read_text())
    assert [p["w"] for p in saved["points"]] == [0.0, 1.0] and "exact_match" not in saved["points"][0]
    bad = ["compose", *map(str, folders), "--sweep", data, "--weights", "1", "0", "--output", str(tmp_path / "x")]
    assert main(bad) == 2
    assert "drop --weights" in capsys.readouterr().err and not (tmp_path / "x").exists()
