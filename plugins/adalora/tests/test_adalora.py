"""AdaLoRA: the contract kit, exact parity with peft's AdaLoRA (training and disk), the shrinking budget."""

from __future__ import annotations

import json

import pytest
import torch

import peftlab
from peftlab import adapters as ad
from peftlab.models import tiny_model
from peftlab.testing import check_method, check_peft_roundtrip, logits, random_ids, train_briefly
from peftlab_adalora import AdaLoraLayer, svd_layers

peft = pytest.importorskip("peft")

ADAPTED = 4  # tiny llama: 2 layers × (q_proj, v_proj)


def _ids(seed: int = 0, batch: int = 4, length: int = 12) -> torch.Tensor:
    return random_ids(batch, length, seed)


def _method():
    return peftlab.get_method("adalora").obj


def _train_peftlab(
    model,
    steps: int,
    lr: float = 1e-2,
    ids=None,
    optimizer=torch.optim.AdamW,
    start: int = 1,
    total: int | None = None,
    name: str = "default",
) -> list[float]:
    """The trainer's loop: task loss + extra_loss → backward → step → on_train_step → zero_grad."""
    ids = _ids() if ids is None else ids
    params = ad.prepare_for_training(model, name)
    opt = optimizer(list(params.values()), lr=lr)
    model.train()
    losses = []
    for step in range(start, start + steps):
        loss = model(input_ids=ids, labels=ids).loss + ad.extra_loss(model, name)
        loss.backward()
        opt.step()
        ad.on_train_step(model, name, step, total or steps)
        opt.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


def _live_ranks(model, name: str = "default") -> dict[str, int]:
    """Triplets still acting per layer (λ ≠ 0)."""
    return {p: int((layer.lora_E[name] != 0).sum()) for p, layer in svd_layers(model, name).items()}


# --- the contract -------------------------------------------------------------------------------------------


def test_check_method_llama(tmp_path):
    report = check_method("adalora", {"init_r": 4, "target_r": 2}, tmp_path=tmp_path)
    assert report["merge_max_diff"] <= 1e-4 and report["generate"] == "ok"


def test_check_method_gpt2_conv1d(tmp_path):
    # attention alone learns slowly on the tiny random GPT-2; every Conv1D layer clears the kit's bar
    check_method(
        "adalora", {"init_r": 4, "target_r": 2, "target_modules": "all-linear"}, arch="gpt2", tmp_path=tmp_path
    )


def test_check_method_bert_seq_cls(tmp_path):
    check_method("adalora", {"init_r": 4, "target_r": 2}, arch="bert", task="SEQ_CLS", tmp_path=tmp_path)


# --- the rank budget, driven the way the trainer drives it --------------------------------------------------


def test_budget_shrinks_to_target_and_saved_pattern_reflects_it(tmp_path):
    model = tiny_model("llama")
    cfg = ad.add_adapter(model, "adalora", {"init_r": 6, "target_r": 2, "tinit": 2, "tfinal": 3})
    assert cfg.total_step is None  # taken from the trainer's total_steps
    ids, budgets = _ids(), []
    params = ad.prepare_for_training(model)
    opt = torch.optim.AdamW(list(params.values()), lr=1e-2)
    model.train()
    for step in range(1, 16):
        loss = model(input_ids=ids, labels=ids).loss + ad.extra_loss(model, "default")
        loss.backward()
        opt.step()
        ad.on_train_step(model, "default", step, 15)
        opt.zero_grad()
        budgets.append(sum(_live_ranks(model).values()))
    assert cfg.total_step == 15  # recorded, so the saved config is loadable by peft
    assert budgets[1] == 6 * ADAPTED  # warm-up (tinit=2): nothing pruned
    assert budgets[-1] == 2 * ADAPTED  # the target budget: target_r × layers
    mid = budgets[2:12]
    assert all(a >= b for a, b in zip(mid, mid[1:])) and mid[0] > mid[-1], budgets  # the cubic schedule falls
    ranks = _live_ranks(model)

    folder = peftlab.save_adapter(model, tmp_path / "ada")
    saved = json.loads((folder / "adapter_config.json").read_text())
    pattern = saved["rank_pattern"]
    assert {k.removesuffix(".lora_E") for k in pattern} == set(ranks)
    assert {k.removesuffix(".lora_E"): sum(v) for k, v in pattern.items()} == ranks
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "adapter_model.safetensors"))
    for path, r in ranks.items():  # peft's format: only the kept triplets are stored
        assert tensors[f"base_model.model.{path}.lora_E"].shape == (r, 1)
        assert tensors[f"base_model.model.{path}.lora_A"].shape[0] == r
        assert tensors[f"base_model.model.{path}.lora_B"].shape[1] == r


