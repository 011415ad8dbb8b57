"""Prompt Tuning: the contract, interop with peft, the virtual-token machinery (cache, padding, mixed
batches, SEQ_CLS pooling, context), init, bad input, and training on SmolLM2."""

from __future__ import annotations

import json

import pytest
import torch

import peftlab
from peftlab import AdapterMismatchError, AdapterWeights, ConfigError, MethodError
from peftlab.kit import VirtualTokens
from peftlab.models import tiny_model
from peftlab.testing import (
    check_method,
    check_peft_roundtrip,
    greedy,
    left_pad,
    logits,
    random_ids,
    responsive_tiny_model,
    skip_if_peft_fails,
    train_briefly,
    train_steps,
)

METHOD = "prompt_tuning"
ATOL = 1e-4


def _adapted(k: int = 5, task: str = "CAUSAL_LM", name: str = "default", model=None, seed: int = 0, **cfg):
    model = model or responsive_tiny_model(task)
    peftlab.add_adapter(model, METHOD, {"num_virtual_tokens": k, **cfg}, name)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        VirtualTokens.source(model, name).embedding.weight.copy_(torch.randn(k, 64, generator=g))
    return model


# --- the contract -------------------------------------------------------------------------------------


def test_registered_with_honest_capabilities():
    handle = peftlab.get_method(METHOD)
    caps = handle.capabilities
    assert handle.peft_type == "PROMPT_TUNING"
    assert not caps.mergeable and "input" in caps.merge_note
    assert caps.virtual_tokens and caps.mixed_batch and caps.stackable and not caps.kv_cache
    assert handle.train_defaults["learning_rate"] >= 3e-2


def test_check_method_llama(tmp_path):
    # a random tiny model and random token targets leave a soft prompt little to learn: 3% is a clear fall
    report = check_method(METHOD, {"num_virtual_tokens": 8}, lr=0.1, loss_drop=0.97, tmp_path=tmp_path)
    assert report["trainable"] == 8 * 64 and report["generate"] == "ok"


def test_check_method_seq_cls(tmp_path):
    check_method(METHOD, {"num_virtual_tokens": 8}, task="SEQ_CLS", lr=0.1, tmp_path=tmp_path)


def test_check_method_gpt2(tmp_path):
    check_method(METHOD, {"num_virtual_tokens": 8}, arch="gpt2", lr=0.1, loss_drop=0.98, tmp_path=tmp_path)


def test_saved_file_is_peft_format(tmp_path):
    model = _adapted(k=5)
    folder = peftlab.save_adapter(model, tmp_path / "a")
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "adapter_model.safetensors"))
    assert list(tensors) == ["prompt_embeddings"] and tensors["prompt_embeddings"].shape == (5, 64)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "PROMPT_TUNING" and cfg["token_dim"] == 64 and cfg["num_transformer_submodules"] == 1
    assert cfg["num_attention_heads"] == 4 and cfg["num_layers"] == 2


def test_soft_prompt_hook_returns_the_prompt_embeddings():
    model = _adapted(k=5)
    handle = peftlab.get_method(METHOD)
    entry = peftlab.adapter_state(model).adapters["default"]
    prompt = handle.hook("soft_prompt")(model=model, config=entry.config, adapter_name="default")
    assert prompt.shape == (5, 64)
    assert torch.equal(prompt, VirtualTokens.source(model, "default").embedding.weight.detach())


# --- interop with peft --------------------------------------------------------------------------------


def test_round_trips_with_peft_both_ways(tmp_path):
    skip_if_peft_fails(METHOD)
    from peft import PromptTuningConfig

    report = check_peft_roundtrip(
        METHOD,
        {"num_virtual_tokens": 5},
        make_model=responsive_tiny_model,
        std=1.0,
        peft_config=PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=6),
        tmp_path=tmp_path,
    )
    # peft keeps the virtual positions in its logits; peftlab returns the input's
    assert report["to_peft_extra_positions"] == 5 and report["from_peft_extra_positions"] == 6
    assert report["to_peft_max_diff"] <= ATOL and report["from_peft_max_diff"] <= ATOL  # and 10 greedy tokens agree


