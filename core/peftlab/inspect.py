"""Looking inside adapters: the vocabulary tokens nearest a learned soft prompt."""

from __future__ import annotations

import torch

from .adapters import entry
from .errors import MethodError


@torch.no_grad()
def nearest_tokens(model, tokenizer, adapter_name: str = "default", top_k: int = 5) -> list[list[tuple[str, float]]]:
    """For each virtual token of a soft prompt, the ``top_k`` vocabulary tokens by cosine similarity."""
    handle, e = entry(model, adapter_name)
    prompt = handle.hook("soft_prompt")(model=model, config=e.config, adapter_name=adapter_name)
    if prompt is None:
        raise MethodError(
            f"adapter {adapter_name!r} ({handle.name}) has no soft prompt in the input-embedding "
            "space, so it has no nearest tokens"
        )
    vocab = model.get_input_embeddings().weight.float()
    sims = torch.nn.functional.normalize(prompt.float(), dim=-1) @ torch.nn.functional.normalize(vocab, dim=-1).T
    scores, ids = sims.topk(top_k, dim=-1)
    return [[(tokenizer.decode([int(i)]), float(s)) for s, i in zip(srow, irow)] for srow, irow in zip(scores, ids)]
