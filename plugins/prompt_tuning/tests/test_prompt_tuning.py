"""Prompt Tuning: the contract, interop with peft, the virtual-token machinery (cache, padding, mixed
batches, SEQ_CLS pooling, context), init, bad input, and training on SmolLM2."""

from __future__ import annotations

import json

import pytest
import torch

import peftlab
from peftlab import AdapterMismatchError, AdapterWeights, ConfigError, MethodError
from peftlab.models import load_model, tiny_model
from peftlab.testing import check_method
from peftlab_prompt_tuning import VirtualTokens

METHOD = "prompt_tuning"
ATOL = 1e-4


def _model(task: str = "CAUSAL_LM"):
    """The tiny llama with weights 10x its init scale: its greedy replies depend on the whole context
    (at the init scale it repeats the last token whatever comes before, so generation tests prove nothing)."""
    model = tiny_model(task=task)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def _ids(batch: int = 2, length: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids, mask=None) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids) if mask is None else mask).logits.float()


def _greedy(model, ids, mask=None, n: int = 8, **kw) -> torch.Tensor:
    mask = torch.ones_like(ids) if mask is None else mask
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=0,
                              eos_token_id=None, **kw)[:, ids.shape[1]:]


def _adapted(k: int = 5, task: str = "CAUSAL_LM", name: str = "default", model=None, seed: int = 0, **cfg):
    model = model or _model(task)
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


def test_peftlab_adapter_loads_in_peft(tmp_path):
    from peft import PeftModel

    model = _adapted(k=5)
    ids = _ids()
    ours = _logits(model, ids)
    folder = peftlab.save_adapter(model, tmp_path / "a")
    peft_model = PeftModel.from_pretrained(_model(), str(folder))
    theirs = _logits(peft_model, ids)
    assert theirs.shape[1] == 5 + ids.shape[1]  # peft keeps the virtual positions; peftlab returns the input's
    assert (theirs[:, 5:] - ours).abs().max() <= ATOL
    assert torch.equal(_greedy(peft_model, ids, n=10), _greedy(model, ids, n=10))


def test_peft_adapter_loads_in_peftlab(tmp_path):
    from peft import PromptTuningConfig, get_peft_model

    peft_model = get_peft_model(_model(), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=6))
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.normal_()
    ids = _ids()
    theirs = _logits(peft_model, ids)[:, 6:]
    peft_model.save_pretrained(str(tmp_path / "p"))
    model = _model()
    peftlab.load_adapter(model, tmp_path / "p")
    assert (_logits(model, ids) - theirs).abs().max() <= ATOL
    assert torch.equal(_greedy(model, ids, n=10), _greedy(peft_model, ids, n=10))


def test_classifier_with_its_head_round_trips_with_peft_both_ways(tmp_path):
    """A prompt-tuned SEQ_CLS adapter carries its new head; peft files it as base_model.score.* (prompt-learning
    layout), so each side must read the other's."""
    from peft import PeftModel, PromptTuningConfig, get_peft_model

    ids = _ids(3, 6)
    ours = _adapted(k=4, task="SEQ_CLS")
    with torch.no_grad():
        ours.score.weight.normal_()
    folder = peftlab.save_adapter(ours, tmp_path / "ours")
    theirs = PeftModel.from_pretrained(_model("SEQ_CLS"), str(folder))
    want = _logits(ours, ids)
    assert (_logits(theirs, ids) - want).abs().max() <= ATOL
    assert (want - _logits(_model("SEQ_CLS"), ids)).abs().max() > 1e-2  # the head and prompt matter

    peft_model = get_peft_model(_model("SEQ_CLS"), PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=5))
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:  # the prompt and the new head
                p.normal_()
    peft_model.save_pretrained(str(tmp_path / "peft"))
    loaded = _model("SEQ_CLS")
    peftlab.load_adapter(loaded, tmp_path / "peft")
    assert (_logits(loaded, ids) - _logits(peft_model, ids)).abs().max() <= ATOL


