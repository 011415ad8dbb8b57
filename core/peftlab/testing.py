"""The conformance kit: ``check_method`` runs any method through the plugin contract on a tiny model.

Every method plugin's tests start with it; third-party authors use it too::

    from peftlab.testing import check_method

    def test_contract(tmp_path):
        check_method("my-method", {"size": 4}, tmp_path=tmp_path)

It raises ``AssertionError`` naming the first broken promise, and returns a report of what it measured.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from .adapters import add_adapter, merge_adapter, prepare_for_training, resolve_method, unmerge_adapter
from .io import load_adapter, save_adapter
from .models import tiny_model
from .state import active_adapters


def _batch(task: str, vocab: int, seed: int = 0, batch: int = 2, length: int = 10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    out["labels"] = torch.randint(0, 2, (batch,), generator=g) if task == "SEQ_CLS" else ids.clone()
    return out


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()


def check_method(method: str, config: dict[str, Any] | None = None, *, arch: str = "llama", task: str = "CAUSAL_LM",
                 steps: int = 30, lr: float = 3e-2, tmp_path: str | Path | None = None,
                 loss_drop: float = 0.9, atol: float = 1e-4) -> dict[str, Any]:
    """inject → only the declared params train → loss falls → save → load → identical outputs →
    merge (if mergeable) matches unmerged → greedy generate with the KV cache matches no-cache decoding."""
    handle = resolve_method(method)
    report: dict[str, Any] = {"method": handle.name, "arch": arch, "task": task}
    torch.manual_seed(0)
    model = tiny_model(arch, task=task)
    vocab = model.config.vocab_size
    batch = _batch(task, vocab)
    base_logits = _logits(model, batch)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    # inject
    add_adapter(model, handle, config)
    with active_adapters(model, None):
        assert torch.allclose(_logits(model, batch), base_logits, atol=atol), \
            f"{handle.name}: with no adapter active the model must compute the base model's outputs"
    trainable = prepare_for_training(model)
    assert trainable, f"{handle.name}: trainable_params returned nothing"
    assert all(p.requires_grad for p in trainable.values())
    report["trainable"] = sum(p.numel() for p in trainable.values())

    # only the declared params train, and the loss falls
    model.train()
    opt = torch.optim.AdamW([p for p in trainable.values()], lr=lr)
    losses = []
    for _ in range(steps):
        out = model(**batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
    model.eval()
    report["loss_first"], report["loss_last"] = losses[0], losses[-1]
    assert losses[-1] < losses[0] * loss_drop, f"{handle.name}: loss did not fall ({losses[0]:.4f} → {losses[-1]:.4f})"
    trained_ids = {id(p) for p in trainable.values()}
    for n, p in model.named_parameters():
        if id(p) in trained_ids:
            continue
        key = n.replace(".base_layer", "")
        if key in before and before[key].shape == p.shape:
            assert torch.equal(before[key], p.detach()), f"{handle.name}: {n} changed but was not declared trainable"
        elif n in before:
            assert torch.equal(before[n], p.detach()), f"{handle.name}: {n} changed but was not declared trainable"
    adapted = _logits(model, batch)
    assert not torch.allclose(adapted, base_logits, atol=atol), f"{handle.name}: training left the outputs unchanged"

    # save → load into a fresh model → identical outputs
    tmp = Path(tmp_path) if tmp_path else Path(tempfile.mkdtemp(prefix="peftlab-check-"))
    folder = save_adapter(model, tmp / f"{handle.name}-adapter")
    fresh = tiny_model(arch, task=task)
    if getattr(model, "peftlab_new_modules", None):  # a trained task head travels with the adapter
        fresh.peftlab_new_modules = list(model.peftlab_new_modules)
    load_adapter(fresh, folder)
    reloaded = _logits(fresh, batch)
    diff = (reloaded - adapted).abs().max().item()
    report["reload_max_diff"] = diff
    assert diff <= atol, f"{handle.name}: reloaded adapter gives different outputs (max diff {diff:.2e})"

    # merge gives the same outputs as unmerged
    if handle.capabilities.mergeable:
        merge_adapter(fresh)
        d = (_logits(fresh, batch) - adapted).abs().max().item()
        report["merge_max_diff"] = d
        assert d <= atol, f"{handle.name}: merged outputs differ from unmerged (max diff {d:.2e})"
        unmerge_adapter(fresh)
        d = (_logits(fresh, batch) - adapted).abs().max().item()
        assert d <= atol, f"{handle.name}: unmerge did not restore the outputs (max diff {d:.2e})"

    # generate with the KV cache == greedy decoding without it
    if task == "CAUSAL_LM":
        prompt = batch["input_ids"][:2, :6]
        mask = torch.ones_like(prompt)
        kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
        with torch.no_grad():
            cached = fresh.generate(input_ids=prompt, attention_mask=mask, use_cache=True, **kw)
            uncached = fresh.generate(input_ids=prompt, attention_mask=mask, use_cache=False, **kw)
        assert torch.equal(cached, uncached), f"{handle.name}: generate with the KV cache differs from without"
        assert cached.shape[1] == prompt.shape[1] + 8, f"{handle.name}: generate returned {cached.shape[1]} tokens"
        report["generate"] = "ok"
    return report
