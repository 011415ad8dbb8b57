"""Learned mixtures (``peftlab_hub.learn``, ``peftlab compose --learn``): both learners beat the uniform mixture, the
compositions they write are the mixtures they scored, bad input is refused before anything is written."""

from __future__ import annotations

import json

import pytest
import torch

import peftlab
from peftlab.cli import main
from peftlab.models import load_model
from peftlab_hub.compose import CompositionError
from peftlab_hub.learn import learn, learn_gradient
from peftlab_hub.sweep import Mixture

pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(n: int, offset: int = 0) -> list[dict]:
    return [{"prompt": f"say {i + offset}", "response": f"ok {i + offset} done"} for i in range(n)]


def _write_rows(path, rows) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def parents(tiny_dir, tmp_path_factory):
    """Parent ``good``: a LoRA trained a few steps on the task's rows (it lowers their loss); parent ``noise``: a
    random LoRA (it raises it). The uniform mixture carries half the noise, so better weights exist."""
    from peftlab.train import TrainArgs, train

    root = tmp_path_factory.mktemp("learn")
    data = _write_rows(root / "train.jsonl", _rows(24))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, tok = load_model(tiny_dir)
        torch.manual_seed(0)
        args = TrainArgs(
            base_model=str(tiny_dir),
            dataset=data,
            output_dir=str(root / "good-run"),
            max_steps=12,
            batch_size=8,
            learning_rate=2e-2,
            save_every=0,
            save_minutes=0,
            method_config={"r": 4, "lora_alpha": 8},
        )
        good = train(args, model=model, tokenizer=tok).output_dir
        model, _ = load_model(tiny_dir)
        torch.manual_seed(7)
        peftlab.add_adapter(model, "lora", {"r": 4, "lora_alpha": 32, "init_lora_weights": False})
        noise = peftlab.save_adapter(model, root / "noise")
    finally:
        torch.set_num_threads(threads)
    return {"good": good, "noise": noise, "root": root, "data": _write_rows(root / "few.jsonl", _rows(10, 30))}


def _loss_of(tiny_dir, folder, data) -> float:
    """The eval loss of an adapter folder loaded on a fresh base, on all rows of ``data``."""
    from peftlab.data import encode_rows, load_rows
    from peftlab.train import eval_loss

    model, tok = load_model(tiny_dir)
    peftlab.load_adapter(model, folder)
    return eval_loss(model, encode_rows(load_rows(data), tok), tok.pad_token_id, 8)


def test_both_learners_beat_the_uniform_mixture_and_write_what_they_scored(parents, tiny_dir, tmp_path):
    out = tmp_path / "learned"
    result = learn(
        [parents["good"], parents["noise"]],
        parents["data"],
        output=out,
        budget=12,
        steps=12,
        lr=0.1,
        objective="token",  # core's eval loss: what _loss_of measures on the written composition
        quiet=True,
    )
    uniform = result["uniform"]["loss"]
    saved = json.loads((out / "learn.json").read_text())
    assert saved["uniform"]["loss"] == pytest.approx(uniform)
    for name in ("nevergrad", "gradient"):
        r = result["learned"][name]
        assert r["loss"] < uniform - 0.05, (name, r["loss"], uniform)
        lo, hi = result["settings"]["bounds"]
        assert all(lo <= w <= hi for w in r["weights"])
        assert abs(r["weights"][1]) < abs(r["weights"][0])  # the noise parent is turned down
        assert len(saved["learned"][name]["trace"]) == 12  # one entry per evaluation / step
        # the composition written is the mixture that was scored: cat merges Σ wᵢ ΔWᵢ exactly
        meta = json.loads((out / name / "peftlab.json").read_text())["composition"]
        assert meta["weights"] == pytest.approx(r["weights"])
        assert _loss_of(tiny_dir, out / name, parents["data"]) == pytest.approx(r["loss"], abs=1e-4)
    ng_trace = saved["learned"]["nevergrad"]["trace"]
    assert ng_trace[0]["weights"] == pytest.approx([0.5, 0.5])  # it starts at the uniform mixture
    assert saved["learned"]["nevergrad"]["objective"] == pytest.approx(min(t["objective"] for t in ng_trace))