def test_classifier_with_its_head_round_trips_with_peft_both_ways(tmp_path):
    """A prompt-tuned SEQ_CLS adapter carries its new head; peft files it as base_model.score.* (prompt-learning
    layout), so each side must read the other's."""
    skip_if_peft_fails(METHOD, "SEQ_CLS")
    from peft import PromptTuningConfig

    # the prompt and the new head get random weights on each side
    report = check_peft_roundtrip(
        METHOD,
        {"num_virtual_tokens": 4},
        make_model=lambda: responsive_tiny_model("SEQ_CLS"),
        std=1.0,
        peft_config=PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=5),
        inputs=(random_ids(3, 6), torch.ones(3, 6, dtype=torch.long)),
        tmp_path=tmp_path,
    )
    assert report["to_peft_max_diff"] <= ATOL and report["from_peft_max_diff"] <= ATOL
    assert report["to_peft_effect"] > 1e-2  # the head and prompt matter


def test_training_follows_peft_step_for_step():
    """Same prompt, same data, same optimizer: the loss curves of peft and peftlab agree exactly."""
    from peft import PromptTuningConfig, get_peft_model

    ids = random_ids(length=10)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    model = _adapted(k=4)
    peft_model = get_peft_model(
        responsive_tiny_model(), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    )
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(VirtualTokens.source(model, "default")())
    curves = [
        train_steps(model, peftlab.prepare_for_training(model).values(), batch, 4, lr=0.1),
        train_steps(peft_model, [p for p in peft_model.parameters() if p.requires_grad], batch, 4, lr=0.1),
    ]
    assert curves[0][-1] < curves[0][0]
    assert curves[0] == pytest.approx(curves[1], abs=1e-5)


# --- the virtual-token machinery ----------------------------------------------------------------------


def test_generate_with_cache_matches_greedy_without():
    model = _adapted(k=5)
    ids = random_ids(batch=3)
    cached = greedy(model, ids, n=12, use_cache=True)
    uncached = greedy(model, ids, n=12, use_cache=False)
    assert torch.equal(cached, uncached)
    # and the adapter changes what is generated (the prompt is really there at every step)
    with peftlab.active_adapters(model, None):
        assert not torch.equal(greedy(model, ids, n=12), cached)


def test_left_padded_batch_replies_like_one_at_a_time():
    model = _adapted(k=5)
    prompts = [random_ids(1, n, seed=n)[0] for n in (3, 9, 6)]
    ids, mask = left_pad(prompts)
    batched = greedy(model, ids, mask, n=10)
    for i, p in enumerate(prompts):
        alone = greedy(model, p[None], n=10)
        assert torch.equal(batched[i], alone[0]), f"row {i} differs from its reply alone"
    # the logits of the real tokens, too
    padded = logits(model, ids, mask)
    for i, p in enumerate(prompts):
        assert (padded[i, ids.shape[1] - len(p) :] - logits(model, p[None])[0]).abs().max() <= ATOL


def test_mixed_batch_each_row_gets_its_own_prompt():
    model = _adapted(k=3, name="a", seed=1)
    _adapted(k=6, name="b", model=model, seed=2)  # another length: rows are padded with masked slots
    ids = random_ids(batch=3, length=7)
    with peftlab.active_adapters(model, None):
        base = logits(model, ids)
        base_reply = greedy(model, ids, n=8)
    alone = {}
    for name in ("a", "b"):
        with peftlab.active_adapters(model, name):
            alone[name] = (logits(model, ids), greedy(model, ids, n=8))
    rows = ["a", "b", None]
    with peftlab.mixed_batch(model, rows):
        mixed = logits(model, ids)
        mixed_reply = greedy(model, ids, n=8, use_cache=True)
        mixed_uncached = greedy(model, ids, n=8, use_cache=False)
    for i, name in enumerate(rows):
        want, want_reply = (base, base_reply) if name is None else alone[name]
        assert (mixed[i] - want[i]).abs().max() <= ATOL, f"row {i} ({name}) differs from running it alone"
        assert torch.equal(mixed_reply[i], want_reply[i]), f"row {i} ({name}) generates differently"
    assert torch.equal(mixed_reply, mixed_uncached)
    assert not torch.allclose(alone["a"][0][0], alone["b"][0][0], atol=ATOL)  # the rows really differ


