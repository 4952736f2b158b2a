"""An independent, brute-force TaH forward for tests.

Explicit Python loops over depths, layers, tokens, heads and visible entries, written from the
method's definition (docs/method.md §1, §6) using only the wrapped model's weights. It shares no
code with tah.model's packing, masks or key/value store.
"""

from __future__ import annotations

import math

import torch


def _rotate(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def brute_force_logits(model, ids: list[int], passes: list[int]) -> list[torch.Tensor]:
    """Output logits of every token of one unpadded sequence, token t running passes[t] depths."""
    hf = model.base_model
    decoder = hf.get_decoder()
    embed = hf.get_input_embeddings().weight
    lm_head = hf.get_output_embeddings()
    depth_max = max(passes)
    kv: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}
    cum: dict[int, torch.Tensor] = {}
    for depth in range(depth_max):
        if model.lora is not None:
            model.lora.set(depth > 0)
        tokens = [t for t in range(len(ids)) if passes[t] > depth]
        x = {}
        for t in tokens:
            if depth == 0:
                x[t] = embed[ids[t]].clone()
            else:
                values, index = (
                    cum[t].topk(model.config.topk) if model.config.topk else (cum[t], None)
                )
                probs = torch.softmax(values, dim=-1)
                rows = embed[index] if index is not None else embed
                x[t] = (probs[:, None] * rows).sum(0)
        for layer in decoder.layers:
            attn = layer.self_attn
            n_heads = hf.config.num_attention_heads
            n_kv = hf.config.num_key_value_heads
            head_dim = attn.head_dim
            queries = {}
            for t in tokens:
                h = layer.input_layernorm(x[t])
                q = attn.q_proj(h).view(n_heads, head_dim)
                k = attn.k_proj(h).view(n_kv, head_dim)
                v = attn.v_proj(h).view(n_kv, head_dim)
                if hasattr(attn, "q_norm"):
                    q, k = attn.q_norm(q), attn.k_norm(k)
                cos, sin = decoder.rotary_emb(x[t][None, None], torch.tensor([[t]]))
                q, k = _rotate(q, cos[0], sin[0]), _rotate(k, cos[0], sin[0])
                queries[t] = q
                kv[(attn.layer_idx, t, depth)] = (k, v)
            new_x = {}
            for t in tokens:
                visible = [
                    kv[(attn.layer_idx, j, d)]
                    for j in range(t + 1)
                    for d in range(depth + 1)
                    if (attn.layer_idx, j, d) in kv
                ]
                heads = []
                for head in range(n_heads):
                    g = head // (n_heads // n_kv)
                    scores = torch.stack(
                        [queries[t][head] @ k[g] / math.sqrt(head_dim) for k, _ in visible]
                    )
                    weights = torch.softmax(scores, dim=0)
                    heads.append(sum(w * v[g] for w, (_, v) in zip(weights, visible)))
                h = x[t] + attn.o_proj(torch.cat(heads))
                new_x[t] = h + layer.mlp(layer.post_attention_layernorm(h))
            x = new_x
        for t in tokens:
            z = lm_head(decoder.norm(x[t]))
            if depth == 0 or not model.config.residual:
                cum[t] = z
            else:
                cum[t] = cum[t] + z
    if model.lora is not None:
        model.lora.set(False)
    return [cum[t] for t in range(len(ids))]
