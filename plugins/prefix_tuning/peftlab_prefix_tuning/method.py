"""Prefix tuning's registration: the shared KV-prefix hooks (``peftlab.kit.KVPrefixMethod``) with an MLP
reparameterising the prefix while training (Li & Liang 2021)."""

from __future__ import annotations

import warnings

import torch

from peftlab import copy_into
from peftlab.kit import PROMPT_KEY, KVGeometry, KVPrefixMethod

from .config import PrefixTuningConfig
from .encoder import PrefixEncoder


class PrefixTuning(KVPrefixMethod):
    name = "prefix_tuning"
    config_class = PrefixTuningConfig
    description = "Prefix tuning: trainable key/value prefixes in every layer, trained through an MLP"
    # measured on SmolLM2 (capitals-json, 20 steps, batch 8): 3e-3 → eval loss 1.67 → 0.09; 5e-3 → 0.12;
    # 1e-2 → 0.25 with loss spikes; 3e-2 diverges (Adam moves every MLP weight, the prefix moves fan-in times more)
    train_defaults = {"learning_rate": 3e-3}

    def complete(self, config: PrefixTuningConfig, geometry: KVGeometry) -> None:
        if config.encoder_hidden_size is None:
            config.encoder_hidden_size = geometry.token_dim  # peft's default

    def make_encoder(
        self, config: PrefixTuningConfig, geometry: KVGeometry, device: torch.device, dtype: torch.dtype
    ) -> PrefixEncoder:
        return PrefixEncoder(
            config.num_virtual_tokens,
            geometry.token_dim,
            config.encoder_hidden_size,
            geometry.prefix_width,
            config.init_weights == "zero",
            device,
            dtype,
        )

    def extra_state(self, encoder: PrefixEncoder) -> dict[str, torch.Tensor]:
        return dict(encoder.state_dict()) if encoder.reparameterised else {}

    def load_prefix(self, encoder: PrefixEncoder, prefix: torch.Tensor, extra: dict[str, torch.Tensor]) -> None:
        if not extra:  # made by peft (or saved after collapsing): P alone, the MLP is gone for good
            encoder.collapse(prefix)
            return
        copy_into(dict(encoder.named_parameters()), extra, what=f"{self.name} (MLP state beside the adapter)")
        with torch.no_grad():
            agree = torch.allclose(encoder().float(), prefix.float().to(encoder().device), rtol=1e-3, atol=1e-5)
        if not agree:  # the PEFT file is what peft would run: it wins over a stale MLP
            warnings.warn(
                f"{self.name}: the saved MLP does not reproduce {PROMPT_KEY}; using {PROMPT_KEY} and dropping the MLP",
                stacklevel=2,
            )
            encoder.collapse(prefix)
