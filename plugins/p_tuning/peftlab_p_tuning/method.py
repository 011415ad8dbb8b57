"""P-Tuning's registration: the hooks core calls for adapters of method ``p_tuning``.

Built on the virtual-token machinery in ``peftlab.kit`` (as Prompt Tuning is): only how the ``[k, d]`` prompt
is made differs.
"""

from __future__ import annotations

import warnings

from torch import nn

from peftlab import AdapterMismatchError, AdapterWeights, copy_into, hookimpl
from peftlab.kit import PROMPT_KEY as KEY
from peftlab.kit import VirtualTokenMethod, VirtualTokens, check_prompt_tensor, prompt_of, token_dim

from .config import PromptEncoderConfig
from .encoder import PromptEncoder

EXTRA = "prompt_encoder."  # the encoder's own state, in peftlab_extra.safetensors, so training can resume


class PTuning(VirtualTokenMethod):
    name = "p_tuning"
    config_class = PromptEncoderConfig
    peft_type = "P_TUNING"
    description = "P-Tuning: virtual tokens produced by a trainable prompt encoder (MLP or BiLSTM+MLP)"
    train_defaults = {"learning_rate": 3e-3}

    def make_source(self, model: nn.Module, config: PromptEncoderConfig, adapter_name: str) -> PromptEncoder:
        if config.encoder_hidden_size is None:
            config.encoder_hidden_size = config.token_dim  # recorded: peft needs a number to rebuild the encoder
        if config.encoder_reparameterization_type == "MLP" and config.encoder_num_layers != 2:
            warnings.warn(
                "P-Tuning's MLP encoder always has 3 linear layers (as in peft); encoder_num_layers="
                f"{config.encoder_num_layers} is ignored",
                stacklevel=2,
            )
        weight = model.get_input_embeddings().weight
        return PromptEncoder(
            config.num_virtual_tokens,
            config.token_dim,
            config.encoder_hidden_size,
            config.encoder_reparameterization_type,
            config.encoder_num_layers,
            config.encoder_dropout,
            device=weight.device,
            dtype=weight.dtype,
        )

    @hookimpl
    def save(self, model, adapter_name: str) -> AdapterWeights:
        encoder = VirtualTokens.source(model, adapter_name)
        extra = (
            {}
            if encoder.frozen_output
            else {EXTRA + k: v.detach().clone().contiguous() for k, v in encoder.state_dict().items()}
        )
        return AdapterWeights({KEY: prompt_of(encoder)}, extra)

    @hookimpl
    def load(self, model, config: PromptEncoderConfig, adapter_name: str, weights: AdapterWeights) -> None:
        encoder = VirtualTokens.source(model, adapter_name)
        check_prompt_tensor(weights.tensors.get(KEY), config, token_dim(model), self.name)
        state = {k.removeprefix(EXTRA): v for k, v in weights.extra.items() if k.startswith(EXTRA)}
        if not state:  # a peft-made adapter: only the encoder's output was kept
            encoder.freeze_output(weights.tensors[KEY])
            return
        if encoder.frozen_output:
            raise AdapterMismatchError(f"{self.name} adapter {adapter_name!r} already serves fixed prompt embeddings")
        copy_into(dict(encoder.state_dict(keep_vars=True)), state, what=f"{self.name} prompt encoder")
