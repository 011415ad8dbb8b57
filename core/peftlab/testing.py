"""The conformance kit, and the helpers that method plugins' tests share.

``check_method`` runs any method through the plugin contract on a tiny model; every method plugin's tests start
with it, and third-party authors use it too::

    from peftlab.testing import check_method

    def test_contract(tmp_path):
        check_method("my-method", {"size": 4}, tmp_path=tmp_path)

It raises ``AssertionError`` naming the first broken promise, with what it measured and the threshold it measured
against, and returns a report of what it measured. ``check_peft_roundtrip`` checks, for a method whose
``peft_type`` ``peft`` knows, that each library loads the other's files with the same outputs.

The rest are small helpers for a plugin's own tests: tiny models made to react to their context
(``sharp_tiny_model``, ``tiny_gqa_model``, ``responsive_tiny_model``), inputs (``random_ids``, ``left_pad``,
``left_padded``), outputs (``logits``, ``greedy``), adapters with random weights (``randomize_adapter``), a few
optimizer steps on one batch (``train_steps``) and the short SmolLM2 training run of the plugin suites
(``train_briefly``, ``base_eval_loss``).
"""

from __future__ import annotations

import functools
import inspect
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .adapters import (
    adapter_parameters,
    add_adapter,
    merge_adapter,
    model_task,
    prepare_for_training,
    resolve_method,
    task_head_parameters,
    unmerge_adapter,
)
from .io import load_adapter, save_adapter
from .models import tiny_model
from .state import active_adapters, adapter_state, mixed_batch

# --- inputs ---------------------------------------------------------------------------------------------------