def test_training_matches_peft_step_for_step():
    """Same start, same data, same optimizer: peft's AdaLoRA and ours give the same losses and rank pattern."""
    kw = dict(init_r=6, target_r=2, total_step=16, tinit=2, tfinal=4, deltaT=2)
    theirs = peft.get_peft_model(tiny_model("llama"), peft.AdaLoraConfig(task_type="CAUSAL_LM", **kw))
    ours = tiny_model("llama")
    cfg = ad.add_adapter(ours, "adalora", kw)
    state = {k.replace(".default", ""): v for k, v in theirs.state_dict().items() if ".lora_" in k}
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a non-trivial common start (peft's own init has Λ = 0)
        for key, live in _method().tensor_map(ours, cfg, "default").items():
            state[key].copy_(torch.randn(state[key].shape, generator=g) * 0.1)
            live.copy_(state[key])
    ids = _ids()
    opt = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=1e-2)
    theirs.train()
    peft_losses = []
    for step in range(1, 17):
        loss = theirs(input_ids=ids, labels=ids).loss  # peft adds the orthogonal penalty in forward
        loss.backward()
        opt.step()
        theirs.base_model.update_and_allocate(step)
        opt.zero_grad()
        peft_losses.append(loss.item())
    theirs.eval()
    our_losses = _train_peftlab(ours, 16, ids=ids)
    assert our_losses == pytest.approx(peft_losses, rel=1e-4, abs=1e-5)
    theirs_pattern = {k.replace(".default", ""): v for k, v in theirs.peft_config["default"].rank_pattern.items()}
    assert cfg.rank_pattern == theirs_pattern
    assert sum(map(sum, cfg.rank_pattern.values())) == 2 * ADAPTED
    assert (logits(theirs, ids) - logits(ours, ids)).abs().max().item() <= 1e-4


def test_orthogonal_penalty_is_the_extra_loss():
    model = tiny_model("llama")
    ad.add_adapter(model, "adalora", {"init_r": 4, "target_r": 2, "orth_reg_weight": 0.3})
    layer = next(iter(svd_layers(model, "default").values()))
    Q, P = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = torch.stack(
        [
            torch.linalg.norm(m - torch.eye(4))
            for lay in svd_layers(model, "default").values()
            for m in (
                lay.lora_A["default"].weight @ lay.lora_A["default"].weight.T,
                lay.lora_B["default"].weight.T @ lay.lora_B["default"].weight,
            )
        ]
    ).mean()
    extra = ad.extra_loss(model, "default")
    assert extra.item() == pytest.approx(0.3 * expected.item())
    extra.backward()  # it trains P and Q towards orthogonality
    assert Q.grad is not None and P.grad is not None
    off = tiny_model("llama")
    ad.add_adapter(off, "adalora", {"orth_reg_weight": 0.0})
    assert ad.extra_loss(off, "default") is None


# --- peft interop on disk -----------------------------------------------------------------------------------


