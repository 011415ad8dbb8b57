"""Prompt Tuning's registration: the hooks core calls for adapters of method ``prompt_tuning``."""

from __future__ import annotations

import functools

from torch import nn

from peftlab import AdapterWeights, MethodError, copy_into, hookimpl
from peftlab.kit import PROMPT_KEY as KEY
from peftlab.kit import VirtualTokenMethod, VirtualTokens, check_prompt_tensor, token_dim

from .config import PromptTuningConfig
from .embedding import PromptEmbedding, initialise, load_init_tokenizer


class PromptTuning(VirtualTokenMethod):
    name = "prompt_tuning"
    config_class = PromptTuningConfig
    peft_type = "PROMPT_TUNING"
    description = "Prompt Tuning: k trainable virtual-token embeddings prepended to the input"
    train_defaults = {"learning_rate": 3e-1}

    def make_source(self, model: nn.Module, config: PromptTuningConfig, adapter_name: str) -> PromptEmbedding:
        words = model.get_input_embeddings()
        weight = words.weight
        prompt = PromptEmbedding(config.num_virtual_tokens, config.token_dim, device=weight.device, dtype=weight.dtype)
        if config.prompt_tuning_init != "TEXT":
            initialise(prompt, words, config.prompt_tuning_init)
            return prompt
        source = config.tokenizer_name_or_path or getattr(model, "peftlab_source", None)
        if not source:
            raise MethodError(
                "prompt_tuning_init=TEXT needs tokenizer_name_or_path: this model was not loaded by "
                "peftlab.load_model, so its tokenizer is unknown"
            )
        if config.tokenizer_name_or_path is None:  # record it: peft refuses a TEXT config without one
            config.tokenizer_name_or_path = getattr(model, "peftlab_base_id", None) or source
        prompt.deferred_init = functools.partial(_text_init, prompt, words, source, config)
        return prompt

    @hookimpl
    def save(self, model, adapter_name: str) -> AdapterWeights:
        prompt = VirtualTokens.source(model, adapter_name)
        prompt.materialize()
        return AdapterWeights({KEY: prompt.embedding.weight.detach().clone().contiguous()})

    @hookimpl
    def load(self, model, config: PromptTuningConfig, adapter_name: str, weights: AdapterWeights) -> None:
        prompt = VirtualTokens.source(model, adapter_name)
        check_prompt_tensor(weights.tensors.get(KEY), config, token_dim(model), self.name)
        prompt.deferred_init = None  # the saved prompt replaces any init (and its tokenizer)
        copy_into({KEY: prompt.embedding.weight}, weights.tensors, what=self.name)


def _text_init(prompt: PromptEmbedding, words: nn.Embedding, source: str, config: PromptTuningConfig) -> None:
    tokenizer = load_init_tokenizer(source, config.tokenizer_kwargs)
    ids = tokenizer(config.prompt_tuning_init_text)["input_ids"]
    initialise(prompt, words, "TEXT", ids)
