"""LoRA adapters as the compact decoder holds them, and how they are read from PEFT weights.

This module holds the adapter side of the engine's decoder: the projections LoRA may target,
one adapter on one projection (:class:`LoraPair`), the adapters of projections that share a
fused base matrix packed into two matrix products (:class:`LoraGroup`), and the reading of
PEFT-named tensors and scales (``base_model.model.``, ``.base_layer``, ``lora_A.<adapter>``,
``module.scaling``) into plain A/B matrices keyed by canonical Hugging Face module name. The
decoder (``model.py``) decides where the groups sit and when they apply.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from tah.errors import UnsupportedModelError

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraPair:
    """One LoRA adapter on one projection: delta(x) = scale * B(A(x))."""

    a: Tensor  # (r, in)
    b: Tensor  # (out, r)
    scale: float


@dataclass
class LoraGroup:
    """The LoRA adapters of projections that share an input and a fused base matrix
    (q/k/v, gate/up): one product with the stacked A matrices, one with the stacked B matrices.

    delta[..., out_lo:out_hi] = scale * B(A(x)) for each adapted projection, zero elsewhere.
    Each B is stored already multiplied by its scale, on the block diagonal of ``b`` (zeros
    elsewhere), so the whole group is two matrix products whatever the scales: the per-step
    cost of a deep token is a fixed number of small products, and on the engine's hot path
    (:meth:`CompactDecoder._add_lora`) the second one adds into the base output in place.
    """

    a: Tensor  # (sum of ranks, in): the A matrices stacked
    b: Tensor  # (out, sum of ranks): scale * B per projection on the block diagonal
    at: Tensor = field(init=False)  # views for torch.mm / addmm (no copies)
    bt: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.at, self.bt = self.a.t(), self.b.t()

    @classmethod
    def build(cls, pairs: list[LoraPair | None], sizes: list[int]) -> LoraGroup | None:
        present = [(p, i) for i, p in enumerate(pairs) if p is not None]
        if not present:
            return None
        offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        a = torch.cat([p.a for p, _ in present], dim=0)
        b = a.new_zeros((sum(sizes), a.shape[0]))
        r_lo = 0
        for pair, i in present:
            r = pair.a.shape[0]
            # Scales are alpha / r, usually a power of two: folding them in is then exact.
            b[offsets[i] : offsets[i] + sizes[i], r_lo : r_lo + r] = pair.b * pair.scale
            r_lo += r
        return cls(a, b)

    def delta(self, x: Tensor) -> Tensor:
        return F.linear(F.linear(x, self.a), self.b)


def canonical_name(name: str) -> str:
    """Strip PEFT wrapping from a parameter name (``base_model.model.``, ``.base_layer``)."""
    if name.startswith("base_model.model."):
        name = name[len("base_model.model.") :]
    return name.replace(".base_layer.", ".")


_LORA_RE = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")


def split_lora(
    tensors: Mapping[str, Tensor], adapter: str | None = None
) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]]]:
    """Separate base weights from LoRA A/B matrices, keyed by canonical module name."""
    base: dict[str, Tensor] = {}
    lora: dict[str, dict[str, Tensor]] = {}
    for name, tensor in tensors.items():
        name = canonical_name(name)
        match = _LORA_RE.match(name)
        if match is None:
            if ".lora_" in name:
                raise UnsupportedModelError(
                    f"unsupported adapter tensor {name!r} (only plain LoRA A/B, no DoRA/embeddings)"
                )
            base[name] = tensor
            continue
        if adapter is not None and match["adapter"] not in (None, adapter):
            continue
        lora.setdefault(match["module"], {})[match["ab"]] = tensor
    return base, lora


def peft_lora_scales(hf_model) -> dict[str, float]:
    """Per-module LoRA scale (alpha / r, or what PEFT computed) of the active adapter."""
    scales: dict[str, float] = {}
    for name, module in hf_model.named_modules():
        scaling = getattr(module, "scaling", None)
        if not isinstance(scaling, dict) or not hasattr(module, "lora_A"):
            continue
        if getattr(module, "use_dora", {}).get("default", False):
            raise UnsupportedModelError(f"{name} uses DoRA, which the engine does not support")
        if "default" in scaling:
            scales[canonical_name(name)] = float(scaling["default"])
    return scales
