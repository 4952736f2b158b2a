"""SoftThink: training-free soft-embedding thinking on a plain causal LM (baseline, METHOD.md C.6).

No reference code exists for the paper's SoftThink baseline, and transformers' ``generate``
cannot feed a mixture of embeddings back as the next input, so this module has its own decode
loop (prefill, then one step per token over the model's KV cache). The exact rule:

1. At every step the logits are warped exactly as for sampling (temperature, top-k, top-p,
   min-p; with temperature 0 the weights use temperature 1), and ``p~`` = softmax of the warped
   logits truncated to its ``soft_topk`` largest entries and renormalised (``soft_topk``
   defaults to the sampling top-k, or 20 when top-k is off).
2. While a row is *thinking*, the emitted (visible) token is the argmax of the warped logits,
   and the next input is the concept token ``sum_v p~_v * E[v]`` (E = input embedding matrix)
   instead of the embedding of a sampled token.
3. Thinking ends when the argmax is the end-of-thinking token ``</think>`` (its ordinary
   embedding is fed) or a stop token (the row finishes). After that the row samples normally
   (per-row seeded, as the ``hf`` backend).
4. Scope (``--backend-option soft_scope=``): ``think`` = thinking starts after a ``<think>``
   token (in the prompt, unclosed, or generated); ``all`` = every generated token is soft
   until a stop token; ``none`` = never soft (plain sampling, used to check this loop against
   ``hf``); ``auto`` (default) = ``think`` when the tokenizer has ``<think>``/``</think>``
   tokens, else ``all``.

There is no "cold stop" (entropy-triggered end of thinking) as in the Soft Thinking paper; the
max_new_tokens limit bounds a thinking phase that never closes.
"""

from __future__ import annotations

import time
from typing import Any

from tah.errors import ConfigError
from tah.evaluation.backend_base import (
    Backend,
    BackendOptions,
    Generation,
    count_parameters,
    encode_prompts,
    iter_summary,
    load_tokenizer,
    returned_cache,
    stop_token_ids,
    with_cache,
)
from tah.evaluation.sampling import RowSampler, SamplingParams, warp_logits
from tah.model.checkpoint import quiet_hub_bars
from tah.model.loading import resolve_device, resolve_dtype

SCOPES = ("auto", "think", "all", "none")


def _single_token_id(tokenizer: Any, text: str) -> int | None:
    vocab = tokenizer.get_vocab()
    return vocab.get(text)


