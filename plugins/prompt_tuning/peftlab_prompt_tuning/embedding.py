"""Prompt Tuning's parameters: k free embeddings ``P ∈ R^{k×d}`` and the three ways to start them."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from peftlab import MethodError


class PromptEmbedding(nn.Module):
    """``P``: the k virtual-token embeddings, in the model's input-embedding space (Lester et al. 2021)."""

    def __init__(self, num_virtual_tokens: int, token_dim: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.num_virtual_tokens = num_virtual_tokens
        self.embedding = nn.Embedding(num_virtual_tokens, token_dim, device=device, dtype=dtype)  # N(0, 1), as peft
        self.deferred_init: Callable[[], None] | None = None  # TEXT init waits until the prompt is first used

    def materialize(self) -> None:
        """Run a deferred init now (a loaded adapter cancels it: its tokenizer is never needed)."""
        init, self.deferred_init = self.deferred_init, None
        if init is not None:
            init()

    def forward(self) -> torch.Tensor:
        if self.deferred_init is not None:
            self.materialize()
        return self.embedding.weight  # [k, d]: prepended to the input embeddings as they are


def init_token_ids(num_virtual_tokens: int, text_ids: list[int]) -> list[int]:
    """The init text's token ids repeated (or cut) to exactly k, as peft does."""
    if not text_ids:
        raise MethodError("prompt_tuning_init_text tokenizes to no tokens; give a non-empty text")
    reps = math.ceil(num_virtual_tokens / len(text_ids))
    return (text_ids * reps)[:num_virtual_tokens]


def load_init_tokenizer(source: str, kwargs: dict | None):
    """The tokenizer for TEXT init. ``source`` may be the SmolLM2 alias, a folder or a Hub id."""
    from transformers import AutoTokenizer

    from peftlab.models import resolve_source

    kwargs = dict(kwargs or {})
    kwargs.pop("trust_remote_code", None)  # never run a tokenizer's code because an adapter config asked for it
    where = source if Path(source).is_dir() else resolve_source(source)[0]  # a folder may hold only a tokenizer
    try:
        return AutoTokenizer.from_pretrained(where, **kwargs)
    except (OSError, ValueError) as e:
        raise MethodError(f"cannot load the tokenizer {source!r} for prompt_tuning_init=TEXT: {e}") from None


@torch.no_grad()
def initialise(
    prompt: PromptEmbedding,
    word_embeddings: nn.Embedding,
    init: str,
    text_ids: list[int] | None = None,
    generator: torch.Generator | None = None,
) -> None:
    """Start ``P`` from random vocabulary embeddings (SAMPLE_VOCAB), a text's embeddings (TEXT) or N(0, 1) (RANDOM)."""
    k = prompt.num_virtual_tokens
    weight = word_embeddings.weight
    if init == "SAMPLE_VOCAB":
        ids = torch.randint(0, weight.shape[0], (k,), generator=generator).to(weight.device)
    elif init == "TEXT":
        ids = torch.tensor(init_token_ids(k, list(text_ids or [])), dtype=torch.long, device=weight.device)
        if int(ids.max()) >= weight.shape[0]:
            raise MethodError(
                f"the init text has token id {int(ids.max())} but the model's vocabulary has only "
                f"{weight.shape[0]} entries: is tokenizer_name_or_path the model's tokenizer?"
            )
    else:
        return  # RANDOM: nn.Embedding's own N(0, 1) init
    prompt.embedding.weight.copy_(word_embeddings(ids).to(prompt.embedding.weight.dtype))
