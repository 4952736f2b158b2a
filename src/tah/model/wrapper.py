"""TaHForCausalLM: a Hugging Face causal LM that thinks again at hard tokens.

The depth loop below is the one implementation of TaH's forward. Training (a fresh store per
call), prefill and decode (a persistent :class:`DepthKVCache`) all run it:

    depth 1: every token, LoRA off, ordinary causal attention
    after depth d < D: the decider picks tokens to continue
    depth d+1: only those tokens, packed per row (rows with none are skipped), LoRA on,
               input = soft embedding of the top-k cumulative logits, same RoPE positions,
               duo-causal attention over every entry at (p' <= p, d' <= d+1)
    logits: added to the running sum (the residual across iterations)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tah.config import TaHConfig
from tah.errors import ConfigError, DataError, UnsupportedModelError
from tah.model import attention, checkpoint, generation
from tah.model.adapters import LoraSwitch, add_lora
from tah.model.deciders import Decider, build_decider
from tah.model.kv import DepthKVCache

logger = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass
class TaHOutput:
    logits: Tensor  # (B, T, V) cumulative logits at each token's last depth
    iter_counts: Tensor  # (B, T) passes per token, 0 for padding
    loss: Tensor | None = None
    decider_logits: Tensor | None = None  # (B, T, D-1), NaN where the decider did not run
    cache: DepthKVCache | None = None


def soft_embedding(logits: Tensor, weight: Tensor, topk: int | None) -> Tensor:
    """Softmax over the top-k logits (all logits if ``topk`` is None), mixing embedding rows."""
    if topk is None or topk >= logits.shape[-1]:
        probs = torch.softmax(logits.float(), dim=-1)
        return (probs @ weight.float()).to(weight.dtype)
    values, indices = logits.topk(topk, dim=-1)
    probs = torch.softmax(values.float(), dim=-1).to(weight.dtype)
    # embedding_bag sums the weighted rows without a (N, k, H) intermediate.
    return F.embedding_bag(indices, weight, per_sample_weights=probs, mode="sum")


def check_supported(hf_model: nn.Module) -> None:
    """Refuse models whose attention TaH cannot take over, naming what is wrong."""
    config = getattr(hf_model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported by TaH; supported decoder families: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    layer_types = getattr(config, "layer_types", None) or []
    windowed = model_type == "mistral" and getattr(config, "sliding_window", None) is not None
    if (
        "sliding_attention" in layer_types
        or getattr(config, "use_sliding_window", False)
        or windowed
    ):
        raise UnsupportedModelError(
            f"{model_type} model uses sliding-window attention, which TaH's duo-causal attention "
            "does not implement; disable it in the config (use_sliding_window=False)"
        )
    decoder = hf_model.get_decoder() if hasattr(hf_model, "get_decoder") else None
    if decoder is None or not hasattr(decoder, "layers") or not hasattr(decoder, "norm"):
        raise UnsupportedModelError(
            f"{type(hf_model).__name__} has no decoder with .layers and .norm; TaH wraps "
            "*ForCausalLM models of the Llama/Qwen families"
        )


class TaHForCausalLM(nn.Module):
    """A TaH model around an unmodified Hugging Face causal LM (see the module docstring)."""

    def __init__(self, hf_model: nn.Module, config: TaHConfig, tokenizer: Any = None) -> None:
        super().__init__()
        from peft import PeftModel

        base = hf_model.get_base_model() if isinstance(hf_model, PeftModel) else hf_model
        check_supported(base)
        self.config = config
        self.tokenizer = tokenizer
        hf_config = base.config
        self.num_layers = int(hf_config.num_hidden_layers)
        vocab = base.get_input_embeddings().weight.shape[0]
        uses_mlp = config.decider == "mlp" and config.max_iter > 1
        if uses_mlp and config.decider_layers is None:
            from tah.model.deciders import default_decider_layers

            config.decider_layers = default_decider_layers(self.num_layers)
        if uses_mlp and config.decider_topk > vocab:
            raise ConfigError(
                f"decider_topk {config.decider_topk} exceeds the vocabulary ({vocab})"
            )
        attention.register()
        base.set_attn_implementation(attention.ATTENTION_NAME)
        self.backbone = hf_model
        self.lora: LoraSwitch | None = None
        self.decider: Decider = build_decider(config, int(hf_config.hidden_size), self.num_layers)
        self._captured: dict[int, Tensor] = {}
        self._capturing = False
        self._hooks = [
            self._decoder.layers[i - 1].register_forward_hook(self._capture_hook(i))
            for i in self.decider.feature_layers
            if 0 < i < self.num_layers
        ]

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_base(
        cls, hf_model: nn.Module, config: TaHConfig | None = None, tokenizer: Any = None
    ) -> TaHForCausalLM:
        """Wrap a loaded HF causal LM; adds a fresh LoRA adapter for the deeper passes."""
        config = config or TaHConfig()
        check_supported(hf_model)
        if config.adapter == "lora" and config.max_iter > 1:
            hf_model = add_lora(hf_model, config)
        model = cls(hf_model, config, tokenizer)
        model._attach_lora()
        model.to(next(hf_model.parameters()).device)
        return model

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs: Any) -> TaHForCausalLM:
        """Load a TaH checkpoint (ours or the published layout), local or a hub id.

        Keyword arguments: ``threshold``, ``decider``, ``device``, ``dtype`` and any TaHConfig
        field to override.
        """
        return checkpoint.load_pretrained(cls, path, **kwargs)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write base weights, tokenizer, LoRA, decider and tah_config.json atomically."""
        checkpoint.save_pretrained(self, path)

    def _attach_lora(self) -> None:
        from peft import PeftModel

        if isinstance(self.backbone, PeftModel):
            self.lora = LoraSwitch(self.backbone)
            self.lora.set(False)
        # peft freezes the base weights; like any HF model, everything starts trainable and
        # training recipes choose what to freeze (set_trainable).
        self.set_trainable(backbone=True, lora=True, decider=True)

    # ------------------------------------------------------------------ parts
    @property
    def base_model(self) -> nn.Module:
        """The Hugging Face causal LM (with LoRA layers injected when there is an adapter)."""
        from peft import PeftModel

        if isinstance(self.backbone, PeftModel):
            return self.backbone.get_base_model()
        return self.backbone

    @property
    def _decoder(self) -> nn.Module:
        return self.base_model.get_decoder()

    @property
    def device(self) -> torch.device:
        return self.base_model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.base_model.get_input_embeddings().weight.dtype

    @property
    def max_context(self) -> int | None:
        return getattr(self.base_model.config, "max_position_embeddings", None)

    def lora_parameters(self) -> Iterator[nn.Parameter]:
        return (p for n, p in self.backbone.named_parameters() if "lora_" in n)

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return (p for n, p in self.backbone.named_parameters() if "lora_" not in n)

    def decider_parameters(self) -> Iterator[nn.Parameter]:
        return self.decider.parameters()

    def set_trainable(self, backbone: bool, lora: bool, decider: bool) -> None:
        for p in self.backbone_parameters():
            p.requires_grad_(backbone)
        for p in self.lora_parameters():
            p.requires_grad_(lora)
        for p in self.decider_parameters():
            p.requires_grad_(decider)

    def set_threshold(self, threshold: float) -> None:
        self.config.threshold = float(threshold)
        self.config.validate()
        if hasattr(self.decider, "threshold"):
            self.decider.threshold.fill_(float(threshold))

    def new_cache(self) -> DepthKVCache:
        return DepthKVCache(self.num_layers, self.config.max_iter, self.config.attention_mode)

    def _capture_hook(self, index: int):
        def hook(module, args, output):
            if self._capturing:
                self._captured[index] = output[0] if isinstance(output, tuple) else output

        return hook

    # ------------------------------------------------------------------ the depth loop
    def _run_pass(self, embeds, positions, valid, depth, rows, cache, batch_size, store):
        if self.lora is not None:
            self.lora.set(depth > 0)
        step = cache.begin_pass(depth, positions, valid, rows, batch_size, store=store)
        self._captured = {}
        hidden = self._decoder(
            inputs_embeds=embeds,
            position_ids=positions,
            attention_mask=step.mask,
            use_cache=False,
            tah_pass=step,
        ).last_hidden_state
        self._captured[0] = embeds
        self._captured[self.num_layers] = hidden
        return hidden

    def _features(self, select) -> Tensor | None:
        layers = self.decider.feature_layers
        if not layers:
            return None
        return torch.cat([select(self._captured[i]) for i in layers], dim=-1)

    def _previous_token_features(self, valid: Tensor, cache: DepthKVCache) -> Tensor:
        """(B, T, F): each token's previous valid token's depth-1 features; for a row's first
        token here, the last one of an earlier call (kept in ``cache``), else zeros."""
        grid = torch.cat([self._captured[i] for i in self.decider.feature_layers], dim=-1)
        batch, length, size = grid.shape
        carried = cache.last_features
        if carried is None:
            carried = grid.new_zeros((batch, size))
        # Index 0 is the carried state, index j + 1 position j of this call.
        table = torch.cat([carried[:, None].to(grid.dtype), grid], dim=1)
        steps = torch.arange(1, length + 1, device=grid.device).expand(batch, -1)
        last_upto = torch.where(valid, steps, 0).cummax(dim=1).values  # last valid at or before
        before = torch.cat([last_upto.new_zeros((batch, 1)), last_upto[:, :-1]], dim=1)
        rows = torch.arange(batch, device=grid.device)
        cache.last_features = table[rows, last_upto[:, -1]].detach()
        return table.gather(1, before[..., None].expand(-1, -1, size))

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        iter_labels: Tensor | None = None,
        *,
        cache: DepthKVCache | None = None,
        max_depth: int | None = None,
        threshold: float | Tensor | None = None,  # a (B,) tensor: one τ per row
        ensure_deep_pass: bool = False,
    ) -> TaHOutput:
        valid = _valid_tokens(input_ids, attention_mask, iter_labels)
        batch, length = input_ids.shape
        device = input_ids.device
        max_iter = self.config.max_iter
        run_depths = max_iter if max_depth is None else max(1, min(max_iter, int(max_depth)))
        work = cache if cache is not None else self.new_cache()
        positions = self._positions(work, valid)
        embedding = self.base_model.get_input_embeddings()
        lm_head = self.base_model.get_output_embeddings()
        needs_features = bool(self.decider.feature_layers) and max_iter > 1
        self._capturing = needs_features

        # Depth 1: all tokens.
        hidden = self._run_pass(
            embedding(input_ids),
            positions,
            valid,
            0,
            None,
            work,
            batch,
            store=cache is not None or run_depths > 1,
        )
        logits = lm_head(hidden)  # the output buffer; deeper depths update it in place
        iter_counts = valid.long()
        decider_logits = None
        if max_iter > 1:
            decider_logits = logits.new_full((batch, length, max_iter - 1), float("nan")).float()
        b_idx, t_idx = valid.nonzero(as_tuple=True)
        previous = None  # the previous token's depth-1 features, per continuing token
        if needs_features and self.decider.reads_previous_token:
            previous = self._previous_token_features(valid, work)[b_idx, t_idx]
        token_logits = logits  # logits of the pass's tokens, grid layout at depth 1
        select = lambda t: t[valid]  # noqa: E731  grid -> valid tokens of the current pass

        for depth in range(max_iter - 1):
            n = b_idx.numel()
            if n == 0 or (depth + 1 >= run_depths and not self.decider.learned):
                break  # no deeper pass follows and a fixed decider's logits say nothing
            k = self.decider.needs_topk
            topk_values = select(token_logits.topk(k, dim=-1).values) if k else None
            features = self._features(select) if needs_features else None
            if previous is not None:
                features = torch.cat([features, previous], dim=-1)
            go, go_logits = self.decider.decide(
                topk_values,
                features,
                depth + 1,
                None if iter_labels is None else iter_labels[b_idx, t_idx],
                threshold[b_idx] if isinstance(threshold, Tensor) else threshold,
                n,
                device,
            )
            decider_logits[b_idx, t_idx, depth] = go_logits.to(decider_logits.dtype)
            if depth + 1 >= run_depths:
                break
            if ensure_deep_pass and depth == 0 and not bool(go.any()):
                go = self._force_one(go, go_logits, iter_labels, labels, b_idx, t_idx)
            if not bool(go.any()):
                break
            b_idx, t_idx = b_idx[go], t_idx[go]
            if previous is not None:
                previous = previous[go]
            store = cache is not None or depth + 2 < run_depths
            hidden, grid_r, grid_c = self._deeper_pass(
                logits, positions, b_idx, t_idx, depth + 1, work, batch, store
            )
            select = lambda t, r=grid_r, c=grid_c: t[r, c]  # noqa: E731
            new_logits = lm_head(select(hidden))
            logits.index_put_((b_idx, t_idx), new_logits, accumulate=self.config.residual)
            iter_counts.index_put_((b_idx, t_idx), torch.ones_like(b_idx), accumulate=True)
            if depth + 2 >= max_iter:
                break  # the deepest depth: no decider follows
            token_logits = logits[b_idx, t_idx]
            select = lambda t: t  # noqa: E731  token_logits is already per token
            if needs_features:
                self._captured = {i: v[grid_r, grid_c] for i, v in self._captured.items()}

        self._capturing = False
        self._captured = {}
        if self.lora is not None:
            self.lora.set(False)
        loss = None if labels is None else _next_token_loss(logits, labels)
        return TaHOutput(logits, iter_counts, loss, decider_logits, cache)

    def _positions(self, work: DepthKVCache, valid: Tensor) -> Tensor:
        """The new tokens' positions after what ``work`` holds, within the model's context."""
        positions = work.next_positions(valid)
        if self.max_context is not None and int(positions.max()) >= self.max_context:
            raise DataError(
                f"sequence reaches position {int(positions.max())} but the model's context is "
                f"{self.max_context} tokens; shorten the prompt or max_new_tokens"
            )
        return positions

    def _deeper_pass(
        self,
        logits: Tensor,
        positions: Tensor,
        b_idx: Tensor,
        t_idx: Tensor,
        depth: int,
        work: DepthKVCache,
        batch: int,
        store: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Run depth ``depth`` (0-based) on the continuing tokens (b_idx, t_idx), packed into as
        few rows as their batch rows need, each input the soft embedding of its summed logits.
        Returns the packed hidden states and each token's (row, column) in the pack."""
        embedding = self.base_model.get_input_embeddings()
        rows, grid_r, grid_c, width = _pack(b_idx, batch)
        soft = soft_embedding(logits[b_idx, t_idx], embedding.weight, self.config.topk)
        embeds = soft.new_zeros((rows.numel(), width, soft.shape[-1]))
        embeds = embeds.index_put((grid_r, grid_c), soft)
        q_pos = positions.new_zeros((rows.numel(), width)).index_put(
            (grid_r, grid_c), positions[b_idx, t_idx]
        )
        q_valid = torch.zeros_like(q_pos, dtype=torch.bool).index_put(
            (grid_r, grid_c), torch.ones_like(b_idx, dtype=torch.bool)
        )
        packed_rows = None if rows.numel() == batch else rows
        hidden = self._run_pass(
            embeds, q_pos, q_valid, depth, packed_rows, work, batch, store=store
        )
        return hidden, grid_r, grid_c

    @staticmethod
    def _force_one(go, go_logits, iter_labels, labels, b_idx, t_idx) -> Tensor:
        """Make one supervised token continue so every parameter joins the graph (DDP)."""
        if iter_labels is not None:
            eligible = iter_labels[b_idx, t_idx] != -100
        elif labels is not None:
            eligible = labels[b_idx, t_idx] != -100
        else:
            return go
        if not bool(eligible.any()):
            return go
        scores = go_logits.masked_fill(~eligible, float("-inf"))
        go = go.clone()
        go[int(scores.argmax())] = True
        return go

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs: Any):
        """Sample continuations; see :func:`tah.model.generation.generate` for arguments."""
        return generation.generate(self, input_ids, attention_mask=attention_mask, **kwargs)


