"""The TaH attention function, registered with transformers' public ``AttentionInterface``.

The wrapped Hugging Face model runs unchanged: its attention modules compute queries and keys
(with q/k-norm and RoPE at the positions we pass) and call the registered function. When a
:class:`~tah.model.kv.DepthPass` arrives through the forward kwargs (``tah_pass``), we store the
new keys/values in TaH's per-depth store and attend with the duo-causal mask; without it (someone
calls the wrapped model directly) we behave exactly like transformers' SDPA attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION_NAME = "tah"


def tah_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    step = kwargs.pop("tah_pass", None)
    if step is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    key, value = step.cache.append_and_gather(module.layer_idx, step, key, value)
    out = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=step.mask,
        dropout_p=dropout,
        is_causal=step.is_causal,
        scale=scaling,
        enable_gqa=query.shape[1] != key.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Register the TaH attention (and SDPA-style masks for direct use); idempotent."""
    AttentionInterface.register(ATTENTION_NAME, tah_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    return ATTENTION_NAME
