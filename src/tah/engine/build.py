"""Building an engine from what users have: a ``TaHForCausalLM``, a plain Hugging Face causal
LM, or a checkpoint directory; and the engine's private copy of the decider.

Why apart from ``engine.py``: reading a model's settings (its EOS ids, decider, depth and
threshold) is set-up work that the running engine never looks at again.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from tah.engine.model import CompactDecoder
from tah.errors import ConfigError, UnsupportedModelError


def from_tah_model(cls: type, model, **kwargs: Any):
    """An engine of class ``cls`` over an in-memory ``TaHForCausalLM``."""
    cfg = model.config
    if cfg.attention_mode != "duo":
        raise UnsupportedModelError(
            f"the engine implements duo-causal attention only, not {cfg.attention_mode!r}"
        )
    from tah.model.generation import resolve_eos

    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    decoder = CompactDecoder.from_hf_model(
        model.base_model, device=device, dtype=dtype, max_positions=kwargs.get("max_len")
    )
    kwargs.setdefault("tokenizer", model.tokenizer)
    kwargs.setdefault("eos_token_ids", resolve_eos(model, None))
    decider = model.decider
    threshold = float(getattr(decider, "threshold", cfg.threshold))
    return cls(
        decoder,
        decider=decider,
        max_iter=cfg.max_iter,
        threshold=threshold,
        topk=cfg.topk,
        residual=cfg.residual,
        **kwargs,
    )


def from_hf_model(cls: type, hf_model, tokenizer: Any = None, **kwargs: Any):
    """An engine of class ``cls`` over a plain causal LM (a Standard model)."""
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    decoder = CompactDecoder.from_hf_model(
        hf_model, device=device, dtype=dtype, max_positions=kwargs.get("max_len")
    )
    if "eos_token_ids" not in kwargs:
        eos = getattr(getattr(hf_model, "generation_config", None), "eos_token_id", None)
        eos = eos if eos is not None else getattr(hf_model.config, "eos_token_id", None)
        kwargs["eos_token_ids"] = [] if eos is None else (eos if isinstance(eos, list) else [eos])
    return cls(decoder, tokenizer=tokenizer, **kwargs)


def from_pretrained(cls: type, path: str, threshold: float | None = None, **kwargs: Any):
    """An engine of class ``cls`` over a TaH checkpoint (or a plain HF directory)."""
    from tah.model.loading import load_model

    model = load_model(path, threshold=threshold)
    kwargs.setdefault("model_name", str(path).rstrip("/").split("/")[-1])
    return from_tah_model(cls, model, **kwargs)


def setup_decider(decider, max_iter: int, device: torch.device):
    """``(kind, decider)``: "never", "always" (no module) or "mlp" with a private eval copy."""
    if max_iter <= 1 or decider is None:
        return "never", None
    name = getattr(decider, "name", None)
    if name == "never":
        return "never", None
    if name == "always":
        return "always", None
    if name == "label":
        raise ConfigError(
            "the 'label' decider needs oracle labels and cannot serve requests; load the "
            "model with decider='mlp', 'always' or 'never'"
        )
    if name != "mlp":
        raise UnsupportedModelError(f"unknown decider {type(decider).__name__}")
    if getattr(decider, "reads_previous_token", False) and max_iter > 2:
        # Deeper decisions would need the previous token's depth-1 state after that row's
        # carried state has moved on; model.generate supports it.
        raise UnsupportedModelError(
            "the serving engine supports a decider that reads the previous token "
            "(decider_previous_token=true) with max_iter 2 only; use "
            "TaHForCausalLM.generate (as `tah generate` and `tah eval --backend tah` do)"
        )
    # A private eval-mode copy: the caller's module (maybe in training mode) stays as is.
    decider = copy.deepcopy(decider).eval()
    decider.to(device=device)
    for p in decider.parameters():
        p.requires_grad_(False)
    return "mlp", decider
