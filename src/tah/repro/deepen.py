"""The depth control: the pretrained base with more decoder layers, computing the same function.

TaH buys accuracy by running hard tokens through the network again, i.e. with more effective
depth. The fair question is then whether a plain model simply made deeper does as well. Training
a deeper base from scratch would double the dominant cost of the reproduction, so the control
grows the *same* pretrained base instead (the sibling of :mod:`tah.repro.widen`, which grows the
width): every new decoder layer is a copy of an existing one whose two residual writers, the
attention output projection ``self_attn.o_proj`` and the MLP output projection
``mlp.down_proj`` (and their biases, if any), are zero. In a pre-norm decoder (Llama, Qwen) a
layer only ever *adds* to the residual stream, so such a layer adds exactly nothing and the grown
model computes exactly the base's function at step 0 (checked in the tests, with padding).

The new layers can still learn. The gradient of a zeroed output projection is its input
activations times the upstream gradient, which is not zero, so ``o_proj`` / ``down_proj`` move
on the first step. What does get a zero gradient at step 0 is everything *behind* them in the
new layer (q / k / v, gate / up, the two norms), since it reaches the loss only through the zero
weights; from the second step on, with the output projections no longer zero, it trains too.
Starting each new layer as a copy (rather than a fresh initialisation) gives those weights
sensible values to start from.

Placements: ``"interleave"`` puts the ``factor - 1`` copies of layer ``i`` right after it
(``i, i', i'', i+1, ...``); ``"append"`` keeps the base's layers first and adds the copies of
its last layer at the end; ``"cycle"`` appends copies of the whole stack in order
(``0, 1, ..., L-1, 0', 1', ...``), a second pass through the network unrolled into new layers,
which is the depth TaH's second pass gets (the two-hop study's deep control).
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

__all__ = ["DEEPENABLE_MODEL_TYPES", "PLACEMENTS", "deepen", "deepen_checkpoint", "layer_sources"]

PLACEMENTS = ("interleave", "append", "cycle")
# Pre-norm decoders whose layers write to the residual stream only through o_proj and down_proj.
DEEPENABLE_MODEL_TYPES = ("llama", "qwen2", "qwen3")
# The residual writers of a layer, zeroed in each new one.
_ZEROED = (
    "self_attn.o_proj.weight",
    "self_attn.o_proj.bias",
    "mlp.down_proj.weight",
    "mlp.down_proj.bias",
)
_LAYER = re.compile(r"^(.*\blayers\.)(\d+)\.(.+)$")


def layer_sources(layers: int, factor: int, placement: str) -> list[tuple[int, bool]]:
    """For each layer of the deepened model, ``(base layer it copies, whether it is new)``."""
    from tah.errors import ConfigError

    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
        raise ConfigError(f"deepen factor must be an integer >= 2, got {factor!r}")
    if placement not in PLACEMENTS:
        raise ConfigError(
            f"deepen placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}"
        )
    if placement == "interleave":
        return [(i, k > 0) for i in range(layers) for k in range(factor)]
    if placement == "cycle":  # the base's stack again after itself: a second pass, unrolled
        return [(i % layers, i >= layers) for i in range(factor * layers)]
    extra = [(layers - 1, True)] * ((factor - 1) * layers)
    return [(i, False) for i in range(layers)] + extra


def _check_deepenable(model: Any) -> None:
    from tah.errors import UnsupportedModelError

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in DEEPENABLE_MODEL_TYPES:
        raise UnsupportedModelError(
            f"cannot deepen a {model_type!r} model without changing its function; supported "
            f"families: {', '.join(DEEPENABLE_MODEL_TYPES)}"
        )


def deepen(model: Any, factor: int = 2, placement: str = "interleave") -> Any:
    """A copy of ``model`` (a Hugging Face causal LM) with ``factor`` times its decoder layers;
    the new layers are copies of base layers with zero output projections, so the copy computes
    exactly the model's function at the start (see the module docstring for why they still
    learn). The new model is float32, built from the new config so each layer's ``layer_idx``
    (its KV-cache slot) is its own."""
    import torch
    from transformers import AutoModelForCausalLM

    _check_deepenable(model)
    layers = int(model.config.num_hidden_layers)
    sources = layer_sources(layers, factor, placement)
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = len(sources)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [model.config.layer_types[src] for src, _ in sources]
    deep = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = model.state_dict()
    with torch.no_grad():
        for name, param in deep.named_parameters():
            match = _LAYER.match(name)
            if match is None:
                param.copy_(state[name])
                continue
            prefix, index, rest = match.groups()
            src, new = sources[int(index)]
            if new and rest in _ZEROED:
                param.zero_()
            else:
                param.copy_(state[f"{prefix}{src}.{rest}"])
    deep.generation_config = copy.deepcopy(model.generation_config)
    return deep


def _load_base(base: str | os.PathLike) -> tuple[Any, Any]:
    """The base model (float32) and tokenizer, or an error naming ``base``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tah.errors import CheckpointError, ConfigError
    from tah.model.checkpoint import CONFIG_NAME
    from tah.model.loading import check_model_source

    check_model_source(str(base))
    if (Path(base).expanduser() / CONFIG_NAME).is_file():
        raise ConfigError(
            f"{base} is a TaH checkpoint; deepen the plain base model it was trained from"
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(base)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"could not load the base model from {base}: {exc}") from None
    return model, tokenizer


def deepen_checkpoint(
    base: str | os.PathLike,
    output: str | os.PathLike,
    factor: int = 2,
    placement: str = "interleave",
) -> dict[str, Any]:
    """Save ``base`` deepened ``factor`` times (model and tokenizer, atomically) to ``output``,
    with a ``deepen.json`` record of what was done; returns that record."""
    from tah.io import atomic_dir, write_json

    layer_sources(1, factor, placement)  # bad arguments fail before the model loads
    model, tokenizer = _load_base(base)
    deep = deepen(model, factor, placement)
    record = {
        "base": str(base),
        "base_layers": int(model.config.num_hidden_layers),
        "layers": int(deep.config.num_hidden_layers),
        "factor": int(factor),
        "placement": placement,
        "base_params": int(sum(p.numel() for p in model.parameters())),
        "params": int(sum(p.numel() for p in deep.parameters())),
    }
    with atomic_dir(output) as tmp:
        deep.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        write_json(tmp / "deepen.json", record)
    return record
