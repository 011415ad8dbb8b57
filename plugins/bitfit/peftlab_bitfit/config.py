"""BitFit's config: the schema for the CLI, the UI form and ``adapter_config.json``.

``peft`` has no BitFit method, so the keys are peftlab's own (``peft_type: BITFIT``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from peftlab import ConfigError, MethodConfig, option

GROUPS = ("all", "attention", "ffn")


@dataclass
class BitFitConfig(MethodConfig):
    biases: Literal["all", "attention", "ffn"] = option(
        "all",
        help="Which bias terms train: all (every layer's biases, LayerNorm β included), attention "
        "(the attention sublayers' biases) or ffn (the feed-forward sublayers' biases)",
    )
    target_modules: list[str] | str | None = option(
        None,
        help="Only these modules' biases: names (a module matches when its path ends with one) or a regex "
        "(full match on the path). Empty = every module of the chosen group that has or can get a bias",
    )
    add_missing_biases: bool = option(
        True,
        help="Give linear layers that have no bias (the Llama family has none) a zero-initialised bias to "
        "train, so the adapted model starts exactly as the base model",
    )

    def __post_init__(self) -> None:
        if self.biases not in GROUPS:
            raise ConfigError(f"biases must be one of {', '.join(GROUPS)}, got {self.biases!r}")
        if isinstance(self.target_modules, tuple | set):
            self.target_modules = sorted(self.target_modules)
        if isinstance(self.target_modules, list):
            if not all(isinstance(t, str) and t for t in self.target_modules):
                raise ConfigError(f"target_modules must be module names, got {self.target_modules!r}")
            self.target_modules = self.target_modules or None
        elif self.target_modules is not None and not (isinstance(self.target_modules, str) and self.target_modules):
            raise ConfigError(f"target_modules must be a list of names or a regex, got {self.target_modules!r}")
        if isinstance(self.target_modules, str):
            try:
                re.compile(self.target_modules)
            except re.error as e:
                raise ConfigError(f"target_modules {self.target_modules!r} is not a valid regex: {e}") from None
        if not isinstance(self.add_missing_biases, bool):
            raise ConfigError(f"add_missing_biases must be true or false, got {self.add_missing_biases!r}")
