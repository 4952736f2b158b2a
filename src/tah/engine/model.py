"""A compact Llama / Qwen2 / Qwen3 decoder for the inference engine, with per-pass LoRA.

Why not run the Hugging Face modules: the engine needs to (a) fuse q/k/v and gate/up into one
matrix product each (fewer kernel launches per token, which dominates small-batch decoding),
(b) apply the LoRA adapter only in the deep passes without toggling module state, and (c) hand
keys and values straight to its own preallocated per-depth store (``kv.py``) instead of a
transformers ``Cache``. The maths is the same as the Hugging Face implementation, operation for
operation (RMSNorm in float32, RoPE tables computed by the model's own rotary module, SDPA),
so outputs agree to rounding; the engine's tests prove greedy equality with HF ``generate`` and
with ``TaHForCausalLM.generate``.

Weights are read by their Hugging Face names (``model.layers.N.self_attn.q_proj.weight`` ...),
from an in-memory model (plain or with PEFT LoRA layers injected) or from a flat name → tensor
mapping such as a safetensors file; PEFT names (``base_model.model.``, ``.base_layer``,
``lora_A.<adapter>``) are normalised first (``lora.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from tah.engine.lora import (
    LORA_TARGETS,
    LoraGroup,
    LoraPair,
    peft_lora_scales,
    split_lora,
)
from tah.errors import UnsupportedModelError

SUPPORTED_FAMILIES = ("llama", "qwen2", "qwen3")
SUPPORTED_ROPE = ("default", "linear", "llama3", "yarn")

# attend(layer_index, q, k, v) -> attention output (..., n_heads * head_dim); q/k/v are
# (..., heads, head_dim) after q/k-norm and RoPE, with the leading dims of the input.
AttendFn = Callable[[int, Tensor, Tensor, Tensor], Tensor]
# Which tokens get the LoRA delta: None = none, True = all, a tensor of flat token indices, or
# a tuple of (start, end) runs of flat token indices.
LoraRows = Tensor | bool | tuple[tuple[int, int], ...] | None


@dataclass(frozen=True)
class ModelShape:
    """The few numbers of a Hugging Face config the compact decoder needs."""

    family: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_eps: float
    qk_norm: bool
    hidden_act: str
    max_positions: int

    @classmethod
    def from_hf_config(cls, config) -> ModelShape:
        family = getattr(config, "model_type", None)
        if family not in SUPPORTED_FAMILIES:
            raise UnsupportedModelError(
                f"the engine supports model families {SUPPORTED_FAMILIES}, got {family!r}; "
                "use TaHForCausalLM.generate for other architectures"
            )
        layer_types = getattr(config, "layer_types", None) or []
        if any(t != "full_attention" for t in layer_types):
            raise UnsupportedModelError(
                f"{family} config uses sliding-window layers {sorted(set(layer_types))}; the engine "
                "supports full attention only (set use_sliding_window=False)"
            )
        rope = getattr(config, "rope_parameters", None) or {}
        rope_type = rope.get("rope_type", "default")
        if rope_type not in SUPPORTED_ROPE:
            raise UnsupportedModelError(
                f"RoPE type {rope_type!r} is not supported by the engine (supported: "
                f"{SUPPORTED_ROPE}); position-dependent scaling needs the HF model"
            )
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            family=family,
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            rms_eps=config.rms_norm_eps,
            qk_norm=family == "qwen3",
            hidden_act=config.hidden_act,
            max_positions=config.max_position_embeddings,
        )


@dataclass
class LayerWeights:
    ln1: Tensor
    ln2: Tensor
    wqkv: Tensor  # (q + k + v out, hidden): q_proj, k_proj, v_proj fused
    bqkv: Tensor | None
    wo: Tensor
    bo: Tensor | None
    q_norm: Tensor | None
    k_norm: Tensor | None
    wgu: Tensor  # (2 * intermediate, hidden): gate_proj, up_proj fused
    bgu: Tensor | None
    wd: Tensor
    bd: Tensor | None
    lora: dict[str, LoraGroup] = field(default_factory=dict)  # "qkv", "o", "gu", "down"


class CompactDecoder:
    """Decoder weights plus the forward maths; the attention itself is delegated to a callback.

    ``forward_hidden`` runs the decoder stack on input embeddings and returns the final-normed
    hidden states plus any captured intermediate states (HF ``hidden_states`` indices).
    """

    def __init__(
        self,
        shape: ModelShape,
        embed: Tensor,
        lm_head: Tensor,
        final_norm: Tensor,
        layers: list[LayerWeights],
        rope_cos: Tensor,
        rope_sin: Tensor,
    ) -> None:
        self.shape = shape
        self.embed = embed
        self.lm_head = lm_head
        self.final_norm = final_norm
        self.layers = layers
        self.rope_cos = rope_cos  # (max_positions + 1, head_dim) in the model dtype
        self.rope_sin = rope_sin
        self.q_size = shape.num_heads * shape.head_dim
        self.kv_size = shape.num_kv_heads * shape.head_dim
        self.intermediate = layers[0].wd.shape[1] if layers else 0
        if shape.hidden_act == "silu":
            self.act: Callable[[Tensor], Tensor] = F.silu
        else:
            from transformers.activations import ACT2FN

            self.act = ACT2FN[shape.hidden_act]

    # ------------------------------------------------------------------ construction
    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.device

    @classmethod
    def from_hf_model(
        cls, hf_model, device=None, dtype=None, max_positions: int | None = None
    ) -> CompactDecoder:
        """Read the weights of an in-memory HF causal LM (LoRA layers injected by PEFT or not).

        Tensors are shared with the model where no fusion, device or dtype change is needed.
        """
        config = hf_model.config
        tensors = dict(hf_model.named_parameters(remove_duplicate=False))
        tensors.update(dict(hf_model.named_buffers(remove_duplicate=False)))
        scales = peft_lora_scales(hf_model)
        rotary = _find_rotary(hf_model)
        return cls.from_tensors(
            config,
            tensors,
            scales,
            rotary=rotary,
            device=device,
            dtype=dtype,
            max_positions=max_positions,
        )

    @classmethod
    def from_tensors(
        cls,
        config,
        tensors: Mapping[str, Tensor],
        lora_scales: Mapping[str, float] | float | None = None,
        rotary=None,
        device=None,
        dtype=None,
        max_positions: int | None = None,
    ) -> CompactDecoder:
        """Build from HF-named tensors. ``lora_scales``: per canonical module name, or one value."""
        shape = ModelShape.from_hf_config(config)
        base, lora = split_lora(tensors, adapter="default")
        first = base.get("model.embed_tokens.weight")
        if first is None:
            raise UnsupportedModelError(
                "no 'model.embed_tokens.weight' among the weights: not a Llama/Qwen causal LM"
            )
        device = torch.device(device) if device is not None else first.device
        dtype = dtype or first.dtype

        def get(name: str, required: bool = True) -> Tensor | None:
            t = base.get(name)
            if t is None:
                if required:
                    raise UnsupportedModelError(f"weight {name!r} missing from the checkpoint")
                return None
            return t.detach().to(device=device, dtype=dtype)

        def cat(*ts: Tensor | None) -> Tensor | None:
            if all(t is None for t in ts):
                return None
            if any(t is None for t in ts):
                raise UnsupportedModelError("q/k/v (or gate/up) projections disagree on bias")
            return torch.cat(ts, dim=0)  # type: ignore[arg-type]

        layers = []
        for i in range(shape.num_layers):
            p = f"model.layers.{i}."
            attn, mlp = p + "self_attn.", p + "mlp."
            pairs = _lora_pairs(lora, attn, mlp, lora_scales, device, dtype)
            layers.append(
                LayerWeights(
                    ln1=get(p + "input_layernorm.weight"),
                    ln2=get(p + "post_attention_layernorm.weight"),
                    wqkv=cat(
                        get(attn + "q_proj.weight"),
                        get(attn + "k_proj.weight"),
                        get(attn + "v_proj.weight"),
                    ),
                    bqkv=cat(
                        get(attn + "q_proj.bias", False),
                        get(attn + "k_proj.bias", False),
                        get(attn + "v_proj.bias", False),
                    ),
                    wo=get(attn + "o_proj.weight"),
                    bo=get(attn + "o_proj.bias", False),
                    q_norm=get(attn + "q_norm.weight", shape.qk_norm),
                    k_norm=get(attn + "k_norm.weight", shape.qk_norm),
                    wgu=cat(get(mlp + "gate_proj.weight"), get(mlp + "up_proj.weight")),
                    bgu=cat(get(mlp + "gate_proj.bias", False), get(mlp + "up_proj.bias", False)),
                    wd=get(mlp + "down_proj.weight"),
                    bd=get(mlp + "down_proj.bias", False),
                    lora=_lora_groups(pairs, config, shape),
                )
            )
        used = {
            (f"model.layers.{i}." + ("self_attn." if p in LORA_TARGETS[:4] else "mlp.") + p)
            for i in range(shape.num_layers)
            for p in LORA_TARGETS
        }
        stray = sorted(set(lora) - used)
        if stray:
            raise UnsupportedModelError(
                f"LoRA on {stray[:3]} is not supported by the engine (only q/k/v/o/gate/up/down)"
            )
        embed = get("model.embed_tokens.weight")
        lm_head = get("lm_head.weight", False)
        if lm_head is None:  # tied embeddings
            lm_head = embed
        # One spare position past the context: padding queries of packed passes use it.
        n_pos = (max_positions or shape.max_positions) + 1
        cos, sin = rope_tables(config, n_pos, rotary=rotary, device=device, dtype=dtype)
        return cls(shape, embed, lm_head, get("model.norm.weight"), layers, cos, sin)

    # ------------------------------------------------------------------ maths
    def rms_norm(self, x: Tensor, weight: Tensor) -> Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.shape.rms_eps)
        return weight * h.to(dtype)

    @staticmethod
    def _add_lora(out: Tensor, x: Tensor, group: LoraGroup | None, rows: LoraRows) -> Tensor:
        """out + LoRA delta, for every token (``rows`` True), the tokens given by index (a
        tensor into the flattened leading dimensions), or runs of consecutive tokens (a tuple
        of (start, end) pairs: two small products per run, the second adding in place)."""
        if group is None or rows is None:
            return out
        if rows is True:
            return out + group.delta(x)
        flat = out.view(-1, out.shape[-1])
        flat_x = x.reshape(-1, x.shape[-1])
        if isinstance(rows, tuple):
            for lo, hi in rows:
                flat[lo:hi].addmm_(torch.mm(flat_x[lo:hi], group.at), group.bt)
            return out
        flat.index_add_(
            0, rows, torch.mm(torch.mm(flat_x.index_select(0, rows), group.at), group.bt)
        )
        return out

    def _rope(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def forward_hidden(
        self,
        x: Tensor,
        positions: Tensor,
        attend: AttendFn,
        lora_rows: LoraRows = None,
        capture: tuple[int, ...] = (),
    ) -> tuple[Tensor, dict[int, Tensor]]:
        """Run every decoder layer and the final norm on input embeddings ``x`` (..., H).

        ``positions`` (...) are the RoPE positions, one per token; ``attend`` gets q/k/v with
        the same leading dimensions. ``lora_rows`` switches the LoRA adapter on: None/False =
        off (depth 1), True = every token (a deep pass), a tensor of token indices (into the
        flattened leading dimensions) or a tuple of (start, end) index runs = those tokens
        only (a step mixing depths).
        Returns the final-normed hidden states and the captured states by HF index.
        """
        shape = self.shape
        lead = x.shape[:-1]
        rows = lora_rows if lora_rows is not False else None
        cos = self.rope_cos[positions].unsqueeze(-2)  # (..., 1, hd)
        sin = self.rope_sin[positions].unsqueeze(-2)
        captured: dict[int, Tensor] = {}
        if 0 in capture:
            captured[0] = x
        n_layers = shape.num_layers
        for i, layer in enumerate(self.layers):
            lora = layer.lora if rows is not None else {}
            h = self.rms_norm(x, layer.ln1)
            qkv = self._add_lora(F.linear(h, layer.wqkv, layer.bqkv), h, lora.get("qkv"), rows)
            q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
            q = q.view(*lead, shape.num_heads, shape.head_dim)
            k = k.view(*lead, shape.num_kv_heads, shape.head_dim)
            v = v.view(*lead, shape.num_kv_heads, shape.head_dim)
            if layer.q_norm is not None:
                q = self.rms_norm(q, layer.q_norm)
                k = self.rms_norm(k, layer.k_norm)
            q = self._rope(q, cos, sin)
            k = self._rope(k, cos, sin)
            a = attend(i, q, k, v)
            x = x + self._add_lora(F.linear(a, layer.wo, layer.bo), a, lora.get("o"), rows)
            h = self.rms_norm(x, layer.ln2)
            gu = self._add_lora(F.linear(h, layer.wgu, layer.bgu), h, lora.get("gu"), rows)
            gate, up = gu.split([self.intermediate, self.intermediate], dim=-1)
            m = self.act(gate) * up
            x = x + self._add_lora(F.linear(m, layer.wd, layer.bd), m, lora.get("down"), rows)
            if (i + 1) in capture and (i + 1) != n_layers:
                captured[i + 1] = x
        out = self.rms_norm(x, self.final_norm)
        if n_layers in capture:
            captured[n_layers] = out
        return out, captured

    def logits(self, hidden: Tensor) -> Tensor:
        return F.linear(hidden, self.lm_head)

    def enable_compile(self, mode: str = "default") -> None:
        """Run the layer stack through ``torch.compile`` (dynamic shapes); attention stays eager.

        Attention is a graph break on purpose: its segment structure (which tokens see which
        entries at which depth) changes every step, and compiling it would recompile per
        structure. What compiles are the stretches between attentions (norms, projections,
        RoPE, MLP, LoRA), which fuse their elementwise work. Measured on the 2-core CPU it did
        not help (0.93-1.0x the eager tokens/s at 30 M parameters, 0.75x at 1.2 M: guards and
        graph breaks cost as much as the fusion saves), so it is off by default; it is here for
        GPUs, where ``mode="reduce-overhead"`` (CUDA graphs) is the setting to try.
        """
        eager = self.forward_hidden

        def forward_with_eager_attention(x, positions, attend, lora_rows=None, capture=()):
            return eager(x, positions, torch.compiler.disable(attend), lora_rows, capture)

        self.forward_hidden = torch.compile(forward_with_eager_attention, dynamic=True, mode=mode)


def _lora_groups(pairs: dict[str, LoraPair], config, shape: ModelShape) -> dict[str, LoraGroup]:
    q = shape.num_heads * shape.head_dim
    kv = shape.num_kv_heads * shape.head_dim
    inter = config.intermediate_size
    groups = {
        "qkv": LoraGroup.build([pairs.get(p) for p in ("q_proj", "k_proj", "v_proj")], [q, kv, kv]),
        "o": LoraGroup.build([pairs.get("o_proj")], [shape.hidden_size]),
        "gu": LoraGroup.build([pairs.get(p) for p in ("gate_proj", "up_proj")], [inter, inter]),
        "down": LoraGroup.build([pairs.get("down_proj")], [shape.hidden_size]),
    }
    return {name: g for name, g in groups.items() if g is not None}


def rope_tables(config, n_positions: int, rotary=None, device=None, dtype=None):
    """cos/sin for positions 0..n-1, computed by the model's own rotary module (exact match)."""
    if rotary is None:
        import importlib

        family = config.model_type
        module = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
        rotary_cls = {"llama": "LlamaRotaryEmbedding", "qwen2": "Qwen2RotaryEmbedding"}.get(
            family, "Qwen3RotaryEmbedding"
        )
        rotary = getattr(module, rotary_cls)(config=config)
    rotary = rotary.to(device=device)
    probe = torch.zeros(1, dtype=dtype or torch.float32, device=device)
    positions = torch.arange(n_positions, device=device)[None]
    with torch.no_grad():
        cos, sin = rotary(probe, positions)
    return cos[0].to(dtype=dtype), sin[0].to(dtype=dtype)