def random_ids(batch: int = 2, length: int = 7, seed: int = 0, vocab: int = 256) -> torch.Tensor:
    """Token ids ``[batch, length]`` drawn uniformly from ``3 .. vocab-1`` (0, 1, 2 are the tiny models' pad, bos
    and eos), the same for the same ``seed``."""
    return torch.randint(3, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def left_pad(rows: Sequence[torch.Tensor], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D token rows of different lengths into ``(input_ids, attention_mask)``, left-padded with ``pad_id``
    as ``generate`` wants them."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = r
        mask[i, width - len(r) :] = 1
    return ids, mask


def left_padded(batch: int = 3, length: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of ``random_ids(batch, length, seed)`` whose row ``i`` has its first ``2·i``
    tokens replaced by padding (id 0, mask 0): prompts of different lengths, left-padded."""
    x = random_ids(batch, length, seed)
    mask = torch.ones_like(x)
    for row in range(batch):
        mask[row, : row * 2] = 0
        x[row, : row * 2] = 0
    return x, mask


# --- tiny models that react to their context ------------------------------------------------------------------


def sharpen_attention(model: torch.nn.Module, factor: float = 5.0) -> torch.nn.Module:
    """Scale the query/key/value projections (``q_proj``, ``k_proj``, ``v_proj``, GPT-2's ``c_attn``) by ``factor``
    in place, so that what a prefix adds to the attention changes the outputs clearly (the attention of a random
    tiny model is nearly uniform). Returns ``model``."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(s in name for s in ("q_proj", "k_proj", "v_proj", "c_attn")):
                p.mul_(factor)
    return model


def sharp_tiny_model(arch: str = "llama", task: str = "CAUSAL_LM") -> torch.nn.Module:
    """``peftlab.models.tiny_model(arch, task)`` with ``sharpen_attention`` applied."""
    return sharpen_attention(tiny_model(arch, task=task))


def tiny_gqa_model(layers: int = 2) -> torch.nn.Module:
    """SmolLM2's attention layout in miniature: a llama with 9 query heads sharing 3 key/value heads (head_dim 8,
    hidden size 72), ``layers`` layers, 128 positions, vocabulary 256, attention sharpened (``sharpen_attention``).
    Seeded: the same weights every call."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=72,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    model = sharpen_attention(AutoModelForCausalLM.from_config(cfg))
    model.peftlab_base_id, model.peftlab_new_modules = "tiny-smol", []
    return model.eval()


def responsive_tiny_model(task: str = "CAUSAL_LM") -> torch.nn.Module:
    """The tiny llama with every matrix redrawn at std 0.2 (10× its init scale), so that its greedy replies depend
    on the whole context: at the init scale it repeats the last token whatever comes before, and a generation test
    on it proves nothing. Seeded: the same weights every call."""
    model = tiny_model(task=task)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


# --- outputs ----------------------------------------------------------------------------------------------------


def logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
    """The model's logits for ``ids`` as float32, without gradients; ``mask`` defaults to all ones, ``kwargs`` go to
    the forward call (e.g. ``position_ids``)."""
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids) if mask is None else mask, **kwargs)
    return out.logits.float()


def greedy(
    model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor | None = None, n: int = 8, **kwargs: Any
) -> torch.Tensor:
    """The ``n`` tokens greedy decoding appends to each row of ``ids`` (only the new ones), with pad id 0 and no
    end-of-sequence stop, so every row gets exactly ``n``; ``mask`` defaults to all ones, ``kwargs`` go to
    ``generate`` (e.g. ``use_cache=False``)."""
    mask = torch.ones_like(ids) if mask is None else mask
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
            **kwargs,
        )
    return out[:, ids.shape[1] :]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


PACK_ROWS = (7, 3, 12, 1)  # lengths of the rows ``check_packing`` packs (a 1-token row included)


def check_packing(
    model: torch.nn.Module,
    *,
    name: str = "the model",
    atol: float = 1e-4,
    seed: int = 0,
    position_ids: bool = True,
) -> float:
    """A row's logits are the same packed with any neighbours as alone: rows of ``PACK_ROWS`` tokens are run one by
    one, then packed into one sequence (``peftlab.data.pack``: ``position_ids`` restarting per row, no attention
    mask, ``use_cache=False``) in three orders; each row's slice must match its logits alone within ``atol``. The
    trainer packs a micro-batch's rows this way (``packing``), so a method that declares ``packable=True`` must pass.
    ``position_ids=False`` packs without them (rows then see each other: the check must fail; its own test).

    Returns the largest difference; raises ``AssertionError`` naming the row and order when it exceeds ``atol``."""
    from .data import pack

    vocab = int(getattr(model.config, "vocab_size", 256) or 256)
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in PACK_ROWS]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    worst = 0.0
    try:
        with torch.no_grad():
            alone = [model(input_ids=torch.tensor([r], device=device), use_cache=False).logits[0] for r in rows]
            k = len(rows)
            for order in (list(range(k)), list(reversed(range(k))), [(i * 2 + 1) % k for i in range(k)]):
                packed = pack([{"input_ids": rows[i], "labels": rows[i]} for i in order])
                kw = {"position_ids": packed["position_ids"].to(device)} if position_ids else {}
                out = model(input_ids=packed["input_ids"].to(device), use_cache=False, **kw).logits[0]
                at = 0
                for i in order:
                    n = len(rows[i])
                    d = _max_diff(out[at : at + n], alone[i])
                    worst = max(worst, d)
                    assert d <= atol, (
                        f"{name}: row {i} ({n} tokens) packed in order {order} has logits up to {d:.2e} away from "
                        f"the row alone; the kit allows atol={atol:g} (attention or the method must stay inside "
                        f"each packed row, or the method must declare packable=False with a pack_note)"
                    )
                    at += n
    finally:
        model.train(was_training)
    return worst


# --- adapters ---------------------------------------------------------------------------------------------------


def randomize_adapter(
    model: torch.nn.Module, name: str = "default", std: float = 0.1, seed: int = 0, head: bool = False
) -> None:
    """Overwrite every parameter adapter ``name`` trains (and, with ``head=True``, a new task head's) with
    ``N(0, std²)`` values from a generator seeded with ``seed``, so the adapter acts (many start as a no-op)."""
    params = dict(adapter_parameters(model, name))
    if head:
        params.update(task_head_parameters(model))
    _randomize(params.values(), std, seed)


def _randomize(params, std: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_((torch.randn(p.shape, generator=g) * std).to(p))


def train_steps(model: torch.nn.Module, params, batch: dict[str, torch.Tensor], steps: int, lr: float) -> list[float]:
    """Train ``params`` of ``model`` for ``steps`` AdamW steps at ``lr`` on the one ``batch`` (``model(**batch)`` must
    return a loss), in train mode; returns the loss of each step. The model is left in train mode."""
    opt = torch.optim.AdamW(list(params), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


# --- the real model ---------------------------------------------------------------------------------------------


def train_briefly(
    model,
    tokenizer,
    method: str,
    output_dir: str | Path,
    method_config: dict | None = None,
    steps: int = 12,
    **overrides: Any,
):
    """The plugin suites' short SmolLM2 run through the shared trainer: ``steps`` optimizer steps on batches of 8
    rows of ``capitals-json`` (at most 128 tokens), the loss evaluated on 16 held-out rows before and after (no
    evaluation in between). ``overrides`` replace any other ``peftlab.train.TrainArgs`` field (``learning_rate``,
    ``batch_size``, …). Prints the eval loss before → after (pytest shows it with ``-s`` or when the test fails);
    returns the trainer's ``TrainResult``."""
    from .train import TrainArgs, train

    args = dict(
        method=method,
        method_config=method_config or {},
        dataset="capitals-json",
        max_steps=steps,
        batch_size=8,
        max_length=128,
        output_dir=str(output_dir),
        eval_every=0,
        max_eval_samples=16,
    )
    result = train(TrainArgs(**{**args, **overrides}), model=model, tokenizer=tokenizer)
    print(f"{method}: eval loss {result.eval_loss_before:.3f} → {result.eval_loss_after:.3f} ({result.steps} steps)")
    return result


def base_eval_loss(model, tokenizer, rows: int = 16, dataset: str = "capitals-json") -> float:
    """The bare model's loss (no adapter active) on the first ``rows`` eval rows the trainer holds out of ``dataset``:
    what an adapter must beat, not just its own starting point."""
    from . import data as pdata
    from .train import eval_loss

    _, eval_rows = pdata.split_rows(pdata.load_rows(dataset), 0.1, 0)
    items = pdata.encode_rows(
        eval_rows[:rows], tokenizer, max_length=128, loss_on="assistant", task="CAUSAL_LM", labels=None
    )
    with active_adapters(model, None):
        return eval_loss(model, items, tokenizer.pad_token_id)


# --- the conformance kit ----------------------------------------------------------------------------------------


def _batch(task: str, vocab: int, seed: int = 0, batch: int = 2, length: int = 10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    out["labels"] = torch.randint(0, 2, (batch,), generator=g) if task == "SEQ_CLS" else ids.clone()
    return out


def _rows_name(name: str | None) -> str:
    return f"adapter {name!r}" if name else "no adapter (the base model)"


def check_method(
    method: str,
    config: dict[str, Any] | None = None,
    *,
    arch: str = "llama",
    task: str = "CAUSAL_LM",
    steps: int = 30,
    lr: float = 3e-2,
    tmp_path: str | Path | None = None,
    loss_drop: float = 0.9,
    atol: float = 1e-4,
) -> dict[str, Any]:
    """Run ``method`` through the plugin contract on a tiny random model, in this order:

    1. inject: the adapter is added; with no adapter active the outputs are the base model's;
    2. ``trainable_params`` declares some parameters, and they require gradients;
    3. ``steps`` AdamW steps at ``lr`` on one fixed batch (2 rows of 10 random tokens; random labels for
       ``SEQ_CLS``): the last loss is below ``loss_drop`` × the first;
    4. no parameter the method did not declare changed, and the outputs did;
    5. save → load into a fresh model → the same outputs;
    6. ``mergeable=True``: merge gives the same outputs, unmerge restores them;
    7. ``mixed_batch=True``: two adapters of the method on one model (``"a"``, the trained one; ``"b"``, a copy
       whose parameters are scaled elementwise by random factors in [0.5, 1.5]), and a batch of 3 rows using ``a`` /
       ``b`` / no adapter (``peftlab.mixed_batch``): each row's logits equal that row run alone with its adapter
       active (or none), and for ``CAUSAL_LM`` the rows' greedy replies equal those of the batch with that adapter
       active, with and without the KV cache;
    8. ``stackable=True``: ``a`` and ``b`` active together give finite outputs that differ from either alone, and
       for ``CAUSAL_LM`` the same greedy replies with and without the KV cache;
    9. ``CAUSAL_LM``: greedy generation of 8 tokens with the KV cache equals generation without it;
    10. ``packable=True`` and ``CAUSAL_LM``: the trained adapter keeps packed rows apart (``check_packing``: a row's
        logits packed with neighbours equal the row alone), when the tiny base model itself does (else skipped,
        reported as ``"base model does not pack"``).

    A method declaring ``mixed_batch=True`` but ``stackable=False`` fails: a mixed batch needs two adapters on
    one model, and core refuses a second adapter next to one that cannot stack.

    Args:
        method: the method's registered name (``peftlab methods`` lists them), or its handle.
        config: the method's config, as a dict of field values or a ``MethodConfig``; ``None`` = the defaults.
        arch: the tiny model (``peftlab.models.tiny_model``): ``"llama"`` (Linear layers, grouped-query attention),
            ``"gpt2"`` (Conv1D layers, fused QKV) or ``"bert"`` (an encoder, with ``task="SEQ_CLS"``).
        task: ``"CAUSAL_LM"`` or ``"SEQ_CLS"`` (a classifier whose new head trains and saves with the adapter).
        steps: optimizer steps in the training check (step 3); default 30.
        lr: AdamW's learning rate in the training check; default 3e-2. Methods whose parameters sit at unit scale
            (soft prompts) need larger steps to move in 30 steps; some oscillate at 3e-2 (LoRA: use 1e-2).
        tmp_path: where the adapter is saved (a new temporary folder when ``None``).
        loss_drop: the training check needs ``last loss < loss_drop × first loss``: the default 0.9 asks for a fall
            of at least 10%, 0.97 for 3%. Raise it only for a method that cannot fit random tokens much (a soft
            prompt on a random tiny model), and say why in the test.
        atol: the largest absolute difference of logits allowed where outputs must agree (no adapter active vs the
            base model, reload, merge, unmerge, mixed-batch rows), and the smallest that counts as a change
            (training, the second mixed-batch adapter, stacking).

    Returns:
        A report: ``method``, ``arch``, ``task``, ``trainable`` (parameter count), ``loss_first``, ``loss_last``,
        ``reload_max_diff``, ``merge_max_diff`` (mergeable methods), ``mixed_batch_max_diff`` (methods with
        ``mixed_batch=True``), ``stack_min_change`` (stackable methods: how far ``a`` and ``b`` together differ
        from the nearer of the two alone), ``generate`` = ``"ok"`` (``CAUSAL_LM``), and ``packing_max_diff``
        (packable ``CAUSAL_LM`` methods).

    Raises:
        AssertionError: at the first broken promise, naming the method, what was measured and the threshold.
    """
    handle = resolve_method(method)
    name = handle.name
    report: dict[str, Any] = {"method": name, "arch": arch, "task": task}
    torch.manual_seed(0)
    model = tiny_model(arch, task=task)
    vocab = model.config.vocab_size
    batch = _batch(task, vocab)
    base_logits = logits(model, batch["input_ids"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    # 1. inject; inactive = the base model
    add_adapter(model, handle, config)
    with active_adapters(model, None):
        d = _max_diff(logits(model, batch["input_ids"]), base_logits)
    assert d <= atol, (
        f"{name}: with no adapter active the outputs differ from the base model's by up to {d:.2e}; "
        f"the kit allows atol={atol:g} (an inactive adapter must not act)"
    )

    # 2. trainable params
    trainable = prepare_for_training(model)
    assert trainable, f"{name}: trainable_params returned nothing"
    frozen = [n for n, p in trainable.items() if not p.requires_grad]
    assert not frozen, f"{name}: {len(frozen)} declared trainable parameter(s) do not require grad, e.g. {frozen[0]}"
    report["trainable"] = sum(p.numel() for p in trainable.values())

    # 3. the loss falls
    losses = train_steps(model, trainable.values(), batch, steps, lr)
    model.eval()
    first, last = losses[0], losses[-1]
    report["loss_first"], report["loss_last"] = first, last
    if not last < first * loss_drop:
        fall = 1 - last / first if first else 0.0
        moved = f"fell {fall:.1%}" if fall >= 0 else f"rose {-fall:.1%}"
        raise AssertionError(
            f"{name}: loss {moved} ({first:.4g} → {last:.4g}) in {steps} AdamW steps at lr={lr:g}; the kit needs a "
            f"fall of at least {(1 - loss_drop) * 100:g}% (loss_drop={loss_drop:g}): try another lr or more steps"
        )

    # 4. only the declared params changed, and the outputs did
    trained_ids = {id(p) for p in trainable.values()}
    for n, p in model.named_parameters():
        if id(p) in trained_ids:
            continue
        key = n.replace(".base_layer", "")
        ref = before[key] if key in before and before[key].shape == p.shape else before.get(n)
        if ref is not None and not torch.equal(ref, p.detach()):
            raise AssertionError(
                f"{name}: {n} changed by up to {_max_diff(ref, p.detach()):.2e} during training although "
                f"trainable_params does not declare it (the kit's optimizer holds only declared parameters)"
            )
    adapted = logits(model, batch["input_ids"])
    d = _max_diff(adapted, base_logits)
    assert d > atol, (
        f"{name}: after training the outputs differ from the base model's by only {d:.2e}; the kit "
        f"needs more than atol={atol:g} (does the adapter act in forward?)"
    )

    # 5. save → load into a fresh model → identical outputs
    tmp = Path(tmp_path) if tmp_path else Path(tempfile.mkdtemp(prefix="peftlab-check-"))
    folder = save_adapter(model, tmp / f"{name}-adapter")

    def fresh_model() -> torch.nn.Module:
        m = tiny_model(arch, task=task)
        if getattr(model, "peftlab_new_modules", None):  # a trained task head travels with the adapter
            m.peftlab_new_modules = list(model.peftlab_new_modules)
        return m

    fresh = fresh_model()
    load_adapter(fresh, folder)
    d = _max_diff(logits(fresh, batch["input_ids"]), adapted)
    report["reload_max_diff"] = d
    assert d <= atol, (
        f"{name}: after save → load into a fresh model the outputs differ by up to {d:.2e}; the kit "
        f"allows atol={atol:g}"
    )

    # 6. merge gives the same outputs as unmerged
    if handle.capabilities.mergeable:
        merge_adapter(fresh)
        d = _max_diff(logits(fresh, batch["input_ids"]), adapted)
        report["merge_max_diff"] = d
        assert d <= atol, f"{name}: merged outputs differ from unmerged by up to {d:.2e}; the kit allows atol={atol:g}"
        unmerge_adapter(fresh)
        d = _max_diff(logits(fresh, batch["input_ids"]), adapted)
        assert d <= atol, (
            f"{name}: after unmerge the outputs differ from before the merge by up to {d:.2e}; the kit "
            f"allows atol={atol:g}"
        )

    # 7, 8. several adapters on one model
    _check_several_adapters(handle, fresh_model, folder, task, vocab, atol, report)

    # 9. generate with the KV cache == greedy decoding without it
    if task == "CAUSAL_LM":
        prompt = batch["input_ids"][:2, :6]
        cached, uncached = greedy(fresh, prompt, use_cache=True), greedy(fresh, prompt, use_cache=False)
        assert cached.shape[1] == 8, f"{name}: generate was asked for 8 new tokens and returned {cached.shape[1]}"
        assert torch.equal(cached, uncached), (
            f"{name}: greedy generation with the KV cache differs from generation without it:\n"
            f"  cached   {cached.tolist()}\n  uncached {uncached.tolist()}"
        )
        report["generate"] = "ok"

    # 10. packed rows stay apart
    if task == "CAUSAL_LM" and handle.capabilities.packable:
        try:
            check_packing(tiny_model(arch, task=task), name=f"the tiny {arch} base", atol=atol)
        except AssertionError:
            report["packing_max_diff"] = "base model does not pack"
        else:
            report["packing_max_diff"] = check_packing(fresh, name=name, atol=atol)
    return report


def _check_several_adapters(
    handle,
    fresh_model: Callable[[], torch.nn.Module],
    folder: Path,
    task: str,
    vocab: int,
    atol: float,
    report: dict[str, Any],
) -> None:
    """Steps 7 (mixed batches) and 8 (stacking) of ``check_method``."""
    name, caps = handle.name, handle.capabilities
    if caps.mixed_batch and not caps.stackable:
        raise AssertionError(
            f"{name}: capabilities say mixed_batch=True but stackable=False; a mixed batch needs two "
            f"adapters on one model, which core refuses for a method that cannot stack"
        )
    if not caps.stackable:
        return
    model = fresh_model()
    load_adapter(model, folder, "a")
    load_adapter(model, folder, "b")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in adapter_parameters(model, "b").values():
            p.mul_(torch.empty(p.shape).uniform_(0.5, 1.5, generator=g).to(p))
    x = random_ids(3, 10, seed=1, vocab=vocab)
    alone = {}
    for adapter in ("a", "b", None):
        with active_adapters(model, adapter):
            alone[adapter] = logits(model, x)
    d = _max_diff(alone["a"], alone["b"])
    assert d > atol, (
        f"{name}: adapter 'b' (adapter 'a' with its parameters scaled by random factors in [0.5, 1.5]) "
        f"changes the outputs of 'a' by only {d:.2e}; the kit needs more than atol={atol:g} (do the "
        f"parameters trainable_params declares act in forward?)"
    )

    if caps.mixed_batch:
        rows = ["a", "b", None]
        with mixed_batch(model, rows):
            mixed = logits(model, x)
        worst = 0.0
        for i, adapter in enumerate(rows):
            with active_adapters(model, adapter):
                single = logits(model, x[i : i + 1])
            d = _max_diff(mixed[i], single[0])
            worst = max(worst, d)
            assert d <= atol, (
                f"{name}: in a mixed batch (rows {rows}) row {i}, with {_rows_name(adapter)}, differs from running "
                f"that row alone with {_rows_name(adapter)} active by up to {d:.2e}; the kit allows atol={atol:g}"
            )
        report["mixed_batch_max_diff"] = worst
        if task == "CAUSAL_LM":
            prompt = x[:, :6]
            with mixed_batch(model, rows):
                cached, uncached = greedy(model, prompt, n=6), greedy(model, prompt, n=6, use_cache=False)
            assert torch.equal(cached, uncached), (
                f"{name}: in a mixed batch (rows {rows}) greedy generation with the KV cache differs from generation "
                f"without it:\n  cached   {cached.tolist()}\n  uncached {uncached.tolist()}"
            )
            for i, adapter in enumerate(rows):
                with active_adapters(model, adapter):
                    want = greedy(model, prompt, n=6)[i]
                assert torch.equal(cached[i], want), (
                    f"{name}: in a mixed batch (rows {rows}) row {i} generates {cached[i].tolist()}, but with "
                    f"{_rows_name(adapter)} active for the whole batch it generates {want.tolist()}"
                )

    with active_adapters(model, ["a", "b"]):
        both = logits(model, x)
    assert both.isfinite().all(), f"{name}: with adapters 'a' and 'b' both active the outputs are not finite"
    change = min(_max_diff(both, alone["a"]), _max_diff(both, alone["b"]))
    report["stack_min_change"] = change
    assert change > atol, (
        f"{name}: with adapters 'a' and 'b' both active the outputs differ from one of them alone by only "
        f"{change:.2e}; the kit needs more than atol={atol:g} (stackable=True promises that both act)"
    )
    if task == "CAUSAL_LM":
        prompt = x[:, :6]
        with active_adapters(model, ["a", "b"]):
            cached, uncached = greedy(model, prompt, n=6), greedy(model, prompt, n=6, use_cache=False)
        assert torch.equal(cached, uncached), (
            f"{name}: with adapters 'a' and 'b' both active greedy generation with the KV cache differs from "
            f"generation without it:\n  cached   {cached.tolist()}\n  uncached {uncached.tolist()}"
        )


# --- round trips with peft --------------------------------------------------------------------------------------


def check_peft_roundtrip(
    method: str,
    config: dict[str, Any] | None = None,
    *,
    arch: str = "llama",
    task: str = "CAUSAL_LM",
    make_model: Callable[[], torch.nn.Module] | None = None,
    peft_config: Any = None,
    inputs: tuple[torch.Tensor, torch.Tensor] | None = None,
    std: float = 0.1,
    seed: int = 0,
    prepare: Callable[[torch.nn.Module], None] | None = None,
    prepare_peft: Callable[[torch.nn.Module], None] | None = None,
    directions: Sequence[str] = ("to_peft", "from_peft"),
    claims: bool = True,
    generate: bool = True,
    new_tokens: int = 10,
    tmp_path: str | Path | None = None,
    atol: float = 1e-4,
    min_effect: float = 1e-3,
) -> dict[str, Any]:
    """Check that ``peft`` and peftlab load each other's adapters of ``method`` with the same outputs.

    ``"to_peft"``: an adapter of ``method`` with ``config`` is added to ``make_model()``, given random weights, saved
    by peftlab and loaded by ``peft.PeftModel.from_pretrained`` on another ``make_model()``: the logits on
    ``inputs`` agree (peft's extra virtual-token positions, if any, are dropped) and, for ``CAUSAL_LM`` with
    ``generate``, so do ``new_tokens`` greedy tokens. ``"from_peft"``: the same the other way: ``peft``'s
    ``get_peft_model`` with ``peft_config`` (by default the config peftlab just wrote), random weights, saved by peft,
    loaded by ``peftlab.load_adapter``. Only for methods whose ``peft_type`` peft has; peft (a test dependency) is
    imported here.

    Args:
        method: the method's registered name, or its handle.
        config: the method's config (dict or ``MethodConfig``; ``None`` = the defaults) for the peftlab side.
        arch, task: the tiny model (``peftlab.models.tiny_model``) used when ``make_model`` is ``None``.
        make_model: builds a fresh base model; called for each side, so it must give the same weights every call.
        peft_config: the ``peft`` config of the ``"from_peft"`` direction; ``None`` = peft's reading of the
            ``adapter_config.json`` peftlab wrote (with ``inference_mode=False``). Needs ``"to_peft"`` too when
            ``None``.
        inputs: ``(input_ids, attention_mask)``; default ``random_ids(2, 8, seed)`` with an all-ones mask. (peft's
            prompt-learning models put virtual tokens in front of left padding, peftlab right before the real
            tokens: for Prompt Tuning and P-Tuning compare unpadded rows.)
        std, seed: the random weights: every trainable parameter (the adapter's and a new task head's, on each side)
            is drawn from ``N(0, std²)`` with a generator seeded with ``seed``.
        prepare: replaces that randomisation on the peftlab side (called with the adapted model; e.g. a few
            training steps, or ``init_lora_weights=False`` in ``config`` and a no-op here).
        prepare_peft: replaces it on the peft side (called with the ``PeftModel``).
        directions: which of ``"to_peft"`` and ``"from_peft"`` to check.
        claims: whether peftlab must pick ``method`` by itself for peft's file (several methods may share a
            ``peft_type``; ``Method.claims_peft_config`` decides). ``False`` loads it with ``method=`` given.
        generate: also compare greedy generation (``CAUSAL_LM`` only).
        new_tokens: how many tokens to generate.
        tmp_path: where both adapters are saved (a new temporary folder when ``None``).
        atol: the largest absolute difference of logits allowed between the two libraries.
        min_effect: each randomised adapter must move the logits by more than this from the base model's, or a
            round trip would prove nothing.

    Returns:
        A report. ``"to_peft"``: ``to_peft_max_diff``, ``to_peft_effect`` (how far the adapter moves the logits),
        ``to_peft_extra_positions`` (``CAUSAL_LM``: the virtual-token positions peft's logits carry and peftlab's
        do not), ``peftlab_saved`` (the folder), ``peftlab_model`` (the adapted model), ``peft_model`` (the
        ``PeftModel`` that loaded it). ``"from_peft"``: ``from_peft_max_diff``, ``from_peft_effect``,
        ``from_peft_extra_positions``, ``peft_saved`` (the folder), ``peft_source`` (the ``PeftModel`` that saved
        it), ``loaded`` (the peftlab model that loaded it), ``loaded_adapter`` (the adapter name it got),
        ``loaded_as`` (the method peftlab loaded it as).

    Raises:
        AssertionError: naming the direction, what was measured and the threshold.
    """
    import peft

    handle = resolve_method(method)
    name = handle.name
    assert handle.peft_type in peft.PeftType.__members__, (
        f"{name}: peft has no PEFT type {handle.peft_type!r}; check_peft_roundtrip is for methods whose files peft "
        f"reads"
    )
    make = make_model or (lambda: tiny_model(arch, task=task))
    if inputs is None:
        x = random_ids(2, 8, seed)
        inputs = (x, torch.ones_like(x))
    x, mask = inputs
    tmp = Path(tmp_path) if tmp_path else Path(tempfile.mkdtemp(prefix="peftlab-peft-"))
    base = make()
    causal = model_task(base) == "CAUSAL_LM"
    base_logits = logits(base, x, mask)
    del base
    report: dict[str, Any] = {}

    def compare(direction: str, want_model, got_model) -> None:
        want, got = logits(want_model, x, mask), logits(got_model, x, mask)
        if want.dim() == 3:  # peft's prompt-learning models return logits for the virtual tokens too: drop them
            report[f"{direction}_extra_positions"] = max(want.shape[1], got.shape[1]) - x.shape[1]
            want, got = want[:, -x.shape[1] :], got[:, -x.shape[1] :]
        effect = _max_diff(want, base_logits)
        report[f"{direction}_effect"] = effect
        assert effect > min_effect, (
            f"{name} ({direction}): the randomised adapter moves the logits by only {effect:.2e} from the base "
            f"model's; the check needs more than min_effect={min_effect:g}, or a round trip proves nothing"
        )
        d = _max_diff(want, got)
        report[f"{direction}_max_diff"] = d
        assert d <= atol, (
            f"{name} ({direction}): peft's and peftlab's logits differ by up to {d:.2e}; the check allows atol={atol:g}"
        )
        if generate and causal:
            a, b = greedy(want_model, x, mask, n=new_tokens), greedy(got_model, x, mask, n=new_tokens)
            assert torch.equal(a, b), (
                f"{name} ({direction}): greedy generation differs:\n  saved by "
                f"{'peftlab' if direction == 'to_peft' else 'peft'} {a.tolist()}\n"
                f"  loaded {b.tolist()}"
            )

    if "to_peft" in directions:
        ours = make()
        add_adapter(ours, handle, config)
        if prepare is None:
            randomize_adapter(ours, std=std, seed=seed, head=True)
        else:
            prepare(ours)
        ours.eval()
        folder = save_adapter(ours, tmp / "peftlab-saved")
        theirs = peft.PeftModel.from_pretrained(make(), str(folder))
        theirs.eval()
        report.update(peftlab_saved=folder, peftlab_model=ours, peft_model=theirs)
        compare("to_peft", ours, theirs)

    if "from_peft" in directions:
        if peft_config is None:
            assert "peftlab_saved" in report, "check_peft_roundtrip: from_peft alone needs a peft_config"
            peft_config = peft.PeftConfig.from_pretrained(str(report["peftlab_saved"]))
            peft_config.inference_mode = False
            peft_config.base_model_name_or_path = None  # peft would warn that it renames peftlab's record of the base
        source = peft.get_peft_model(make(), peft_config)
        if prepare_peft is None:
            _randomize([p for p in source.parameters() if p.requires_grad], std, seed)
        else:
            prepare_peft(source)
        source.eval()
        source.save_pretrained(str(tmp / "peft-saved"))
        loaded = make()
        adapter = load_adapter(loaded, tmp / "peft-saved", method=None if claims else name)
        loaded_as = adapter_state(loaded).adapters[adapter].method
        report.update(
            peft_saved=tmp / "peft-saved",
            peft_source=source,
            loaded=loaded,
            loaded_adapter=adapter,
            loaded_as=loaded_as,
        )
        assert loaded_as == name, (
            f"{name} (from_peft): peftlab loaded peft's {handle.peft_type} adapter as "
            f"{loaded_as!r}: its claims_peft_config did not claim it"
        )
        loaded.eval()
        compare("from_peft", source, loaded)
    return report


# --- whether peft itself works here ------------------------------------------------------------------------------


def skip_if_peft_fails(method: str, task: str = "CAUSAL_LM") -> None:
    """Skip the calling test (``pytest.skip``) when ``peft``, the reference of an interop test, fails at ``method``'s
    ``peft_type`` on ``task`` with the installed transformers, naming both versions and what failed.

    The check is measured, not read from a version table: once per session and ``(peft_type, task)`` it builds
    ``peft.get_peft_model`` of ``responsive_tiny_model(task)`` with random weights and runs it, and for
    ``CAUSAL_LM`` compares peft's greedy ``generate`` with greedy decoding by its own forward, step by step
    (e.g. peft 0.21 on transformers 5.24, which renamed the cache argument ``past_key_values`` to ``cache``:
    prefix tuning of a classifier raises, and prompt-learning ``generate`` re-injects its prompt on every step).
    """
    reason = _peft_failure(resolve_method(method).peft_type, task)
    if reason is not None:
        import pytest

        pytest.skip(reason)


@functools.cache
def _peft_failure(peft_type: str, task: str) -> str | None:
    import peft
    import transformers

    def stepwise(model, ids: torch.Tensor, n: int) -> torch.Tensor:
        seq = ids
        for _ in range(n):
            seq = torch.cat([seq, logits(model, seq)[:, -1:].argmax(-1)], dim=1)
        return seq[:, ids.shape[1] :]

    base = responsive_tiny_model(task)
    renamed = (
        ", which renamed the cache argument past_key_values to cache,"
        if "cache" in inspect.signature(base.base_model.forward).parameters
        else ""
    )
    where = f"peft {peft.__version__} on transformers {transformers.__version__}{renamed} at {peft_type} ({task})"
    try:
        config = peft.PEFT_TYPE_TO_CONFIG_MAPPING[peft_type](task_type=task, num_virtual_tokens=4)
        model = peft.get_peft_model(base, config)
        _randomize([p for p in model.parameters() if p.requires_grad], 1.0, 0)
        model.eval()
        x = random_ids(2, 6, seed=0)
        if task != "CAUSAL_LM":
            logits(model, x)
            return None
        got, want = greedy(model, x, n=6), stepwise(model, x, 6)
    except Exception as e:  # whatever peft raises is the reason to skip
        return f"{where} raises {type(e).__name__}: {e}"
    if not torch.equal(got, want):
        return f"{where}: its greedy generate differs from greedy decoding by its own forward, step by step"
    return None