class SoftThinkBackend(Backend):
    """A plain HF causal LM decoding its thinking phase with soft concept tokens."""

    name = "softthink"

    def __init__(self, model_path: str, options: BackendOptions) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.model_path = model_path
        self.scope = options.take("soft_scope", "auto", str)
        if self.scope not in SCOPES:
            raise ConfigError(f"soft_scope {self.scope!r} unknown; use one of {SCOPES}")
        self.soft_topk = options.take("soft_topk", 0, int)
        options_device, options_dtype = options.device, options.dtype
        options.reject_unused(self.name)
        self.device = resolve_device(options_device)
        self.tokenizer = load_tokenizer(model_path, options.trust_remote_code)
        with quiet_hub_bars():
            model = AutoModelForCausalLM.from_pretrained(
                model_path,
                dtype=resolve_dtype(options_dtype, self.device),
                trust_remote_code=options.trust_remote_code,
            )
        self.model = model.to(self.device).eval()
        self.stops = stop_token_ids(self.tokenizer, self.model)
        self.context_length = getattr(self.model.config, "max_position_embeddings", None)
        self.think_open = _single_token_id(self.tokenizer, "<think>")
        self.think_close = _single_token_id(self.tokenizer, "</think>")
        if self.scope == "auto":
            self.scope = (
                "think" if (self.think_open is not None and self.think_close is not None) else "all"
            )
        if self.scope == "think" and (self.think_open is None or self.think_close is None):
            raise ConfigError(f"{model_path}: soft_scope=think needs <think> and </think> tokens")
        self._torch = torch

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "model": self.model_path,
            "device": self.device,
            "n_params": count_parameters(self.model),
            "soft_scope": self.scope,
            "soft_topk": self.soft_topk,
        }

    def _initial_soft(self, ids: Any, mask: Any) -> list[bool]:
        if self.scope == "all":
            return [True] * ids.shape[0]
        if self.scope == "none":
            return [False] * ids.shape[0]
        result = []
        for row, m in zip(ids.tolist(), mask.tolist()):
            toks = [t for t, keep in zip(row, m) if keep]
            last_open = max((i for i, t in enumerate(toks) if t == self.think_open), default=-1)
            last_close = max((i for i, t in enumerate(toks) if t == self.think_close), default=-1)
            result.append(last_open > last_close)
        return result

    def _concept(self, warped: Any, params: SamplingParams) -> Any:
        """Embedding mixture sum_v p~_v E[v] for each row of warped logits."""
        torch = self._torch
        k = self.soft_topk or params.top_k or 20
        # With temperature 0 the warped logits are the raw ones: weights at temperature 1.
        vals, idx = torch.topk(warped, min(k, warped.shape[-1]), dim=-1)
        weights = torch.softmax(vals, dim=-1).nan_to_num(0.0)
        table = self.model.get_input_embeddings().weight
        return (weights.unsqueeze(-1).to(table.dtype) * table[idx]).sum(dim=1)

    def generate(self, prompts, params, seeds):  # type: ignore[override]
        torch = self._torch
        model = self.model
        ids, mask = encode_prompts(self.tokenizer, prompts, self.device)
        batch = ids.shape[0]
        sampler = RowSampler(list(seeds), self.device)
        soft = self._initial_soft(ids, mask)
        table = model.get_input_embeddings().weight
        pad = self.tokenizer.pad_token_id or 0
        generated: list[list[int]] = [[] for _ in range(batch)]
        soft_counts = [0] * batch
        finished = [False] * batch
        start = time.perf_counter()
        with torch.inference_mode():
            position = (mask.cumsum(-1) - 1).clamp_min(0)
            out = model(
                input_ids=ids, attention_mask=mask, position_ids=position, **with_cache(model, None)
            )
            cache = returned_cache(out)
            next_pos = position[:, -1:] + 1
            logits = out.logits[:, -1].float()
            for _ in range(params.max_new_tokens):
                warped = warp_logits(logits, params)
                argmax = warped.argmax(dim=-1)
                sampled = argmax if params.greedy else sampler.sample(logits, params)
                soft_rows = torch.tensor(soft, device=logits.device)
                token = torch.where(soft_rows, argmax, sampled)
                emb = table[token]
                tokens = token.tolist()
                mix_rows = []
                for i, t in enumerate(tokens):
                    if finished[i]:
                        tokens[i] = pad
                        continue
                    generated[i].append(t)
                    if t in self.stops:
                        finished[i] = True
                    elif soft[i]:
                        soft_counts[i] += 1
                        if t == self.think_close:
                            soft[i] = False
                        else:
                            mix_rows.append(i)
                    elif self.scope == "think" and t == self.think_open:
                        soft[i] = True
                if all(finished):
                    break
                if mix_rows:
                    rows = torch.tensor(mix_rows, device=logits.device)
                    emb[rows] = self._concept(warped[rows], params).to(emb.dtype)
                for i in range(batch):
                    if finished[i]:
                        emb[i] = table[pad]
                mask = torch.cat([mask, mask.new_ones((batch, 1))], dim=1)
                out = model(
                    inputs_embeds=emb.unsqueeze(1),
                    attention_mask=mask,
                    position_ids=next_pos,
                    **with_cache(model, cache),
                )
                cache = returned_cache(out)
                next_pos = next_pos + 1
                logits = out.logits[:, -1].float()
        elapsed = time.perf_counter() - start
        gens = []
        for i, toks in enumerate(generated):
            n = len(toks)
            reason = "stop" if toks and toks[-1] in self.stops else "length"
            gens.append(
                Generation(
                    text=self.tokenizer.decode(toks, skip_special_tokens=True),
                    token_ids=toks,
                    n_tokens=n,
                    iter_counts=iter_summary([1] * n),
                    time_s=elapsed / batch,
                    finish_reason=reason,
                    extra={
                        "soft_tokens": soft_counts[i],
                        "soft_share": soft_counts[i] / n if n else 0.0,
                    },
                )
            )
        return gens

    def close(self) -> None:
        self.model = None