def _train_peft(model, steps: int = 10) -> None:
    """peft's AdaLoRA loop: backward → step → update_and_allocate → zero_grad."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = _ids()
    for step in range(1, steps + 1):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        model.base_model.update_and_allocate(step)
        opt.zero_grad()
    model.eval()


@pytest.mark.filterwarnings("ignore:The following rank_pattern keys")  # peft's own quirk on every AdaLoRA load
def test_trained_adapters_round_trip_with_peft_with_their_rank_patterns(tmp_path):
    """Each side trains (and prunes) its own adapter for 10 steps; the other loads it with the same logits."""
    ids = _ids(3)
    report = check_peft_roundtrip(
        "adalora",
        {"init_r": 6, "target_r": 2, "tinit": 1, "tfinal": 3, "init_lora_weights": False},
        prepare=lambda model: _train_peftlab(model, 10),
        prepare_peft=_train_peft,
        peft_config=peft.AdaLoraConfig(
            task_type="CAUSAL_LM", init_r=6, target_r=2, total_step=10, tinit=1, tfinal=3, init_lora_weights=False
        ),
        inputs=(ids, torch.ones_like(ids)),
        tmp_path=tmp_path,
    )
    # peftlab's adapter, pruned by the trainer's hooks, loads in peft
    cfg = ad.entry(report["peftlab_model"], "default")[1].config
    assert cfg.rank_pattern and sum(map(sum, cfg.rank_pattern.values())) == 2 * ADAPTED
    assert report["to_peft_max_diff"] <= 1e-4
    # peft's adapter, pruned by peft, loads here resized to its rank pattern
    pattern = report["peft_source"].peft_config["default"].rank_pattern
    ranks = {p: layer.rank("default") for p, layer in svd_layers(report["loaded"], "default").items()}
    assert ranks == {k.removesuffix(".lora_E").removesuffix(".lora_E.default"): sum(v) for k, v in pattern.items()}
    assert min(ranks.values()) < 6  # it did resize
    assert report["from_peft_max_diff"] <= 1e-4
    assert report["to_peft_effect"] > 1e-2 and report["from_peft_effect"] > 1e-2  # the adapters matter


def test_reload_without_training_state_resizes_and_with_it_resumes_exactly(tmp_path):
    """Our checkpoint keeps the unpruned tensors and importance EMAs: a resumed run equals an unbroken one."""
    kw = {"init_r": 4, "target_r": 2, "tinit": 1, "tfinal": 2, "total_step": 12, "init_lora_weights": False}
    sgd = torch.optim.SGD  # stateless, so the comparison needs only the adapter's own state
    whole = tiny_model("llama")
    ad.add_adapter(whole, "adalora", kw)
    start = {k: v.detach().clone() for k, v in _method().tensor_map(whole, None, "default").items()}
    _train_peftlab(whole, 12, lr=0.05, optimizer=sgd, total=12)

    first = tiny_model("llama")
    cfg = ad.add_adapter(first, "adalora", kw)
    with torch.no_grad():
        for k, v in _method().tensor_map(first, cfg, "default").items():
            v.copy_(start[k])
    _train_peftlab(first, 6, lr=0.05, optimizer=sgd, total=12)
    folder = peftlab.save_adapter(first, tmp_path / "ckpt")
    assert (folder / "peftlab_extra.safetensors").exists()

    resumed = tiny_model("llama")
    peftlab.load_adapter(resumed, folder)
    assert all(layer.rank("default") == 4 for layer in svd_layers(resumed, "default").values())  # unpruned
    _train_peftlab(resumed, 6, lr=0.05, optimizer=sgd, start=7, total=12)
    ids = _ids(5)
    assert ad.entry(resumed, "default")[1].config.rank_pattern == ad.entry(whole, "default")[1].config.rank_pattern
    assert (logits(resumed, ids) - logits(whole, ids)).abs().max().item() <= 1e-4

    final = peftlab.save_adapter(whole, tmp_path / "final")
    (final / "peftlab_extra.safetensors").unlink()  # what a peft user has: the pruned tensors only
    (final / "peftlab.json").unlink()
    plain = tiny_model("llama")
    peftlab.load_adapter(plain, final)
    assert sorted(layer.rank("default") for layer in svd_layers(plain, "default").values()) == sorted(
        _live_ranks(whole).values()
    )
    assert (logits(plain, ids) - logits(whole, ids)).abs().max().item() <= 1e-4


# --- stacking, mixed batches, merging ----------------------------------------------------------------------


def test_stacks_with_lora_on_the_same_layers_and_mixed_batches(tmp_path):
    model = tiny_model("llama")
    ad.add_adapter(model, "lora", {"r": 2, "init_lora_weights": False}, name="plain")
    ad.add_adapter(model, "adalora", {"init_r": 3, "target_r": 2, "init_lora_weights": False}, name="ada")
    layer = model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, AdaLoraLayer) and set(layer.lora_A) == {"plain", "ada"}
    ids = _ids(6, batch=3)
    peftlab.set_active(model, ["plain"])
    only_lora = logits(model, ids)
    peftlab.set_active(model, ["ada"])
    only_ada = logits(model, ids)
    with peftlab.mixed_batch(model, ["plain", "ada", None]):
        mixed = logits(model, ids)
    with peftlab.active_adapters(model, None):
        base = logits(model, ids)
    assert torch.allclose(mixed[0], only_lora[0], atol=1e-5)
    assert torch.allclose(mixed[1], only_ada[1], atol=1e-5)
    assert torch.allclose(mixed[2], base[2], atol=1e-5)
    # each saves under its own method's key names and reloads alone
    for name in ("plain", "ada"):
        peftlab.set_active(model, [name])
        want = logits(model, ids)
        folder = peftlab.save_adapter(model, tmp_path / name, name)
        fresh = tiny_model("llama")
        peftlab.load_adapter(fresh, folder)
        assert (logits(fresh, ids) - want).abs().max().item() <= 1e-4
    peftlab.set_active(model, ["plain", "ada"])
    both = logits(model, ids)
    ad.merge_adapter(model, "ada")
    peftlab.set_active(model, ["plain"])  # ada is folded into W now
    assert (logits(model, ids) - both).abs().max().item() <= 1e-4


def test_merge_after_pruning_matches():
    model = tiny_model("llama")
    ad.add_adapter(model, "adalora", {"init_r": 4, "target_r": 1, "tfinal": 2, "init_lora_weights": False})
    _train_peftlab(model, 6)
    ids = _ids(7)
    want = logits(model, ids)
    ad.merge_adapter(model)
    assert (logits(model, ids) - want).abs().max().item() <= 1e-4
    ad.unmerge_adapter(model)
    assert (logits(model, ids) - want).abs().max().item() <= 1e-4
    ad.merge_and_unload(model)  # a plain transformers model with the merged weights
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert not any(".lora_" in n for n, _ in model.named_parameters())
    assert (logits(model, ids) - want).abs().max().item() <= 1e-4


# --- bad input ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, message",
    [
        ({"init_r": 4, "target_r": 8}, "target_r (8) is larger than init_r (4)"),
        ({"total_step": 0}, "total_step > 0"),
        ({"total_step": "ten"}, "total_step > 0"),
        ({"total_step": 10, "tinit": 6, "tfinal": 4}, "no budgeting phase"),
        ({"beta1": 1.0}, "beta1 must be in (0, 1)"),
        ({"deltaT": 0}, "deltaT must be at least 1"),
        ({"orth_reg_weight": -1}, "orth_reg_weight"),
        ({"rank_pattern": {"model.layers.0.self_attn.q_proj.lora_E": [1, 2]}}, "list of booleans"),
    ],
)
def test_config_validation(values, message):
    with pytest.raises(peftlab.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        peftlab.make_config("adalora", values)


def test_peft_keys_round_trip_and_unsupported_ones_refused():
    cfg = peft.AdaLoraConfig(task_type="CAUSAL_LM", init_r=6, target_r=3, total_step=50, tinit=5, deltaT=3)
    data = json.loads(json.dumps(cfg.to_dict(), default=list))
    ours = peftlab.make_config("adalora", data)
    got = (ours.init_r, ours.target_r, ours.total_step, ours.tinit, ours.deltaT, ours.lora_alpha)
    assert got == (6, 3, 50, 5, 3, 8)
    with pytest.raises(peftlab.ConfigError, match="bias='all'"):
        peftlab.make_config("adalora", {**data, "bias": "all"})
    # total_step left to the trainer still writes a value peft accepts
    assert peftlab.make_config("adalora", {"tinit": 2, "tfinal": 3}).to_dict()["total_step"] == 6


def test_total_steps_from_the_trainer_is_validated():
    model = tiny_model("llama")
    ad.add_adapter(model, "adalora", {"tinit": 5, "tfinal": 5})
    params = ad.prepare_for_training(model)
    ids = _ids()
    model(input_ids=ids, labels=ids).loss.backward()
    with pytest.raises(peftlab.ConfigError, match="tinit \\(5\\) \\+ tfinal \\(5\\) must be less than the trainer"):
        ad.on_train_step(model, "default", 1, 10)
    cfg = ad.entry(model, "default")[1].config
    cfg.tinit = cfg.tfinal = 0
    for p in params.values():
        p.grad = None
    with pytest.raises(peftlab.MethodError, match="no gradient"):
        ad.on_train_step(model, "default", 1, 10)


def test_adapter_from_another_base_model_is_refused(tmp_path):
    model = tiny_model("llama")
    ad.add_adapter(model, "adalora", {"init_r": 4, "target_r": 2})
    folder = peftlab.save_adapter(model, tmp_path / "ada")
    from transformers import AutoModelForCausalLM, LlamaConfig

    other = AutoModelForCausalLM.from_config(
        LlamaConfig(
            vocab_size=256,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    with pytest.raises(peftlab.AdapterMismatchError, match="hidden_size"):
        peftlab.load_adapter(other, folder)  # caught by the recorded base fingerprint
    (folder / "peftlab.json").unlink()  # a bare PEFT folder: the tensor shapes catch it
    with pytest.raises(peftlab.AdapterMismatchError, match=r"q_proj\.lora_A has shape \(4, 64\)"):
        peftlab.load_adapter(other, folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["rank_pattern"] = {"model.layers.9.self_attn.q_proj.lora_E": [True, False, True, True]}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(peftlab.AdapterMismatchError, match="layers.9"):
        peftlab.load_adapter(tiny_model("llama"), folder)


# --- the real model, through the shared trainer -------------------------------------------------------------


@pytest.mark.smollm2
def test_smollm2_trains_and_prunes(smollm2, tmp_path):
    model, tokenizer = smollm2
    result = train_briefly(
        model, tokenizer, "adalora", tmp_path / "out", {"init_r": 8, "target_r": 4, "tinit": 3, "tfinal": 4}, steps=14
    )
    assert result.eval_loss_after < 0.7 * result.eval_loss_before
    saved = json.loads((result.output_dir / "adapter_config.json").read_text())
    assert saved["total_step"] == 14
    layers = len(saved["rank_pattern"])
    assert sum(map(sum, saved["rank_pattern"].values())) == 4 * layers  # pruned to target_r × layers
