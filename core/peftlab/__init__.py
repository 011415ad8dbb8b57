"""peftlab: parameter-efficient fine-tuning with every method a plugin.

The public API a plugin or a script uses is re-exported here; ``peftlab.hookspecs`` documents
the hooks and ``peftlab.testing.check_method`` checks a method against the contract.
"""

__version__ = "0.1.0"

from .adapters import (  # noqa: E402
    adapter_parameters,
    add_adapter,
    count_parameters,
    make_config,
    merge_adapter,
    merge_and_unload,
    model_task,
    prepare_for_training,
    unmerge_adapter,
)
from .errors import (  # noqa: E402
    AdapterError,
    AdapterMismatchError,
    ConfigError,
    MethodError,
    PeftlabError,
    PluginConflictError,
    UnknownMethodError,
)
from .hookspecs import hookimpl  # noqa: E402
from .io import load_adapter, read_adapter, save_adapter  # noqa: E402
from .method import AdapterWeights, Capabilities, Method, MethodConfig, copy_into, option  # noqa: E402
from .plugins import get_method, methods, registry  # noqa: E402
from .state import active_adapters, adapter_state, mixed_batch, set_active  # noqa: E402

__all__ = [
    "AdapterError",
    "AdapterMismatchError",
    "AdapterWeights",
    "Capabilities",
    "ConfigError",
    "Method",
    "MethodConfig",
    "MethodError",
    "PeftlabError",
    "PluginConflictError",
    "UnknownMethodError",
    "active_adapters",
    "adapter_parameters",
    "adapter_state",
    "add_adapter",
    "copy_into",
    "count_parameters",
    "get_method",
    "hookimpl",
    "load_adapter",
    "make_config",
    "merge_adapter",
    "merge_and_unload",
    "methods",
    "mixed_batch",
    "model_task",
    "option",
    "prepare_for_training",
    "read_adapter",
    "registry",
    "save_adapter",
    "set_active",
    "unmerge_adapter",
]