def test_learned_weights_as_a_stack_recipe_reload_to_the_scored_mixture(parents, tiny_dir, tmp_path):
    out = tmp_path / "recipe"
    result = learn(
        [parents["good"], parents["noise"]],
        parents["data"],
        output=out,
        learners=["nevergrad"],
        combination="stack",
        budget=4,
        objective="token",
        quiet=True,
    )
    r = result["learned"]["nevergrad"]
    recipe = json.loads((out / "nevergrad" / "composition.json").read_text())
    assert recipe["weights"] == pytest.approx(r["weights"])
    assert _loss_of(tiny_dir, out / "nevergrad", parents["data"]) == pytest.approx(r["loss"], abs=1e-4)


def test_the_gradient_learner_moves_only_the_mixing_scalars(parents, tiny_dir):
    mixture = Mixture([parents["good"], parents["noise"]])
    assert mixture.mode == "scale"
    before = {k: v.clone() for k, v in mixture.model.state_dict().items()}
    from peftlab.data import load_rows

    items = mixture.encode(load_rows(parents["data"]))
    r = learn_gradient(mixture, items, steps=3, lr=0.2, quiet=True)
    assert r.weights != [0.5, 0.5]
    after = mixture.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # base and adapters untouched
    assert not any(p.requires_grad for p in mixture.model.parameters())


def _uneven_rows() -> list[dict]:
    """Rows whose replies differ a lot in length: the row and token objectives then weigh them differently."""
    return [{"prompt": f"say {i}", "response": " ".join(["ok"] * (1 + 6 * (i % 3))) + " done"} for i in range(6)]


def _per_row_mean(mixture: Mixture, items: list[dict]) -> float:
    """The row objective computed independently: each row alone through core's token-weighted ``eval_loss`` (one
    row: its own mean token loss), then the plain mean over rows."""
    from peftlab.train import eval_loss

    return sum(eval_loss(mixture.model, [it], mixture.pad_id, 1) for it in items) / len(items)


def test_the_row_objective_is_the_mean_of_per_row_losses_and_the_learners_use_it(parents, tmp_path):
    from peftlab.train import eval_loss

    mixture = Mixture([parents["good"], parents["noise"]])
    items = mixture.encode(_uneven_rows())
    assert len({len(it["input_ids"]) for it in items}) == 3
    mixture.apply([0.5, 0.5])
    row = _per_row_mean(mixture, items)
    token = eval_loss(mixture.model, items, mixture.pad_id, 8)
    assert mixture.loss(items, 4, "row") == pytest.approx(row, abs=1e-5)
    assert mixture.loss(items, 4, "token") == pytest.approx(token, abs=1e-5)
    assert mixture.loss(items, 4) == pytest.approx(token, abs=1e-5)  # Mixture.loss's default stays core's
    assert abs(row - token) > 1e-3  # uneven lengths: the two objectives differ
    with pytest.raises(CompositionError, match="objective"):
        mixture.loss(items, 4, "rows")

    # the gradient learner: one batch holds every row, so step 1's loss (at the uniform start) is the objective
    for objective, expected in (("row", row), ("token", token)):
        r = learn_gradient(mixture, items, steps=1, lr=0.1, batch_size=8, objective=objective, quiet=True)
        assert r.trace[0]["batch_loss"] == pytest.approx(expected, abs=1e-5), objective
        mixture.apply(r.weights)
        assert r.loss == pytest.approx(mixture.loss(items, 8, objective), abs=1e-5)

    # nevergrad and learn() itself: the uniform mixture's loss is the independent per-row mean
    data = _write_rows(tmp_path / "uneven.jsonl", _uneven_rows())
    result = learn(
        [parents["good"], parents["noise"]], data, learners=["nevergrad"], budget=2, objective="row", quiet=True
    )
    assert result["settings"]["objective"] == "row"
    assert result["uniform"]["loss"] == pytest.approx(row, abs=1e-5)
    first = result["learned"]["nevergrad"]["trace"][0]
    assert first["weights"] == pytest.approx([0.5, 0.5]) and first["loss"] == pytest.approx(row, abs=1e-5)
    result = learn(
        [parents["good"], parents["noise"]], data, learners=["nevergrad"], budget=1, objective="token", quiet=True
    )
    assert result["uniform"]["loss"] == pytest.approx(token, abs=1e-5)
    with pytest.raises(CompositionError, match="objective"):
        learn([parents["good"], parents["noise"]], data, objective="mean", quiet=True)


