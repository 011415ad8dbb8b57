"""QLoRA: the contract kit, a real 4-bit base (tiny llama saved then loaded in NF4), peft interop on that
base, training after generate (the AVX512-BF16 repacking trap), merging by requantization, bad input."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import peftlab
from peftlab import adapters as ad
from peftlab.models import tiny_model
from peftlab.testing import check_method, check_peft_roundtrip, logits, random_ids, train_briefly
from peftlab_lora import LoraLayer
from peftlab_qlora import QLoraConfig, linear4bit_layers

bnb = pytest.importorskip("bitsandbytes")
peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny llama saved as a model folder: what core hands ``load_base_model``."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(folder)
    return str(folder)


def load_4bit(folder: str, **config) -> torch.nn.Module:
    """The base through QLoRA's own hook, as ``peftlab.models.load_model(..., method="qlora")`` calls it."""
    handle = peftlab.get_method("qlora")
    model = handle.hook("load_base_model")(
        source=folder, config=QLoraConfig(**config), task="CAUSAL_LM", dtype=torch.float32, device="cpu"
    )
    model.peftlab_base_id = "tiny-llama"
    model.eval()
    return model


def _ids(seed: int = 0, batch: int = 2, length: int = 10) -> torch.Tensor:
    return random_ids(batch, length, seed)


def _grads(model, ids, name: str = "default") -> dict[str, torch.Tensor]:
    params = ad.prepare_for_training(model, name)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    out = {k: p.grad.clone() for k, p in params.items() if p.grad is not None}
    assert len(out) == len(params), "some LoRA weights got no gradient"
    return out


def test_check_method_on_a_float_base(tmp_path):
    # the kit builds float tiny models: there QLoRA is plain LoRA (same hooks, same disk format)
    check_method("qlora", {"r": 4}, tmp_path=tmp_path, lr=1e-2)  # Adam at 3e-2 oscillates here


def test_base_is_4bit_nf4_with_double_quant_and_smaller(tiny_folder):
    model = load_4bit(tiny_folder)
    layers = linear4bit_layers(model)
    assert len(layers) == 2 * 7  # q, k, v, o, gate, up, down per block; the LM head stays float
    w = layers[0].weight
    assert w.quant_type == "nf4" and w.compress_statistics and w.dtype == torch.uint8
    assert all(layer.support_avx512bf16_for_cpu is False for layer in layers)
    assert model.is_loaded_in_4bit
    fp4 = linear4bit_layers(load_4bit(tiny_folder, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=False))
    assert fp4[0].weight.quant_type == "fp4" and not fp4[0].weight.compress_statistics
    float_bytes = sum(
        p.numel() * p.element_size() for layer in layers for p in [torch.empty(layer.out_features, layer.in_features)]
    )
    packed_bytes = sum(layer.weight.numel() * layer.weight.element_size() for layer in layers)
    assert packed_bytes * 8 == float_bytes  # 4 bits instead of 32 per weight
    # FSDP's setting: the packed bytes stored as the compute dtype, the same 4 bits per weight
    stored = linear4bit_layers(load_4bit(tiny_folder, bnb_4bit_quant_storage="float32"))
    assert stored[0].weight.dtype == torch.float32 and stored[0].weight.quant_storage == torch.float32
    assert sum(layer.weight.numel() * layer.weight.element_size() for layer in stored) == packed_bytes


