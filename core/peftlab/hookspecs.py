"""Every hook peftlab calls. Read this file first when writing a plugin.

There are two kinds of hook:

* ``register_methods`` is called on every installed plugin (entry-point group ``peftlab``).
  A plugin calls ``register(...)`` once per PEFT method it provides.
* The *method hooks* below it are implemented by the object handed to ``register``. Core calls
  them **only on the object that owns the method in use** (one registration per method), so an
  implementation never checks which method it is serving, and one plugin cannot answer for
  another's method. Each method hook returns one value (pluggy ``firstresult``).

Arguments every method hook may receive:

* ``model`` – the ``transformers`` model (``PreTrainedModel``) being adapted. A hook changes only
  this model. ``peftlab.adapter_state(model)`` gives the shared routing state (which adapters are
  active, and per-row adapter choice for mixed batches).
* ``config`` – an instance of the method's config dataclass (a ``peftlab.MethodConfig``).
* ``adapter_name`` – the name of the adapter slot (``"default"`` unless several are loaded).

An implementation may declare any subset of a hook's arguments (pluggy passes what it asks for).
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("peftlab")
hookimpl = pluggy.HookimplMarker("peftlab")


@hookspec
def register_methods(register):
    """Declare the PEFT methods a plugin provides.

    ``register(method)`` takes an object with the attributes ``name`` (str, unique across all
    installed plugins), ``config_class`` (a ``peftlab.MethodConfig`` dataclass), ``peft_type``
    (the value written to ``adapter_config.json``), ``capabilities`` (``peftlab.Capabilities``)
    and ``description`` (one line), plus ``@hookimpl`` methods for the method hooks below.
    Subclass ``peftlab.Method`` to get sensible defaults. Called once when plugins load.
    """


# --- method hooks: called only on the registered object of the method in use -------------------


@hookspec(firstresult=True)
def inject(model, config, adapter_name):
    """Add the adapter ``adapter_name`` to ``model`` in place. Required.

    New parameters are created on the device and in the dtype of the weights they adapt.
    Raise ``peftlab.MethodError`` with a clear message when the model does not fit the config
    (e.g. target modules that match nothing). Returns ``None``.
    """


@hookspec(firstresult=True)
def trainable_params(model, config, adapter_name):
    """Return ``{qualified_name: nn.Parameter}`` of the parameters this adapter trains. Required.

    Core freezes every other parameter of the model before training, so this is the whole
    trainable set for the method.
    """


@hookspec(firstresult=True)
def save(model, config, adapter_name):
    """Return a ``peftlab.AdapterWeights`` holding this adapter's tensors. Required.

    ``tensors`` use the PEFT on-disk key format (no adapter name in the keys, e.g.
    ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``) and are written to
    ``adapter_model.safetensors``; ``extra`` holds state PEFT does not keep (an encoder, an MLP
    reparameterisation) and is written beside it so training can resume.
    """


@hookspec(firstresult=True)
def load(model, config, adapter_name, weights):
    """Copy ``weights`` (a ``peftlab.AdapterWeights`` as returned by ``save``, or read from a
    PEFT adapter folder, whose ``extra`` may be empty) into the already-injected adapter.
    Raise ``peftlab.AdapterMismatchError`` naming the tensor when shapes or keys do not fit.
    Returns ``None``.
    """


@hookspec(firstresult=True)
def merge(model, config, adapter_name):
    """Fold the adapter into the base weights so inference costs nothing extra.

    Only called for methods whose capabilities say ``mergeable=True``. After merging, the adapter
    no longer acts in forward (no double counting) until ``unmerge``. Returns ``None``.
    """


@hookspec(firstresult=True)
def unmerge(model, config, adapter_name):
    """Undo ``merge`` (up to floating-point rounding). Returns ``None``."""


@hookspec(firstresult=True)
def unload(model, config, adapter_name):
    """Remove the adapter's modules from ``model``, restoring the layers it wrapped, so the model is a
    plain ``transformers`` model again (after ``merge`` the merged weights stay). Optional: without it,
    ``peftlab merge`` cannot write a merged model for this method. Returns ``None``.
    """


@hookspec(firstresult=True)
def load_base_model(source, config, task, dtype, device):
    """Load the base model this method needs, or return ``None`` to let core load it normally.

    For methods that need a special base (a 4-bit quantized one, say). ``source`` is a local
    folder of safetensors weights (core has already resolved Hub ids and the GGUF default), ``task``
    is ``"CAUSAL_LM"`` or ``"SEQ_CLS"``, ``dtype`` a ``torch.dtype`` and ``device`` a string.
    Raise ``peftlab.MethodError`` with what to install when a dependency or the hardware is missing.
    """


@hookspec(firstresult=True)
def extra_loss(model, config, adapter_name):
    """Return a scalar tensor the trainer adds to the task loss (a regulariser), or ``None``."""


@hookspec(firstresult=True)
def make_optimizer(model, config, adapter_name, params, lr, weight_decay):
    """Return the optimizer the trainer should use for ``params`` (a list of the adapter's trainable
    parameters, already on their device), or ``None`` for the default ``torch.optim.AdamW``.

    For methods whose training wants a special optimizer (QLoRA's paged AdamW on CUDA, which pages optimizer
    state to CPU memory under pressure). ``lr`` and ``weight_decay`` are the trainer's settings; the trainer
    wraps the result in its LR schedule and checkpoints its ``state_dict``.
    """


@hookspec(firstresult=True)
def on_train_step(model, config, adapter_name, step, total_steps):
    """Called by the trainer after each optimizer step, before gradients are cleared.

    For methods that change shape or budget during training (AdaLoRA's rank reallocation).
    ``step`` counts optimizer steps from 1. Returns ``None``.
    """


@hookspec(firstresult=True)
def soft_prompt(model, config, adapter_name):
    """Return the learned virtual-token embeddings ``[num_virtual_tokens, hidden]`` in the model's
    input-embedding space, or ``None`` when the method has none (used for "nearest tokens")."""
