"""The exceptions peftlab raises. Every message names the thing that is wrong."""

from __future__ import annotations


class PeftlabError(Exception):
    """Base class of every peftlab error."""


class ConfigError(PeftlabError, ValueError):
    """A method config, CLI flag or ``adapter_config.json`` value is invalid."""


class UnknownMethodError(PeftlabError, KeyError):
    """No installed plugin provides the requested method."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0])


class PluginConflictError(PeftlabError):
    """Two plugins claim the same method name, or a plugin registers something malformed."""


class MethodError(PeftlabError):
    """A method cannot be applied to this model (no target module matched, missing dependency...)."""


class AdapterError(PeftlabError):
    """An adapter folder is missing, unreadable, unsafe (pickle) or corrupt."""


class AdapterMismatchError(AdapterError):
    """An adapter does not fit the model it is loaded into (another base model, shapes differ)."""