def test_trains_after_generate(tiny_folder):
    """Generating first (eval, no grad) must not break training: same gradients as a model that never ran
    eval, and the loss falls. bitsandbytes would otherwise repack the 4-bit weights on AVX512-BF16 CPUs
    into a layout whose backward is silently wrong."""
    ids = _ids()
    fresh = load_4bit(tiny_folder)
    torch.manual_seed(0)
    ad.add_adapter(fresh, "qlora", {"r": 4, "init_lora_weights": False})
    want = _grads(fresh, ids)

    model = load_4bit(tiny_folder)
    with torch.no_grad():
        model.generate(
            input_ids=ids[:, :5],
            attention_mask=torch.ones_like(ids[:, :5]),
            max_new_tokens=4,
            do_sample=False,
            pad_token_id=0,
        )
    torch.manual_seed(0)
    ad.add_adapter(model, "qlora", {"r": 4, "init_lora_weights": False}, name="probe")  # random B: A gets grads
    got = _grads(model, ids, "probe")
    assert [k.replace(".probe.", ".default.") for k in got] == list(want)
    assert max((g - w).abs().max().item() for g, w in zip(got.values(), want.values())) <= 1e-5

    # a normal start (B = 0), trained alone; named targets: LoRA's 'all-linear' skips already-wrapped layers
    ad.add_adapter(
        model,
        "qlora",
        {"r": 4, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
        name="task",
    )
    peftlab.set_active(model, ["task"])
    params = ad.prepare_for_training(model, "task")
    opt = torch.optim.AdamW(list(params.values()), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.skipif(not bnb.functional.has_avx512bf16(), reason="the repacking only happens on AVX512-BF16 CPUs")
@pytest.mark.filterwarnings("ignore:.*an autograd kernel was not registered")  # the trap, shown on purpose
def test_the_repacking_trap_is_real_here_and_inject_undoes_it(tiny_folder):
    """Why keep_trainable_layout exists: with bitsandbytes' default on this CPU, gradients after an eval
    forward are wrong. A 4-bit base loaded elsewhere (bitsandbytes' default) is repaired by inject."""
    ids = _ids()
    fresh = load_4bit(tiny_folder)
    torch.manual_seed(0)
    ad.add_adapter(fresh, "qlora", {"r": 4, "init_lora_weights": False})
    want = list(_grads(fresh, ids).values())

    def grads_after_eval_forward(adapter_method: str) -> list[torch.Tensor]:
        model = load_4bit(tiny_folder)
        for layer in linear4bit_layers(model):
            layer.support_avx512bf16_for_cpu = True  # bitsandbytes' default on this CPU
        with torch.no_grad():
            model(input_ids=ids[:, :5])  # eval, no grad: repacks every 4-bit weight
        assert getattr(linear4bit_layers(model)[0].weight.quant_state, "packing_format_for_cpu", False)
        torch.manual_seed(0)
        ad.add_adapter(model, adapter_method, {"r": 4, "init_lora_weights": False, "target_modules": "all-linear"})
        return list(_grads(model, ids).values())

    scale = max(w.abs().max().item() for w in want)
    broken = grads_after_eval_forward("lora")  # plain LoRA leaves the repacked layout in place
    assert max((g - w).abs().max().item() for g, w in zip(broken, want)) > 0.1 * scale
    repaired = grads_after_eval_forward("qlora")  # QLoRA's inject unpacks (block scales keep bf16 rounding)
    assert max((g - w).abs().max().item() for g, w in zip(repaired, want)) < 0.02 * scale


@pytest.mark.filterwarnings("ignore:Unexpected keyword arguments")  # peft on our bnb_4bit_* keys
def test_round_trips_with_peft_on_the_4bit_base_as_qlora_and_as_lora(tiny_folder, tmp_path):
    ids = _ids(1)
    # both sides start from random LoRA weights of their own (init_lora_weights=False)
    report = check_peft_roundtrip(
        "qlora",
        {"r": 4, "init_lora_weights": False},
        make_model=lambda: load_4bit(tiny_folder),
        prepare=lambda model: None,
        prepare_peft=lambda model: None,
        claims=False,
        generate=False,
        peft_config=peft.LoraConfig(
            r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"
        ),
        inputs=(ids, torch.ones_like(ids)),
        tmp_path=tmp_path,
    )
    folder = report["peftlab_saved"]
    assert json.loads((folder / "peftlab.json").read_text())["method"] == "qlora"
    saved = json.loads((folder / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["bnb_4bit_quant_type"] == "nf4"
    assert report["to_peft_max_diff"] <= 1e-4  # peft loads ours on the 4-bit base
    assert report["to_peft_effect"] > 1e-2  # the adapter matters
    # peft's LoRA on a 4-bit base loads here as qlora when asked to ...
    assert report["loaded_as"] == "qlora" and report["from_peft_max_diff"] <= 1e-4
    # ... but without a peftlab sidecar a peft LORA adapter is LoRA's: qlora does not claim it
    assert peftlab.read_adapter(report["peft_saved"]).method.name == "lora"
    plain = load_4bit(tiny_folder)
    peftlab.load_adapter(plain, report["peft_saved"])
    assert (logits(plain, ids) - logits(report["peft_source"], ids)).abs().max().item() <= 1e-4


def test_merge_requantizes_close_and_unmerge_restores_exactly(tiny_folder):
    model = load_4bit(tiny_folder)
    ad.add_adapter(model, "qlora", {"r": 4, "init_lora_weights": False})
    layer = model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, LoraLayer)
    original = layer.base_layer.weight
    ids = _ids(3)
    with peftlab.active_adapters(model, None):
        base = logits(model, ids)
    want = logits(model, ids)
    ad.merge_adapter(model)
    merged = logits(model, ids)
    assert layer.base_layer.weight is not original and layer.base_layer.weight.dtype == torch.uint8  # still 4-bit
    effect = (want - base).abs().max().item()
    error = (merged - want).abs().max().item()
    assert error < 0.5 * effect, f"requantized merge lost too much: error {error:.3f} vs adapter effect {effect:.3f}"
    W0 = bnb.functional.dequantize_4bit(original.data, original.quant_state)
    expected, _ = bnb.functional.quantize_4bit(
        W0 + layer.delta_weight("default"), blocksize=original.blocksize, compress_statistics=True, quant_type="nf4"
    )
    assert torch.equal(layer.base_layer.weight.data, expected)  # W₄ = quantize(dequantize(W₄) + ΔW)
    ad.unmerge_adapter(model)
    assert layer.base_layer.weight is original  # the exact 4-bit original, no second rounding
    assert torch.equal(logits(model, ids), want)


def test_missing_bitsandbytes_is_a_clear_error(tiny_folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes now raises ImportError
    with pytest.raises(peftlab.MethodError, match="pip install 'bitsandbytes"):
        load_4bit(tiny_folder)


def test_hardware_without_kernels_is_a_clear_error(tiny_folder):
    handle = peftlab.get_method("qlora")
    with pytest.raises(peftlab.MethodError, match="do not run on 'mps'"):
        handle.hook("load_base_model")(
            source=tiny_folder, config=QLoraConfig(), task="CAUSAL_LM", dtype=torch.float32, device="mps"
        )


@pytest.mark.parametrize(
    "values, message",
    [
        ({"bnb_4bit_quant_type": "int8"}, "bnb_4bit_quant_type must be nf4 or fp4"),
        ({"bnb_4bit_compute_dtype": "float64"}, "bnb_4bit_compute_dtype must be one of"),
        ({"bnb_4bit_use_double_quant": "maybe"}, "bnb_4bit_use_double_quant must be true or false"),
        ({"bnb_4bit_quant_storage": "int4"}, "bnb_4bit_quant_storage must be one of"),
        ({"r": 0}, "r must be a positive integer"),
    ],
)
def test_config_validation(values, message):
    with pytest.raises(peftlab.ConfigError, match=message):
        peftlab.make_config("qlora", values)


def test_adapter_from_another_base_is_refused(tiny_folder, tmp_path):
    model = load_4bit(tiny_folder)
    ad.add_adapter(model, "qlora", {"r": 4})
    folder = peftlab.save_adapter(model, tmp_path / "q")
    (folder / "peftlab.json").write_text(json.dumps({"method": "qlora"}))  # no fingerprint: shapes must catch it
    other = tiny_model("gpt2")
    with pytest.raises(peftlab.AdapterMismatchError):
        peftlab.load_adapter(other, folder)


# --- the real model, through core's loader and the shared trainer -------------------------------------------


@pytest.fixture(scope="module")
def smollm2_4bit():
    torch.set_num_threads(2)
    from peftlab.models import load_model

    return load_model(None, method="qlora")


@pytest.mark.smollm2
def test_smollm2_4bit_trains(smollm2_4bit, tmp_path):
    model, tokenizer = smollm2_4bit
    layers = linear4bit_layers(model)
    assert len(layers) == 30 * 7
    packed = sum(layer.weight.numel() for layer in layers)  # bytes: two 4-bit weights per byte
    assert packed * 2 == sum(layer.in_features * layer.out_features for layer in layers)
    with torch.no_grad():  # the chat tab may generate before training starts
        model.generate(**tokenizer("Hello", return_tensors="pt"), max_new_tokens=2, do_sample=False)
    result = train_briefly(model, tokenizer, "qlora", tmp_path / "out", {"r": 8})
    assert result.eval_loss_after < 0.7 * result.eval_loss_before


def test_optimizer_is_adamw_on_cpu_and_paged_adamw_on_cuda(tiny_folder):
    from peftlab.adapters import make_optimizer

    model = load_4bit(tiny_folder)
    ad.add_adapter(model, "qlora", {"r": 4})
    params = list(ad.prepare_for_training(model).values())
    assert type(make_optimizer(model, "default", params, 1e-3)) is torch.optim.AdamW
    if torch.cuda.is_available():  # checked on a GPU machine; CI has none
        gpu = peftlab.get_method("qlora").hook("load_base_model")(
            source=tiny_folder, config=QLoraConfig(), task="CAUSAL_LM", dtype=torch.float32, device="cuda"
        )
        ad.add_adapter(gpu, "qlora", {"r": 4})
        opt = make_optimizer(gpu, "default", list(ad.prepare_for_training(gpu).values()), 1e-3)
        assert type(opt).__name__ == "PagedAdamW"
