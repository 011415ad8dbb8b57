"""The whole plugin contract: every hook peftlab calls and every attribute it reads. Read this file first.

A plugin is a package with an entry point in the group ``peftlab`` naming a module that implements
``register_methods``. It calls ``register(method)`` once per PEFT method it provides. ``method`` is an
object (subclass ``peftlab.Method``) with

* the **declarations** in ``ATTRIBUTES`` below (name, config class, capabilities, ...): core reads these and
  nothing else from it, and checks them when it registers the method;
* ``@hookimpl`` methods for the **method hooks** below. Core calls them **only on the object that owns the
  method in use** (one registration per method), so an implementation never checks which method it is
  serving, and one plugin cannot answer for another's method. Each returns one value (pluggy ``firstresult``).
  ``inject``, ``trainable_params``, ``save`` and ``load`` are required (``peftlab.Method`` gives ``save``/``load``
  for a method that implements ``tensor_map``); a method whose capabilities say ``mergeable`` needs ``merge``,
  one that says ``scalable`` needs ``scale``.

Arguments a method hook may receive:

* ``model`` – the ``transformers`` model (``PreTrainedModel``) being adapted. A hook changes only this model.
  ``peftlab.adapter_state(model)`` gives the shared routing state (which adapters are active, and per-row
  adapter choice for mixed batches). Core records on the model, for plugins to read: ``peftlab_base_id`` (the
  base model's id, written to saved adapters), ``peftlab_source`` (the folder or Hub id it was loaded from: load
  its tokenizer from here) and ``peftlab_new_modules`` (paths of task heads core added, which train anyway).
* ``config`` – an instance of the method's config dataclass (a ``peftlab.MethodConfig``).
* ``adapter_name`` – the name of the adapter slot (``"default"`` unless several are loaded).

An implementation may declare any subset of a hook's arguments (pluggy passes what it asks for). The kit in
``peftlab.kit`` has what most methods need to implement them (module swap, per-row routing, target matching,
virtual tokens, KV prefixes); ``peftlab.testing.check_method`` checks a method against this contract.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("peftlab")
hookimpl = pluggy.HookimplMarker("peftlab")

# --- what a method declares: the attributes core reads from the registered object ----------------------
# name → (type, what it is for). ``peftlab.Method`` declares each with this type and a default.
ATTRIBUTES: dict[str, tuple[str, str]] = {
    "name": (
        "str",
        "Unique across installed plugins (a clash fails at load, naming both plugins): the "
        "method's name in `peftlab train --method`, the app and `peftlab.json`.",
    ),
    "config_class": (
        "type[MethodConfig]",
        "The method's config dataclass (subclass `peftlab.MethodConfig`, fields "
        "made with `peftlab.option`): the schema of the CLI flags, the app's form "
        "and the method's keys in `adapter_config.json`.",
    ),
    "peft_type": (
        "str",
        "Written to `adapter_config.json`; peft's own name where peft has the method (`LORA`), "
        "else one of the method's own (`BOTTLENECK_ADAPTER`).",
    ),
    "capabilities": (
        "Capabilities",
        "What the method can do (`peftlab.Capabilities`): mergeable, stackable, "
        "kv_cache, virtual_tokens, needs_quantized_base, mixed_batch, task_types, "
        "combinations (the weighted-merge types its `combine` computes), and the "
        "sentences shown when merge, stacking or combining is refused. Core and the "
        "app act on these; the kit checks the promises.",
    ),
    "description": ("str", "One line, shown by `peftlab methods` and in the app."),
    "train_defaults": (
        "dict[str, Any]",
        '`TrainArgs` settings that suit the method, e.g. `{"learning_rate": '
        "3e-1}` for prompt tuning; the user's own settings win. Keys must be "
        "`TrainArgs` fields.",
    ),
    "module_prefix": (
        "str",
        "What PEFT writes before a module path in this method's files: `base_model.model.` "
        "for tuner methods (LoRA), `base_model.` for prompt-learning ones. Core saves a "
        "trained task head under it; `Method.peft_key(path, tensor)` builds a tensor's key "
        "with it.",
    ),
}


@hookspec
def register_methods(register):
    """Declare the PEFT methods a plugin provides.

    ``register(method)`` takes an object with the declarations in ``ATTRIBUTES`` plus ``@hookimpl`` methods for
    the method hooks below. Subclass ``peftlab.Method`` to get the defaults. Called once when plugins load; a
    malformed declaration (no name, a config class that is not a ``MethodConfig`` dataclass, a required hook
    missing, ...) is refused with ``peftlab.PluginConflictError`` naming the plugin and the problem.
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

    Each name must be the parameter's name in ``model.named_parameters()`` (the trainer, checkpoints and the kit
    rely on it). Core freezes every other parameter of the model before training, so this is the whole
    trainable set for the method.
    """


@hookspec(firstresult=True)
def save(model, config, adapter_name):
    """Return a ``peftlab.AdapterWeights`` holding this adapter's tensors. Required.

    ``tensors`` use the PEFT on-disk key format: the full key, ``module_prefix`` included, adapter name and
    wrapper parts (``.base_layer``) left out, e.g. ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``
    (``Method.peft_key(path, "lora_A.weight")`` builds it); core writes them to ``adapter_model.safetensors`` as
    they are; ``extra`` holds state PEFT does not keep (an encoder, an MLP
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
def scale(model, config, adapter_name, weight):
    """Multiply the adapter's effect by ``weight`` from now on (it replaces the previous weight; it does not compound).

    Only called for methods whose capabilities say ``scalable=True``; ``peftlab.adapters.set_weight`` calls it
    (and records the weight on the adapter's state entry). ``weight`` is a float or a 0-dim tensor: ``1`` = the
    adapter as trained, ``0`` = outputs equal to the model without it, ``0.5`` = half its update (for LoRA exactly
    half ΔW). A tensor is kept as it is, not copied or detached, so when it requires grad, gradients of a loss reach
    it through forward (learned mixtures train mixing weights this way); move it to the adapter's device and dtype at
    use (``w.to(update)``), which keeps the graph. The weight acts in forward and in ``merge``/``unmerge`` (``merge``
    folds the weighted update; core unmerges, rescales and merges again when the weight of a merged adapter
    changes). Saving is unaffected: ``save`` writes the adapter as trained. Raise ``peftlab.MethodError`` when this
    adapter cannot take the weight (its config trains something that cannot be weighted). Returns ``None``.
    """


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


@hookspec(firstresult=True)
def claims_peft_config(data):
    """Whether this method loads a PEFT ``adapter_config.json`` (``data``, a dict) of its ``peft_type`` that was
    written without peftlab's metadata, i.e. by ``peft``. Optional: without it, the method claims every config
    of its ``peft_type``. Several methods may share a ``peft_type`` (prefix tuning and P-Tuning v2 are both
    ``PREFIX_TUNING``; QLoRA writes ``LORA``): exactly one should claim a given config. Returns a bool.
    """


@hookspec(firstresult=True)
def combine(parents, weights, combination, options):
    """Merge several saved adapters into one new plain adapter (a weighted merge, peft's ``add_weighted_adapter``).

    Only called for a method whose capabilities list ``combination`` in ``combinations``. ``parents`` is a list of
    ``peftlab.io.AdapterFiles`` (from ``peftlab.read_adapter``; tensors on the CPU), each of this method, or already
    brought to this method's ``peft_type`` by its own method's ``combine`` of itself alone with ``"cat"`` (how the
    hub merges a LoRA-family mix: an AdaLoRA parent becomes a plain LoRA first); ``weights`` one float per parent;
    ``combination`` one of this method's ``combinations``; ``options`` a dict of ``svd_rank``, ``density``,
    ``majority_sign`` (``"total"`` | ``"frequency"``) and ``seed``. Returns ``(config, tensors)``: the new adapter's
    ``adapter_config.json`` keys of its method with ``peft_type`` (core adds ``task_type`` and the base) and its
    tensors in PEFT keys. Raise ``peftlab.MethodError`` naming the parent that cannot be combined.
    """
