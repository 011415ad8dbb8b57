"""The plugin author's kit: what every method plugin would otherwise write again.

* module surgery (``modules.py``): ``replace_module``, ``keep`` (plain attributes off the module tree),
  ``share_state`` / ``rows`` / ``for_rows`` (per-row routing), ``placement`` (device and dtype of new weights),
  ``context_size``, ``layer_stack``;
* target selection by peft's rules (``targets.py``): ``match_targets``, ``target_matches``, ``is_linear``;
* virtual tokens in front of the input (``virtual_tokens.py``, ``virtual_method.py``): ``VirtualTokens``, and
  ``VirtualTokenMethod`` / ``PromptLearningConfig`` for Prompt Tuning, P-Tuning and the like;
* key/value prefixes in the attention cache (``kv_prefix.py``, ``kv_method.py``, ``kv_geometry.py``):
  ``KVPrefix``, and ``KVPrefixMethod`` / ``KVPrefixConfig`` for prefix tuning, P-Tuning v2 and the like.

Core never imports this package; plugins do (``from peftlab.kit import match_targets``).
"""

from .kv_geometry import KVGeometry
from .kv_method import KVPrefixConfig, KVPrefixMethod, prefix_encoder
from .kv_prefix import KVPrefix, PrefixSlots
from .modules import context_size, for_rows, keep, layer_stack, placement, replace_module, rows, share_state
from .targets import ALL_LINEAR, is_conv1d, is_linear, match_targets, output_heads, target_matches
from .virtual_method import (
    PROMPT_KEY,
    VIRTUAL_TOKEN_CAPABILITIES,
    PromptLearningConfig,
    VirtualTokenMethod,
    check_prompt_tensor,
    positive_or_none,
    prompt_of,
    token_dim,
)
from .virtual_tokens import VirtualTokens

__all__ = [
    "ALL_LINEAR",
    "KVGeometry",
    "KVPrefix",
    "KVPrefixConfig",
    "KVPrefixMethod",
    "PROMPT_KEY",
    "PrefixSlots",
    "PromptLearningConfig",
    "VIRTUAL_TOKEN_CAPABILITIES",
    "VirtualTokenMethod",
    "VirtualTokens",
    "check_prompt_tensor",
    "context_size",
    "for_rows",
    "is_conv1d",
    "is_linear",
    "keep",
    "layer_stack",
    "match_targets",
    "output_heads",
    "placement",
    "positive_or_none",
    "prefix_encoder",
    "prompt_of",
    "replace_module",
    "rows",
    "share_state",
    "target_matches",
    "token_dim",
]