def _pack(b_idx: Tensor, batch: int) -> tuple[Tensor, Tensor, Tensor, int]:
    """Left-justify each row's continuing tokens: (rows taking part, grid row, grid col, width).

    ``b_idx`` is sorted (row-major order), so a token's column is its rank within its row.
    """
    counts = torch.bincount(b_idx, minlength=batch)
    rows = counts.nonzero().squeeze(1)
    slot_of_row = torch.full((batch,), -1, dtype=torch.long, device=b_idx.device)
    slot_of_row[rows] = torch.arange(rows.numel(), device=b_idx.device)
    starts = counts.cumsum(0) - counts
    grid_c = torch.arange(b_idx.numel(), device=b_idx.device) - starts[b_idx]
    return rows, slot_of_row[b_idx], grid_c, int(counts.max())


def _valid_tokens(
    input_ids: Tensor, attention_mask: Tensor | None, iter_labels: Tensor | None
) -> Tensor:
    """The (batch, length) mask of real tokens, after checking the inputs' shapes."""
    if input_ids.dim() != 2:
        raise DataError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    if iter_labels is not None and iter_labels.shape != input_ids.shape:
        raise DataError(
            f"iter_labels shape {tuple(iter_labels.shape)} != input_ids {tuple(input_ids.shape)}"
        )
    if attention_mask is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    length = input_ids.shape[1]
    return attention_mask[:, -length:].to(device=input_ids.device, dtype=torch.bool)


def _next_token_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of each position's logits against the next label (-100: ignored)."""
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(),
        labels[:, 1:].flatten().to(logits.device),
        ignore_index=-100,
    )