def test_the_gradient_learner_needs_scalable_parents(parents):
    mixture = Mixture([parents["good"], parents["noise"]], prefer="merge")
    with pytest.raises(CompositionError, match="scalable"):
        learn_gradient(mixture, [], steps=1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"learners": ["adam"]}, "adam"),
        ({"bounds": (1.0, -1.0)}, "lower bound"),
        ({"bounds": (float("nan"), 1.0)}, "finite"),
        ({"init": [0.5]}, "one weight per parent"),
        ({"l1": -1.0}, "l1"),
        ({"max_samples": 0}, "max_samples"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(parents, tmp_path, kwargs, match):
    out = tmp_path / "out"
    with pytest.raises(CompositionError, match=match):
        learn([parents["good"], parents["noise"]], parents["data"], output=out, quiet=True, **kwargs)
    assert not out.exists()


def test_an_output_folder_of_other_files_is_refused_and_kept(parents, tmp_path):
    from peftlab.errors import ConfigError

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty and holds no learned mixture"):
        learn([parents["good"], parents["noise"]], parents["data"], output=mine, quiet=True)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_one_parent_is_refused(parents, tmp_path):
    with pytest.raises(CompositionError, match="at least two parents"):
        learn([parents["good"]], parents["data"], output=tmp_path / "out", quiet=True)


def test_compose_learn_cli(parents, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["compose", str(parents["good"]), str(parents["noise"]), "--learn", parents["data"]]
    argv += ["--output", str(out), "--learner", "nevergrad", "--budget", "6", "--weights", "1", "0", "--json"]
    argv += ["--objective", "token"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert list(printed["learned"]) == ["nevergrad"]
    assert printed["settings"]["init"] == [1.0, 0.0]  # --weights is the starting point
    assert printed["settings"]["objective"] == "token"
    assert printed["learned"]["nevergrad"]["trace"][0]["weights"] == [1.0, 0.0]
    assert (out / "learn.json").is_file() and (out / "nevergrad" / "adapter_model.safetensors").is_file()
    assert not (out / "gradient").exists()


@pytest.mark.smollm2
def test_learners_lower_the_loss_vs_uniform_on_smollm2(smollm2_dir, tmp_path):
    """SmolLM2 with two r=8 LoRAs: one trained a few steps on iso-dates, one random. On 8 held-out rows both learners
    end below the uniform mixture (a small budget: 8 evaluations, 6 steps)."""
    from peftlab.data import load_rows, split_rows
    from peftlab.train import TrainArgs, train

    model, tok = load_model(smollm2_dir)
    args = TrainArgs(
        dataset="iso-dates",
        output_dir=str(tmp_path / "dates"),
        max_steps=3,
        batch_size=4,
        max_length=64,
        max_eval_samples=4,
        save_every=0,
        save_minutes=0,
        method_config={"r": 8, "lora_alpha": 16},
    )
    good = train(args, model=model, tokenizer=tok).output_dir
    model, _ = load_model(smollm2_dir)
    torch.manual_seed(3)
    peftlab.add_adapter(model, "lora", {"r": 8, "lora_alpha": 16, "init_lora_weights": False})
    noise = peftlab.save_adapter(model, tmp_path / "noise")
    del model
    rows = split_rows(load_rows("iso-dates"), 0.1, 0)[1][:8]
    data = _write_rows(tmp_path / "few.jsonl", rows)
    result = learn([good, noise], data, budget=8, steps=6, lr=0.1, max_length=64, quiet=True)
    uniform = result["uniform"]["loss"]
    for name, r in result["learned"].items():
        assert r["loss"] < uniform, (name, r, uniform)


def _greedy_item(mixture: Mixture, prompt: list[int], k: int) -> dict:
    """``prompt`` followed by the model's own ``k`` greedy tokens (an independent loop: one token at a time, the
    top logit), the continuation labelled: greedy decoding reproduces that reply exactly."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(k):
            ids.append(int(mixture.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return {"input_ids": ids, "labels": [-100] * len(prompt) + ids[len(prompt) :]}


def test_row_stats_match_is_greedy_exact_match_and_worst_is_the_hardest_token(parents):
    import torch.nn.functional as F

    from peftlab.data import collate

    mixture = Mixture([parents["good"], parents["noise"]])
    mixture.apply([0.7, 0.3])
    vocab = mixture.model.config.vocab_size
    exact = [_greedy_item(mixture, [5 + i, 40 + 3 * i, 77], 4 + i) for i in range(3)]
    wrong_last = {"input_ids": list(exact[0]["input_ids"]), "labels": list(exact[0]["labels"])}
    wrong_last["input_ids"][-1] = wrong_last["labels"][-1] = (exact[0]["labels"][-1] + 1) % vocab
    wrong_mid = {"input_ids": list(exact[1]["input_ids"]), "labels": list(exact[1]["labels"])}
    wrong_mid["input_ids"][4] = wrong_mid["labels"][4] = (exact[1]["labels"][4] + 1) % vocab
    items = [*exact, wrong_last, wrong_mid]
    s = mixture.scores(items, batch_size=2)  # rows of several lengths padded together
    assert s["hits"] == [True, True, True, False, False]
    assert s["match"] == pytest.approx(3 / 5)
    with torch.no_grad():  # the worst token's loss, row by row on its own
        for it, worst, row in zip(items, s["worst_losses"], s["row_losses"], strict=True):
            logits = mixture.model(input_ids=torch.tensor([it["input_ids"]])).logits[0, :-1]
            tok = F.cross_entropy(logits, torch.tensor(it["labels"][1:]), ignore_index=-100, reduction="none")
            lab = torch.tensor(it["labels"][1:]) != -100
            assert worst == pytest.approx(float(tok[lab].max()), abs=1e-5)
            assert row == pytest.approx(float(tok[lab].mean()), abs=1e-5)
    assert s["worst"] == pytest.approx(sum(s["worst_losses"]) / 5) and s["worst"] > s["row"]
    assert mixture.loss(items, 2, "worst") == pytest.approx(s["worst"], abs=1e-6)
    stats = mixture.row_stats(collate(items[:2], mixture.pad_id))
    assert stats["worst"].shape == (2,) and stats["tokens"].tolist() == [4, 5]


def test_the_worst_and_match_objectives_drive_both_learners(parents, tmp_path):
    mixture = Mixture([parents["good"], parents["noise"]])
    items = mixture.encode(_uneven_rows())
    mixture.apply([0.5, 0.5])
    s = mixture.scores(items, 8)
    r = learn_gradient(mixture, items, steps=1, lr=0.1, batch_size=8, quiet=True)  # the default objective: match
    assert r.trace[0]["batch_loss"] == pytest.approx(s["worst"], abs=1e-5)
    mixture.apply(r.weights)
    after = mixture.scores(items, 8)
    assert r.loss == pytest.approx(1 - after["match"] + after["worst"], abs=1e-6)
    mixture.apply([0.5, 0.5])
    for objective in ("worst", "match"):  # the gradient learner descends on the worst-token loss for both
        r = learn_gradient(mixture, items, steps=1, lr=0.1, batch_size=8, objective=objective, quiet=True)
        assert r.trace[0]["batch_loss"] == pytest.approx(s["worst"], abs=1e-5), objective
        mixture.apply(r.weights)
        after = mixture.scores(items, 8)
        expected = after["worst"] + (1 - after["match"] if objective == "match" else 0.0)
        assert r.loss == pytest.approx(expected, abs=1e-6) and r.match == after["match"]
        mixture.apply([0.5, 0.5])

    data = _write_rows(tmp_path / "uneven.jsonl", _uneven_rows())
    result = learn([parents["good"], parents["noise"]], data, learners=["nevergrad"], budget=3, quiet=True)
    assert result["settings"]["objective"] == "match"  # the default
    assert result["uniform"]["loss"] == pytest.approx(1 - s["match"] + s["worst"], abs=1e-5)
    assert result["uniform"]["match"] == s["match"]
    first = result["learned"]["nevergrad"]["trace"][0]
    assert first["weights"] == pytest.approx([0.5, 0.5]) and first["match"] == s["match"]
    assert first["objective"] == pytest.approx(first["loss"] + 0.05 * 1.0, abs=1e-6)  # + l1 · Σ|w|
    best = result["learned"]["nevergrad"]
    assert best["match"] == min(result["learned"]["nevergrad"]["trace"], key=lambda t: t["objective"])["match"]
    with pytest.raises(CompositionError, match="objective"):
        learn_gradient(mixture, items, steps=1, objective="exact")


def test_compose_learn_cli_takes_the_exact_match_objectives(parents, tmp_path, capsys):
    out = tmp_path / "cli-match"
    argv = ["compose", str(parents["good"]), str(parents["noise"]), "--learn", parents["data"], "--output", str(out)]
    assert main([*argv, "--learner", "gradient", "--steps", "2", "--json"]) == 0  # --objective match: the default
    printed = json.loads(capsys.readouterr().out)
    assert printed["settings"]["objective"] == "match"
    assert 0.0 <= printed["learned"]["gradient"]["match"] <= 1.0
    assert json.loads((out / "learn.json").read_text())["settings"]["objective"] == "match"
    with pytest.raises(SystemExit):
        main(["compose", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for objective in ("row:", "token:", "worst:", "match:"):
        assert objective in help_text, objective
    with pytest.raises(SystemExit):
        main([*argv, "--objective", "exact"])
    assert "invalid choice" in capsys.readouterr().err


def test_match_grades_the_last_reply_only_as_core_exact_match_does(parents):
    """A multi-turn row's earlier assistant turns are labelled (they count in the loss) but core's exact match
    grades the last reply only: ``Mixture.encode`` marks that reply (up to its end-of-turn token) as the span a hit
    is read on; a reply cut by ``max_length`` before its end cannot be a hit."""
    from peftlab.generate import prompt_ids

    mixture = Mixture([parents["good"], parents["noise"]])
    mixture.apply([0.7, 0.3])
    item = _greedy_item(mixture, [5, 40, 77, 9], 4)  # the model's own reply after a 4-token prompt
    earlier = dict(item, labels=list(item["labels"]))
    earlier["labels"][2] = (item["input_ids"][2] + 1) % mixture.model.config.vocab_size  # a wrong earlier turn
    plain = mixture.scores([earlier])
    spanned = mixture.scores([{**earlier, "reply_span": (4, 8)}, {**earlier, "reply_span": None}])
    assert plain["hits"] == [False] and spanned["hits"] == [True, False]

    turns = [{"role": "user", "content": "say 1"}, {"role": "assistant", "content": "ok 1 done"}]
    turns += [{"role": "user", "content": "say 2"}, {"role": "assistant", "content": "ok 2 done"}]
    start = len(prompt_ids(mixture.tokenizer, turns[:-1]))
    full, cut = mixture.encode([{"messages": turns}]), mixture.encode([{"messages": turns}], max_length=start + 2)
    assert full[0]["reply_span"][0] == start and full[0]["input_ids"][full[0]["reply_span"][1] - 1] == 2  # im_end
    assert sum(x != -100 for x in full[0]["labels"]) > full[0]["reply_span"][1] - start  # both turns labelled
    assert cut[0]["reply_span"] is None


def test_a_dropped_row_leaves_the_others_graded_and_no_gradable_reply_is_said(parents, caplog):
    """A row with no reply token within ``max_length`` is dropped; the others keep their reply spans (they line up
    with their own rows, not shifted). When no row's reply can be graded, a warning says exact match is 0."""
    mixture = Mixture([parents["good"], parents["noise"]])
    rows = _rows(3)
    long = {"prompt": "say " + "x " * 200, "response": "ok"}  # its prompt fills max_length: no reply token left
    alone = mixture.encode(rows, max_length=64)
    mixed = mixture.encode([rows[0], long, rows[1], rows[2]], max_length=64)
    assert len(mixed) == 3 and all(item["reply_span"] for item in alone)
    assert [item["reply_span"] for item in mixed] == [item["reply_span"] for item in alone]
    assert [item["input_ids"] for item in mixed] == [item["input_ids"] for item in alone]

    caplog.clear()
    with caplog.at_level("WARNING", logger="peftlab_hub.sweep"):
        cut = mixture.encode(rows, max_length=alone[0]["reply_span"][1] - 1)  # every reply cut before its end
    assert all(item["reply_span"] is None for item in cut)
    assert any("no row's reply can be graded for exact match" in r.getMessage() for r in caplog.records)