def _find_rotary(hf_model):
    for name, module in hf_model.named_modules():
        if name.endswith("rotary_emb"):
            return module
    return None


def _lora_pairs(
    lora: Mapping[str, dict[str, Tensor]],
    attn: str,
    mlp: str,
    lora_scales: Mapping[str, float] | float | None,
    device,
    dtype,
) -> dict[str, LoraPair]:
    """One layer's LoRA pairs per projection (``attn`` / ``mlp``: the layer's name prefixes)."""
    pairs: dict[str, LoraPair] = {}
    for proj in LORA_TARGETS:
        module = (attn if proj in LORA_TARGETS[:4] else mlp) + proj
        ab = lora.get(module)
        if ab is None:
            continue
        if set(ab) != {"A", "B"}:
            raise UnsupportedModelError(f"LoRA for {module} lacks its A or B matrix")
        if isinstance(lora_scales, Mapping):
            scale = lora_scales.get(module)
            if scale is None:
                raise UnsupportedModelError(f"no LoRA scale known for {module}")
        else:
            if lora_scales is None:
                raise UnsupportedModelError("LoRA weights given without a LoRA scale")
            scale = lora_scales
        pairs[proj] = LoraPair(
            ab["A"].detach().to(device=device, dtype=dtype),
            ab["B"].detach().to(device=device, dtype=dtype),
            float(scale),
        )
    return pairs
