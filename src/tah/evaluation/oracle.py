"""TaH-oracle: a reference model's greedy token decides which tokens iterate (docs/method.md §7).

A token at position t runs a second pass iff the TaH model's depth-1 argmax at t differs from
the reference model's greedy prediction for the same prefix. The core API has no decider that
sees both models, so this backend drives the core's ``forward`` directly with the ``label``
decider and computed ``iter_labels``:

* a second TaH KV cache is run with ``max_depth=1``; depth 1 never reads deeper entries, so its
  logits are exactly the depth-1 logits of the full model (the argmax the oracle compares);
* the reference HF model runs alongside with its own KV cache, fed the same tokens;
* for each new token (and for every prompt token at prefill) the label is ``2`` on a mismatch,
  else ``1``, and the full TaH step runs with those ``iter_labels`` on the main cache.

Per generated token this costs one depth-1 TaH pass, one reference pass and one full TaH step,
which is fine for the analysis it is meant for. Sampling uses the per-row seeded sampler.
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
from tah.evaluation.sampling import RowSampler
from tah.model.checkpoint import quiet_hub_bars
from tah.model.loading import resolve_device, resolve_dtype

_PROBE = "Compute 12 + 30 = 42, then \\boxed{42}. Think step by step."


class OracleBackend(Backend):
    """TaH model whose iterations are chosen by a reference model (analysis upper bound)."""

    name = "oracle"

    def __init__(self, model_path: str, options: BackendOptions) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from tah import TaHForCausalLM

        if not options.reference:
            raise ConfigError("--backend oracle needs --reference PATH (the reference causal LM)")
        self.model_path, self.reference_path = model_path, options.reference
        self.device = resolve_device(options.device)
        dtype = resolve_dtype(options.dtype, self.device)
        options.reject_unused(self.name)
        self.model = TaHForCausalLM.from_pretrained(
            model_path, decider="label", device=self.device, dtype=dtype
        ).eval()
        if self.model.config.max_iter < 2:
            raise ConfigError(f"{model_path}: max_iter is 1, nothing for the oracle to decide")
        self.tokenizer = getattr(self.model, "tokenizer", None) or load_tokenizer(model_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        ref_tok = load_tokenizer(options.reference, options.trust_remote_code)
        if ref_tok(_PROBE)["input_ids"] != self.tokenizer(_PROBE)["input_ids"]:
            raise ConfigError(
                f"reference {options.reference} tokenizes text differently from {model_path}; "
                f"the oracle compares token ids, so both need the same tokenizer"
            )
        with quiet_hub_bars():
            reference = AutoModelForCausalLM.from_pretrained(
                options.reference, dtype=dtype, trust_remote_code=options.trust_remote_code
            )
        self.reference = reference.to(self.device).eval()
        self.stops = stop_token_ids(self.tokenizer, self.model.base_model)
        self.context_length = self.model.max_context
        self._torch = torch

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "model": self.model_path,
            "reference": self.reference_path,
            "device": self.device,
            "n_params": count_parameters(self.model),
            "max_iter": self.model.config.max_iter,
        }

    def _ref_step(self, ids: Any, mask: Any, position: Any, cache: Any) -> tuple[Any, Any]:
        out = self.reference(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position,
            **with_cache(self.reference, cache),
        )
        return out.logits.argmax(dim=-1), returned_cache(out)

    def generate(self, prompts, params, seeds):  # type: ignore[override]
        torch = self._torch
        model = self.model
        ids, mask = encode_prompts(self.tokenizer, prompts, self.device)
        batch = ids.shape[0]
        sampler = RowSampler(list(seeds), self.device)
        pad = self.tokenizer.pad_token_id or 0
        stops = torch.tensor(self.stops, device=self.device)
        generated: list[list[int]] = [[] for _ in range(batch)]
        counts: list[list[int]] = [[] for _ in range(batch)]
        finished = torch.zeros(batch, dtype=torch.bool, device=self.device)
        start = time.perf_counter()

        def ones(
            x: Any,
        ) -> Any:  # labels for the depth-1-only pass (the decider's verdict is unused)
            return torch.ones_like(x)

        with torch.inference_mode():
            cache_d1, cache = model.new_cache(), model.new_cache()
            valid = mask.bool()
            position = (mask.cumsum(-1) - 1).clamp_min(0)
            # Prefill: labels for every prompt token.
            depth1 = model(
                ids, attention_mask=valid, iter_labels=ones(ids), cache=cache_d1, max_depth=1
            )
            ref_pred, ref_cache = self._ref_step(ids, mask, position, None)
            labels = 1 + (depth1.logits.argmax(-1) != ref_pred).long()
            labels = labels.masked_fill(~valid, -100)
            out = model(ids, attention_mask=valid, iter_labels=labels, cache=cache)
            ref_mask, next_pos = mask, position[:, -1:] + 1
            for step_index in range(params.max_new_tokens):
                token = sampler.sample(out.logits[:, -1], params)
                token = token.masked_fill(finished, pad)
                step_counts = out.iter_counts[:, -1].tolist()
                for i, t in enumerate(token.tolist()):
                    if not bool(finished[i]):
                        generated[i].append(t)
                        counts[i].append(step_counts[i])
                finished = finished | torch.isin(token, stops)
                if bool(finished.all()) or step_index == params.max_new_tokens - 1:
                    break
                live = ~finished
                step = token[:, None]
                depth1 = model(
                    step,
                    attention_mask=live[:, None],
                    iter_labels=ones(step),
                    cache=cache_d1,
                    max_depth=1,
                )
                ref_mask = torch.cat([ref_mask, live[:, None].long()], dim=1)
                ref_pred, ref_cache = self._ref_step(step, ref_mask, next_pos, ref_cache)
                next_pos = next_pos + 1
                labels = 1 + (depth1.logits.argmax(-1) != ref_pred).long()
                labels = labels.masked_fill(~live[:, None], -100)
                out = model(step, attention_mask=live[:, None], iter_labels=labels, cache=cache)
        elapsed = time.perf_counter() - start
        gens = []
        for i, toks in enumerate(generated):
            n = len(toks)
            gens.append(
                Generation(
                    text=self.tokenizer.decode(toks, skip_special_tokens=True),
                    token_ids=toks,
                    n_tokens=n,
                    iter_counts=iter_summary(counts[i]),
                    time_s=elapsed / batch,
                    finish_reason="stop" if toks and toks[-1] in self.stops else "length",
                )
            )
        return gens

    def close(self) -> None:
        self.model = self.reference = None