def test_seq_cls_pools_the_last_real_token_with_padding():
    model = _adapted(k=4, task="SEQ_CLS")
    prompts = [random_ids(1, n, seed=n)[0] for n in (3, 8, 5)]
    singles = torch.cat([logits(model, p[None]) for p in prompts])
    left_ids, left_mask = left_pad(prompts)
    right_ids = torch.zeros_like(left_ids)
    right_mask = torch.zeros_like(left_mask)
    for i, p in enumerate(prompts):
        right_ids[i, : len(p)] = p
        right_mask[i, : len(p)] = 1
    for ids, mask in ((left_ids, left_mask), (right_ids, right_mask)):
        assert (logits(model, ids, mask) - singles).abs().max() <= ATOL
    with peftlab.active_adapters(model, None):
        assert not torch.allclose(logits(model, right_ids, right_mask), singles, atol=ATOL)


def test_stacks_with_lora_and_with_another_prompt():
    model = _adapted(k=3, name="a", seed=1)
    _adapted(k=2, name="b", model=model, seed=2)
    peftlab.add_adapter(model, "lora", {"r": 2, "init_lora_weights": False}, "l")
    ids = random_ids()
    with peftlab.active_adapters(model, ["a", "b", "l"]):
        stacked = logits(model, ids)
    # by hand: both prompts, in order, in front of the input of the LoRA-adapted model
    with torch.no_grad(), peftlab.active_adapters(model, ["l"]):
        P = torch.cat([VirtualTokens.source(model, n)() for n in ("a", "b")])
        embeds = torch.cat([P.expand(2, -1, -1), model.get_input_embeddings()(ids)], dim=1)
        manual = model(inputs_embeds=embeds).logits[:, 5:]
    assert (stacked - manual).abs().max() <= ATOL


def test_inputs_embeds_and_labels():
    model = _adapted(k=5)
    ids = random_ids()
    embeds = model.get_input_embeddings()(ids).detach()
    with torch.no_grad():
        by_embeds = model(inputs_embeds=embeds, labels=ids)
        by_ids = model(input_ids=ids, labels=ids)
    assert (by_embeds.logits - by_ids.logits).abs().max() <= ATOL
    assert abs(by_embeds.loss.item() - by_ids.loss.item()) <= ATOL
    # the virtual tokens carry label -100 (as in peft): the base model fed the prompt by hand agrees
    with torch.no_grad(), peftlab.active_adapters(model, None):
        P = VirtualTokens.source(model, "default")().expand(2, -1, -1)
        manual = model(
            inputs_embeds=torch.cat([P, embeds], dim=1), labels=torch.cat([torch.full((2, 5), -100), ids], dim=1)
        )
    assert abs(manual.loss.item() - by_ids.loss.item()) <= ATOL
    assert (manual.logits[:, 5:] - by_ids.logits).abs().max() <= ATOL


def test_input_longer_than_the_context_is_refused():
    model = _adapted(k=8)  # tiny llama: max_position_embeddings=256
    fits = random_ids(1, 248)
    logits(model, fits)
    with pytest.raises(MethodError, match=r"8 virtual tokens.*250 tokens.*258 positions.*context of 256"):
        logits(model, random_ids(1, 250))
    with pytest.raises(MethodError, match="max_position_embeddings"):
        greedy(model, random_ids(1, 240), n=20)  # runs out of context while generating


# --- init ---------------------------------------------------------------------------------------------


