"""What every virtual-token method shares: the config keys peft writes for them, and a ``Method`` base that
injects a prompt source, trains it, checks shapes, shows the prompt and merges saved prompts (``combine``).

A method (Prompt Tuning, P-Tuning) subclasses ``VirtualTokenMethod`` and implements ``make_source`` (its
``nn.Module`` whose ``forward()`` returns the ``[k, d]`` prompt) plus ``save``/``load``; ``VirtualTokens``
(``virtual_tokens.py``) puts the prompt in front of the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import AdapterMismatchError, ConfigError, MethodError
from ..hookspecs import hookimpl
from ..method import Capabilities, Method, MethodConfig
from ..schema import option
from .virtual_tokens import SOURCES, VirtualTokens

PROMPT_KEY = "prompt_embeddings"  # peft's one tensor for every prompt-learning adapter


def positive_or_none(name: str, value: Any) -> None:
    """Refuse a config value that must be a positive integer or empty (empty: read from the model)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{name} must be a positive integer or empty (taken from the model), got {value!r}")


@dataclass
class PromptLearningConfig(MethodConfig):
    """The keys PEFT's ``PromptLearningConfig`` writes for every virtual-token method.

    ``token_dim``, ``num_attention_heads`` and ``num_layers`` are filled in from the model when the
    adapter is injected (as ``peft`` does); ``token_dim`` is then checked against the model.
    """

    num_virtual_tokens: int = option(20, help="Number of virtual tokens k prepended to every input")
    token_dim: int | None = option(
        None,
        help="Hidden size of the model's input embeddings (empty = read from "
        "the model; a different value means the adapter is for another model)",
    )
    num_transformer_submodules: int | None = option(
        None, help="1 for decoder-only and encoder-only models (empty = 1); encoder-decoder models are not supported"
    )
    num_attention_heads: int | None = option(None, help="Recorded for PEFT compatibility (empty = from the model)")
    num_layers: int | None = option(None, help="Recorded for PEFT compatibility (empty = from the model)")

    def __post_init__(self) -> None:
        if (
            not isinstance(self.num_virtual_tokens, int)
            or isinstance(self.num_virtual_tokens, bool)
            or self.num_virtual_tokens < 1
        ):
            raise ConfigError(f"num_virtual_tokens must be a positive integer, got {self.num_virtual_tokens!r}")
        for name in ("token_dim", "num_transformer_submodules", "num_attention_heads", "num_layers"):
            positive_or_none(name, getattr(self, name))
        if self.num_transformer_submodules not in (None, 1):
            raise ConfigError(
                f"num_transformer_submodules={self.num_transformer_submodules} is for encoder-decoder "
                "models, which peftlab's virtual-token methods do not support; use 1"
            )


PROMPT_COMBINATIONS = ("linear", "cat")  # what combine() of a saved prompt (or KV prefix) computes

VIRTUAL_TOKEN_CAPABILITIES = Capabilities(
    mergeable=False,
    stackable=True,
    kv_cache=False,
    virtual_tokens=True,
    mixed_batch=True,
    merge_note="a soft prompt lives in the input (extra virtual tokens), not in any weight, so there is "
    "nothing to fold into the model",
    scale_note="a soft prompt adds virtual tokens that attention reads, not an update that can be scaled: "
    "weight 0 would still leave k (zeroed) tokens in the input, not the model without the prompt",
    combinations=PROMPT_COMBINATIONS,
    packable=False,
    pack_note="the virtual tokens go in front of each row, so packed rows would share one prompt and one "
    "row's positions would follow another's: trained on length-grouped padded batches",
)


def combine_prompts(parents: list, weights: list[float], combination: str, method: str) -> torch.Tensor:
    """The merged ``prompt_embeddings`` of saved prompt-learning adapters: ``linear`` = Σ wᵢ Pᵢ (equal
    ``num_virtual_tokens`` needed), ``cat`` = the parents' virtual tokens one after another, each parent's scaled
    by its weight (k = Σ kᵢ). Computed in float32, returned in the first parent's dtype."""
    if combination not in PROMPT_COMBINATIONS:
        raise MethodError(f"{method} adapters combine by {', '.join(PROMPT_COMBINATIONS)}, not {combination!r}")
    prompts = []
    for p in parents:
        others = sorted(k for k in p.weights.tensors if k != PROMPT_KEY)
        if others:
            raise MethodError(
                f"{p.path}: the {method} adapter also holds {', '.join(others)} (a task head?): only the prompt "
                f"{PROMPT_KEY!r} can be combined"
            )
        t = p.weights.tensors.get(PROMPT_KEY)
        if t is None or t.dim() != 2:
            raise MethodError(f"{p.path}: the {method} adapter has no [k, width] {PROMPT_KEY!r} tensor to combine")
        prompts.append(t)
    widths = {t.shape[1] for t in prompts}
    if len(widths) > 1:
        listed = "; ".join(f"{p.path}: {t.shape[1]}" for p, t in zip(parents, prompts, strict=True))
        raise MethodError(f"the {method} prompts have different widths ({listed}): they are for different models")
    scaled = [w * t.float() for w, t in zip(weights, prompts, strict=True)]
    if combination == "cat":
        return torch.cat(scaled).to(prompts[0].dtype).contiguous()
    lengths = [t.shape[0] for t in prompts]
    if len(set(lengths)) > 1:
        listed = "; ".join(f"{p.path}: {k}" for p, k in zip(parents, lengths, strict=True))
        raise MethodError(
            f"linear needs one num_virtual_tokens for every {method} parent ({listed}): use cat to concatenate "
            "the virtual tokens instead"
        )
    return torch.stack(scaled).sum(0).to(prompts[0].dtype).contiguous()


