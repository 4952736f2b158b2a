"""The width control: the pretrained base with a wider MLP, at least as large as TaH+.

TaH+ holds more parameters than Standard (its LoRA and decider), so a fair Standard control
must hold at least as many. Pretraining a second, wider base would double the dominant cost of
the reproduction, so the control grows the *same* pretrained base instead: every MLP gets
extra hidden units whose output weights start at zero, so the grown model computes exactly the
base's function at step 0 (checked in the tests), and fine-tuning is free to use the new
units. Same depth, same data, same steps as Standard; only the width differs.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

__all__ = [
    "count_checkpoint_params",
    "widen",
    "widen_mlp",
    "widen_to_count",
    "widen_to_match",
]


def count_checkpoint_params(path: str | os.PathLike) -> int:
    """Parameters of a checkpoint as ``tah eval`` counts them (TaH: base + LoRA + decider)."""
    from tah.model.loading import load_model

    model = load_model(path)
    return int(sum(p.numel() for p in model.parameters()))


def widen(model: Any, intermediate: int, seed: int, fresh_rows: str = "init") -> Any:
    """A copy of ``model`` whose MLPs have ``intermediate`` hidden units; the new units' output
    weights are zero, so the copy computes exactly the model's function at the start.

    The new units' gate / up rows are the wide model's own initialisation (drawn after
    ``torch.manual_seed(seed)``) with ``fresh_rows="init"`` (the two-hop study), or drawn again
    N(0, initializer_range) in parameter order with ``fresh_rows="normal"`` (the tiny study):
    both kept so that each study's published numbers reproduce.
    """
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    old = int(config.intermediate_size)
    config.intermediate_size = int(intermediate)
    torch.manual_seed(seed)
    wide = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = model.state_dict()
    std = float(getattr(config, "initializer_range", 0.02))
    with torch.no_grad():
        for name, param in wide.named_parameters():
            source = state[name]
            if source.shape == param.shape:
                param.copy_(source)
            elif name.endswith(("gate_proj.weight", "up_proj.weight")):  # [intermediate, hidden]
                if fresh_rows == "normal":
                    param.normal_(0.0, std)
                param[:old].copy_(source)
            elif name.endswith("down_proj.weight"):  # [hidden, intermediate]: new columns 0
                param.zero_()
                param[:, :old].copy_(source)
            else:  # pragma: no cover - Llama/Qwen3 have no other widened tensor
                raise AssertionError(f"unexpected shape change in {name}")
    wide.generation_config = model.generation_config
    return wide


def widen_mlp(base: str | os.PathLike, output: str | os.PathLike, extra: int, seed: int = 0) -> int:
    """Save ``base`` with ``extra`` more MLP units per layer (zero output weights); returns
    the new parameter count."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tah.io import atomic_dir

    if extra < 1:
        from tah.errors import ConfigError

        raise ConfigError(f"extra MLP units must be >= 1, got {extra}")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    wide = widen(model, int(model.config.intermediate_size) + int(extra), seed, "normal")
    tokenizer = AutoTokenizer.from_pretrained(base)
    with atomic_dir(output) as tmp:
        wide.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    return int(sum(p.numel() for p in wide.parameters()))


def widen_to_match(base: str, reference: str, output: str, seed: int = 0) -> dict[str, Any]:
    """Widen ``base`` just enough to hold at least as many parameters as ``reference``."""
    return widen_to_count(base, count_checkpoint_params(reference), output, seed, str(reference))


def widen_to_count(
    base: str, target: int, output: str, seed: int = 0, reference: str = ""
) -> dict[str, Any]:
    """Widen ``base`` just enough to hold at least ``target`` parameters (``reference`` names
    where the target came from, for the record written to ``output/widen.json``)."""
    from transformers import AutoConfig

    from tah.io import write_json

    have = count_checkpoint_params(base)
    config = AutoConfig.from_pretrained(base)
    per_unit = 3 * int(config.hidden_size) * int(config.num_hidden_layers)
    extra = max(1, math.ceil((target - have) / per_unit))
    params = widen_mlp(base, output, extra, seed=seed)
    record = {
        "base": str(base),
        "base_params": have,
        "reference": reference,
        "reference_params": int(target),
        "intermediate_size": int(config.intermediate_size) + extra,
        "params": params,
    }
    write_json(Path(output) / "widen.json", record)
    return record