def _word_level_tokenizer(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "classify", "the", "sentiment", "review"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>").save_pretrained(folder)
    return str(folder)


def test_text_init_repeats_the_text_embeddings(tmp_path):
    tok = _word_level_tokenizer(tmp_path / "tok")
    model = tiny_model()
    cfg = {"num_virtual_tokens": 7, "prompt_tuning_init": "TEXT", "prompt_tuning_init_text": "classify the sentiment"}
    peftlab.add_adapter(model, METHOD, {**cfg, "tokenizer_name_or_path": tok})
    words = model.get_input_embeddings().weight
    assert torch.equal(VirtualTokens.source(model, "default")(), words[[2, 3, 4, 2, 3, 4, 2]])
    # without tokenizer_name_or_path the model's own tokenizer (peftlab_source) is used, and recorded
    other = tiny_model()
    other.peftlab_source = tok
    config = peftlab.add_adapter(other, METHOD, cfg)
    assert torch.equal(VirtualTokens.source(other, "default")(), words[[2, 3, 4, 2, 3, 4, 2]])
    assert config.tokenizer_name_or_path


def test_text_init_adapter_loads_without_its_tokenizer(tmp_path):
    tok = _word_level_tokenizer(tmp_path / "tok")
    model = responsive_tiny_model()
    peftlab.add_adapter(
        model,
        METHOD,
        {
            "num_virtual_tokens": 4,
            "prompt_tuning_init": "TEXT",
            "prompt_tuning_init_text": "the review",
            "tokenizer_name_or_path": tok,
        },
    )
    ids = random_ids()
    want = logits(model, ids)
    folder = peftlab.save_adapter(model, tmp_path / "a")
    (tmp_path / "tok" / "tokenizer.json").unlink()  # the tokenizer is gone: loading must not need it
    fresh = responsive_tiny_model()
    peftlab.load_adapter(fresh, folder)
    assert (logits(fresh, ids) - want).abs().max() <= ATOL


def test_text_init_needs_a_tokenizer():
    with pytest.raises(MethodError, match="tokenizer_name_or_path"):
        peftlab.add_adapter(tiny_model(), METHOD, {"prompt_tuning_init": "TEXT", "prompt_tuning_init_text": "hi"})


def test_sample_vocab_init_uses_vocabulary_embeddings():
    model = tiny_model()
    peftlab.add_adapter(model, METHOD, {"num_virtual_tokens": 6, "prompt_tuning_init": "SAMPLE_VOCAB"})
    words = model.get_input_embeddings().weight
    for row in VirtualTokens.source(model, "default")():
        assert (words == row).all(-1).any(), "each virtual token starts as some token's embedding"


# --- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg, match",
    [
        ({"num_virtual_tokens": 0}, "num_virtual_tokens"),
        ({"prompt_tuning_init": "ZEROS"}, "prompt_tuning_init"),
        ({"prompt_tuning_init": "TEXT"}, "prompt_tuning_init_text"),
        ({"tokenizer_kwargs": {"use_fast": True}}, "tokenizer_kwargs"),
        ({"num_transformer_submodules": 2}, "encoder-decoder"),
        ({"token_dim": -3}, "token_dim"),
    ],
)
def test_bad_config_is_refused(cfg, match):
    with pytest.raises(ConfigError, match=match):
        peftlab.make_config(METHOD, cfg)


def _small_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval()


def test_adapter_for_another_hidden_size_is_refused(tmp_path):
    from peft import PromptTuningConfig, get_peft_model

    peft_model = get_peft_model(tiny_model(), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    peft_model.save_pretrained(str(tmp_path / "p"))  # made by peft: no peftlab fingerprint to check
    with pytest.raises(AdapterMismatchError, match=r"hidden size 64.*hidden size is 32"):
        peftlab.load_adapter(_small_llama(), tmp_path / "p")
    # a prompt tensor of the wrong width reaching the load hook names both widths too
    model = tiny_model()
    config = peftlab.add_adapter(model, METHOD, {"num_virtual_tokens": 4})
    with pytest.raises(AdapterMismatchError, match=r"hidden size 32 but this model's hidden size is 64"):
        peftlab.get_method(METHOD).hook("load")(
            model=model,
            config=config,
            adapter_name="default",
            weights=AdapterWeights({"prompt_embeddings": torch.zeros(4, 32)}),
        )
    with pytest.raises(AdapterMismatchError, match="4 virtual tokens|holds 3 virtual tokens"):
        peftlab.get_method(METHOD).hook("load")(
            model=model,
            config=config,
            adapter_name="default",
            weights=AdapterWeights({"prompt_embeddings": torch.zeros(3, 64)}),
        )


def test_mixed_batch_of_the_wrong_size_is_refused():
    model = _adapted(k=3, name="a")
    with peftlab.mixed_batch(model, ["a", None, "a"]), pytest.raises(MethodError, match="3 rows.*batch has 2"):
        logits(model, random_ids(batch=2))


# --- SmolLM2 ------------------------------------------------------------------------------------------


@pytest.mark.smollm2
def test_trains_on_smollm2(smollm2, tmp_path):
    model, tokenizer = smollm2
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (9, 3)  # GQA
    result = train_briefly(model, tokenizer, METHOD, tmp_path / "out", {"num_virtual_tokens": 16})
    assert result.eval_loss_after < result.eval_loss_before * 0.7
    # the trained prompt serves batched, left-padded generation with the cache like one prompt at a time
    from peftlab.generate import generate_batch

    prompts = ["Capital of France?", "Which city is the capital of Japan? Answer in JSON."]
    batched = generate_batch(model, tokenizer, prompts, max_new_tokens=12)
    assert batched == [generate_batch(model, tokenizer, [p], max_new_tokens=12)[0] for p in prompts]