def test_training_follows_peft_step_for_step():
    """Same prompt, same data, same optimizer: the loss curves of peft and peftlab agree exactly."""
    from peft import PromptTuningConfig, get_peft_model

    ids = _ids(length=10)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    model = _adapted(k=4)
    peft_model = get_peft_model(_model(), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(VirtualTokens.source(model, "default")())
    curves = []
    for m, params in ((model, peftlab.prepare_for_training(model).values()),
                      (peft_model, [p for p in peft_model.parameters() if p.requires_grad])):
        opt, losses = torch.optim.AdamW(list(params), lr=0.1), []
        m.train()
        for _ in range(4):
            loss = m(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        curves.append(losses)
    assert curves[0][-1] < curves[0][0]
    assert curves[0] == pytest.approx(curves[1], abs=1e-5)


# --- the virtual-token machinery ----------------------------------------------------------------------


def test_generate_with_cache_matches_greedy_without():
    model = _adapted(k=5)
    ids = _ids(batch=3)
    cached = _greedy(model, ids, n=12, use_cache=True)
    uncached = _greedy(model, ids, n=12, use_cache=False)
    assert torch.equal(cached, uncached)
    # and the adapter changes what is generated (the prompt is really there at every step)
    with peftlab.active_adapters(model, None):
        assert not torch.equal(_greedy(model, ids, n=12), cached)


def _left_pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask


def test_left_padded_batch_replies_like_one_at_a_time():
    model = _adapted(k=5)
    prompts = [_ids(1, n, seed=n)[0] for n in (3, 9, 6)]
    ids, mask = _left_pad(prompts)
    batched = _greedy(model, ids, mask, n=10)
    for i, p in enumerate(prompts):
        alone = _greedy(model, p[None], n=10)
        assert torch.equal(batched[i], alone[0]), f"row {i} differs from its reply alone"
    # the logits of the real tokens, too
    logits = _logits(model, ids, mask)
    for i, p in enumerate(prompts):
        assert (logits[i, ids.shape[1] - len(p):] - _logits(model, p[None])[0]).abs().max() <= ATOL


def test_mixed_batch_each_row_gets_its_own_prompt():
    model = _adapted(k=3, name="a", seed=1)
    _adapted(k=6, name="b", model=model, seed=2)  # another length: rows are padded with masked slots
    ids = _ids(batch=3, length=7)
    with peftlab.active_adapters(model, None):
        base = _logits(model, ids)
        base_reply = _greedy(model, ids, n=8)
    alone = {}
    for name in ("a", "b"):
        with peftlab.active_adapters(model, name):
            alone[name] = (_logits(model, ids), _greedy(model, ids, n=8))
    rows = ["a", "b", None]
    with peftlab.mixed_batch(model, rows):
        mixed = _logits(model, ids)
        mixed_reply = _greedy(model, ids, n=8, use_cache=True)
        mixed_uncached = _greedy(model, ids, n=8, use_cache=False)
    for i, name in enumerate(rows):
        want, want_reply = (base, base_reply) if name is None else alone[name]
        assert (mixed[i] - want[i]).abs().max() <= ATOL, f"row {i} ({name}) differs from running it alone"
        assert torch.equal(mixed_reply[i], want_reply[i]), f"row {i} ({name}) generates differently"
    assert torch.equal(mixed_reply, mixed_uncached)
    assert not torch.allclose(alone["a"][0][0], alone["b"][0][0], atol=ATOL)  # the rows really differ


def test_seq_cls_pools_the_last_real_token_with_padding():
    model = _adapted(k=4, task="SEQ_CLS")
    prompts = [_ids(1, n, seed=n)[0] for n in (3, 8, 5)]
    singles = torch.cat([_logits(model, p[None]) for p in prompts])
    left_ids, left_mask = _left_pad(prompts)
    right_ids = torch.zeros_like(left_ids)
    right_mask = torch.zeros_like(left_mask)
    for i, p in enumerate(prompts):
        right_ids[i, :len(p)] = p
        right_mask[i, :len(p)] = 1
    for ids, mask in ((left_ids, left_mask), (right_ids, right_mask)):
        assert (_logits(model, ids, mask) - singles).abs().max() <= ATOL
    with peftlab.active_adapters(model, None):
        assert not torch.allclose(_logits(model, right_ids, right_mask), singles, atol=ATOL)


def test_stacks_with_lora_and_with_another_prompt():
    model = _adapted(k=3, name="a", seed=1)
    _adapted(k=2, name="b", model=model, seed=2)
    peftlab.add_adapter(model, "lora", {"r": 2, "init_lora_weights": False}, "l")
    ids = _ids()
    with peftlab.active_adapters(model, ["a", "b", "l"]):
        stacked = _logits(model, ids)
    # by hand: both prompts, in order, in front of the input of the LoRA-adapted model
    with torch.no_grad(), peftlab.active_adapters(model, ["l"]):
        P = torch.cat([VirtualTokens.source(model, n)() for n in ("a", "b")])
        embeds = torch.cat([P.expand(2, -1, -1), model.get_input_embeddings()(ids)], dim=1)
        manual = model(inputs_embeds=embeds).logits[:, 5:]
    assert (stacked - manual).abs().max() <= ATOL


def test_inputs_embeds_and_labels():
    model = _adapted(k=5)
    ids = _ids()
    embeds = model.get_input_embeddings()(ids).detach()
    with torch.no_grad():
        by_embeds = model(inputs_embeds=embeds, labels=ids)
        by_ids = model(input_ids=ids, labels=ids)
    assert (by_embeds.logits - by_ids.logits).abs().max() <= ATOL
    assert abs(by_embeds.loss.item() - by_ids.loss.item()) <= ATOL
    # the virtual tokens carry label -100 (as in peft): the base model fed the prompt by hand agrees
    with torch.no_grad(), peftlab.active_adapters(model, None):
        P = VirtualTokens.source(model, "default")().expand(2, -1, -1)
        manual = model(inputs_embeds=torch.cat([P, embeds], dim=1),
                       labels=torch.cat([torch.full((2, 5), -100), ids], dim=1))
    assert abs(manual.loss.item() - by_ids.loss.item()) <= ATOL
    assert (manual.logits[:, 5:] - by_ids.logits).abs().max() <= ATOL


def test_input_longer_than_the_context_is_refused():
    model = _adapted(k=8)  # tiny llama: max_position_embeddings=256
    fits = _ids(1, 248)
    _logits(model, fits)
    with pytest.raises(MethodError, match=r"8 virtual tokens.*250 tokens.*258 positions.*context of 256"):
        _logits(model, _ids(1, 250))
    with pytest.raises(MethodError, match="max_position_embeddings"):
        _greedy(model, _ids(1, 240), n=20)  # runs out of context while generating


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
    model = _model()
    peftlab.add_adapter(model, METHOD, {"num_virtual_tokens": 4, "prompt_tuning_init": "TEXT",
                                        "prompt_tuning_init_text": "the review", "tokenizer_name_or_path": tok})
    ids = _ids()
    want = _logits(model, ids)
    folder = peftlab.save_adapter(model, tmp_path / "a")
    (tmp_path / "tok" / "tokenizer.json").unlink()  # the tokenizer is gone: loading must not need it
    fresh = _model()
    peftlab.load_adapter(fresh, folder)
    assert (_logits(fresh, ids) - want).abs().max() <= ATOL


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


@pytest.mark.parametrize("cfg, match", [
    ({"num_virtual_tokens": 0}, "num_virtual_tokens"),
    ({"prompt_tuning_init": "ZEROS"}, "prompt_tuning_init"),
    ({"prompt_tuning_init": "TEXT"}, "prompt_tuning_init_text"),
    ({"tokenizer_kwargs": {"use_fast": True}}, "tokenizer_kwargs"),
    ({"num_transformer_submodules": 2}, "encoder-decoder"),
    ({"token_dim": -3}, "token_dim"),
])
def test_bad_config_is_refused(cfg, match):
    with pytest.raises(ConfigError, match=match):
        peftlab.make_config(METHOD, cfg)


def _small_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0)
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
        peftlab.get_method(METHOD).hook("load")(model=model, config=config, adapter_name="default",
                                                weights=AdapterWeights({"prompt_embeddings": torch.zeros(4, 32)}))
    with pytest.raises(AdapterMismatchError, match="4 virtual tokens|holds 3 virtual tokens"):
        peftlab.get_method(METHOD).hook("load")(model=model, config=config, adapter_name="default",
                                                weights=AdapterWeights({"prompt_embeddings": torch.zeros(3, 64)}))


def test_mixed_batch_of_the_wrong_size_is_refused():
    model = _adapted(k=3, name="a")
    with peftlab.mixed_batch(model, ["a", None, "a"]), pytest.raises(MethodError, match="3 rows.*batch has 2"):
        _logits(model, _ids(batch=2))


# --- SmolLM2 ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    torch.set_num_threads(2)
    return load_model(None)


@pytest.mark.smollm2
def test_trains_on_smollm2(smollm2, tmp_path):
    from peftlab.train import TrainArgs, train

    model, tokenizer = smollm2
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (9, 3)  # GQA
    result = train(TrainArgs(method=METHOD, method_config={"num_virtual_tokens": 16}, dataset="capitals-json",
                             max_steps=12, batch_size=8, max_length=128, output_dir=str(tmp_path / "out"),
                             eval_every=0, max_eval_samples=16), model=model, tokenizer=tokenizer)
    print(f"prompt_tuning on SmolLM2: eval loss {result.eval_loss_before:.3f} → {result.eval_loss_after:.3f}")
    assert result.eval_loss_after < result.eval_loss_before * 0.7
    # the trained prompt serves batched, left-padded generation with the cache like one prompt at a time
    from peftlab.generate import generate_batch

    prompts = ["Capital of France?", "Which city is the capital of Japan? Answer in JSON."]
    batched = generate_batch(model, tokenizer, prompts, max_new_tokens=12)
    assert batched == [generate_batch(model, tokenizer, [p], max_new_tokens=12)[0] for p in prompts]