def token_dim(model: nn.Module) -> int:
    """The width of the model's input embeddings, the space virtual tokens live in."""
    return int(model.get_input_embeddings().weight.shape[1])


def fill_from_model(model: nn.Module, config: PromptLearningConfig, method: str) -> None:
    """Fill the model-derived keys (as peft does) and refuse a config made for another hidden size."""
    d = token_dim(model)
    if config.token_dim is None:
        config.token_dim = d
    elif config.token_dim != d:
        raise AdapterMismatchError(
            f"this {method} adapter was made for a model with hidden size {config.token_dim}, but this model's "
            f"hidden size is {d}: virtual tokens only fit the model they were trained for"
        )
    if config.num_transformer_submodules is None:
        config.num_transformer_submodules = 1
    cfg = model.config
    if config.num_attention_heads is None:
        config.num_attention_heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None)
    if config.num_layers is None:
        config.num_layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)


def check_prompt_tensor(saved: torch.Tensor | None, config: PromptLearningConfig, d: int, method: str) -> None:
    """A clear error for a ``prompt_embeddings`` tensor that cannot be this adapter's."""
    if saved is None:
        raise AdapterMismatchError(f"{method} adapter has no {PROMPT_KEY} tensor")
    if saved.dim() != 2:
        raise AdapterMismatchError(
            f"{method} adapter tensor prompt_embeddings has shape {tuple(saved.shape)}, "
            f"expected [num_virtual_tokens, hidden size]"
        )
    if saved.shape[1] != d:
        raise AdapterMismatchError(
            f"{method} adapter tensor prompt_embeddings has hidden size {saved.shape[1]} but this model's hidden "
            f"size is {d}: the adapter was made for another base model"
        )
    if saved.shape[0] != config.num_virtual_tokens:
        raise AdapterMismatchError(
            f"{method} adapter tensor prompt_embeddings holds {saved.shape[0]} virtual tokens but its config says "
            f"num_virtual_tokens={config.num_virtual_tokens}"
        )


def prompt_of(source: nn.Module) -> torch.Tensor:
    """The ``[k, d]`` prompt a source gives at inference (eval mode: no encoder dropout), detached."""
    training = source.training
    source.eval()
    try:
        with torch.no_grad():
            return source().detach().clone().contiguous()
    finally:
        source.train(training)


class VirtualTokenMethod(Method):
    """Base registration of a virtual-token method: subclasses say how the ``[k, d]`` prompt is made."""

    capabilities = VIRTUAL_TOKEN_CAPABILITIES
    module_prefix = "base_model."  # peft's prompt-learning layout: a task head is saved as base_model.<head>.*

    def make_source(self, model: nn.Module, config: PromptLearningConfig, adapter_name: str) -> nn.Module:
        raise NotImplementedError

    @hookimpl
    def inject(self, model, config: PromptLearningConfig, adapter_name: str) -> None:
        fill_from_model(model, config, self.name)
        VirtualTokens.add(model, adapter_name, self.make_source(model, config, adapter_name))

    @hookimpl
    def trainable_params(self, model, config, adapter_name: str) -> dict[str, nn.Parameter]:
        source = VirtualTokens.source(model, adapter_name)
        getattr(source, "materialize", lambda: None)()  # a deferred init runs before training starts
        return {f"{SOURCES}.{adapter_name}.{n}": p for n, p in source.named_parameters()}

    @hookimpl
    def soft_prompt(self, model, adapter_name: str) -> torch.Tensor:
        return prompt_of(VirtualTokens.source(model, adapter_name))

    @hookimpl
    def combine(self, parents: list, weights: list[float], combination: str, options: dict) -> tuple[dict, dict]:
        """Merge saved prompts (``combine_prompts``). Every virtual-token adapter saves its ``[k, d]`` prompt as
        it enters the model (P-Tuning: the encoder's output), so the merged adapter is a plain prompt table: a
        ``PROMPT_TUNING`` adapter whatever the parents' method (an encoder's weights cannot be averaged into an
        encoder giving the averaged prompt), loaded by peftlab's and peft's prompt tuning."""
        prompt = combine_prompts(parents, weights, combination, self.name)
        first = parents[0].config
        config = {
            "peft_type": "PROMPT_TUNING",
            "num_virtual_tokens": int(prompt.shape[0]),
            "token_dim": int(prompt.shape[1]),
            "num_transformer_submodules": first.num_transformer_submodules or 1,
            "num_attention_heads": first.num_attention_heads,
            "num_layers": first.num_layers,
            "prompt_tuning_init": "RANDOM",  # the saved prompt replaces any init; RANDOM needs no tokenizer
        }
        return config, {PROMPT_KEY: prompt}
