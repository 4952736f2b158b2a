"""Generation backends behind one small interface, so every method runs through ``tah eval``.

A backend turns already-templated prompts into :class:`Generation` records. Backends:

* ``hf``: a plain causal LM (Standard baseline) and ``tah``: a TaH checkpoint
  (``TaHForCausalLM.from_pretrained``; ``decider="always"`` gives the AlwaysThink baseline,
  ``threshold`` overrides tau). Both generate on the engine with continuous batching
  (``continuous_batching.py``) where it runs the model, else, or with the backend option
  ``generator=core``, through ``AutoModelForCausalLM.generate`` / ``TaHForCausalLM.generate``
  with left padding. Every sample draws from its own seeded generator, so its text does not
  depend on its batch neighbours (the hf core path through our per-row seeded processor, see
  ``sampling.py``).
* ``softthink`` and ``oracle``: own decode loops, in ``softthink.py`` and ``oracle.py``.
* ``vllm`` / ``sglang``: optional engines for plain checkpoints (``engines.py``); a clear
  error when the package is missing.
* ``scripted``: answers from a JSONL file of ``{"match": substring, "output": text}`` lines;
  for testing the pipeline and for re-grading outputs produced elsewhere.

Question-level routing is not a backend (it generates nothing): see ``routing.py``.

We keep this thin layer instead of an evaluation harness's model classes (lm-eval, lighteval)
because TaH needs per-token iteration counts back from generation, and resumable runs need
control over per-sample seeds; neither fits those APIs.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tah.engine.options import SPECULATE_MODES
from tah.errors import CheckpointError, ConfigError
from tah.evaluation.backend_base import (  # noqa: F401 (re-exported: the public names live here too)
    Backend,
    BackendOptions,
    Generation,
    count_parameters,
    cut_at_stop,
    encode_prompts,
    iter_summary,
    load_tokenizer,
    prompt_token_ids,
    stop_token_ids,
)
from tah.evaluation.sampling import make_hf_processor
from tah.model.checkpoint import check_safetensors, quiet_hub_bars
from tah.model.loading import check_model_source, resolve_device, resolve_dtype

BACKENDS = ("hf", "tah", "softthink", "oracle", "vllm", "sglang", "scripted")


# ---------------------------------------------------------------------------------- engine
class EngineBackedBackend(Backend):
    """A backend that generates on the engine when it can (``generator`` option: auto,
    engine or core; see ``continuous_batching.py``) and through its core path otherwise."""

    model_path = ""
    stops: list[int]
    threshold: float | None = None
    iter_budget: float | None = None
    engine_gen: Any = None
    generator_note = ""

    def _use_engine(self, requested: str, factory: Any, record_entropy: bool = False) -> None:
        from tah.evaluation.continuous_batching import EngineGenerator, choose_generator

        make, self.generator_note = choose_generator(requested, factory, self.model_path)
        if make is not None:
            self.engine_gen = EngineGenerator(make, self.tokenizer, self.stops, record_entropy)

    def info(self) -> dict[str, Any]:
        out = {**super().info(), "generator": "core" if self.engine_gen is None else "engine"}
        if self.generator_note:
            out["generator_note"] = self.generator_note
        return out

    def stream(self, prompts, params, seeds, budgets, batch_size):  # type: ignore[override]
        if self.engine_gen is None:
            return None
        return self.engine_gen.stream(
            prompt_token_ids(self.tokenizer, prompts),
            params,
            seeds,
            budgets,
            batch_size,
            threshold=self.threshold,
            iter_budget=self.iter_budget,
        )

    def generate(self, prompts, params, seeds):  # type: ignore[override]
        if self.engine_gen is None:
            return self.core_generate(prompts, params, seeds)
        budgets = [params.max_new_tokens] * len(prompts)
        gens: list[Generation | None] = [None] * len(prompts)
        for i, gen in self.stream(prompts, params, seeds, budgets, len(prompts)):
            gens[i] = gen
        return gens

    def core_generate(self, prompts, params, seeds) -> list[Generation]:
        raise NotImplementedError

    def close(self) -> None:
        self.engine_gen = None


# ---------------------------------------------------------------------------------- hf
class HFBackend(EngineBackedBackend):
    """A plain transformers causal LM (the Standard baseline)."""

    name = "hf"

    def __init__(self, model_path: str, options: BackendOptions) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.model_path = model_path
        self.device = resolve_device(options.device)
        dtype = resolve_dtype(options.dtype, self.device)
        generator = options.take("generator", "auto")
        options.reject_unused(self.name)
        self.tokenizer = load_tokenizer(model_path, options.trust_remote_code)
        if Path(model_path).is_dir():
            check_safetensors(model_path)
        try:
            with quiet_hub_bars():
                model = AutoModelForCausalLM.from_pretrained(
                    model_path, dtype=dtype, trust_remote_code=options.trust_remote_code
                )
        except Exception as exc:
            raise CheckpointError(f"{model_path}: could not load a causal LM ({exc})") from exc
        self.model = model.to(self.device).eval()
        self.context_length = getattr(model.config, "max_position_embeddings", None)
        self.stops = stop_token_ids(self.tokenizer, self.model)
        # transformers merges a checkpoint's generation_config.json (repetition_penalty, top_k
        # ...) into every generate call; evaluation must use exactly the given sampling params.
        from transformers import GenerationConfig

        self.model.generation_config = GenerationConfig(
            eos_token_id=self.stops, pad_token_id=self.tokenizer.pad_token_id
        )
        self._torch = torch
        from tah.evaluation.continuous_batching import plain_engine_factory

        self._use_engine(
            generator,
            lambda: plain_engine_factory(self.model, self.stops, self.tokenizer),
            record_entropy=True,  # question-level routing's score, as the core path records
        )

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "model": self.model_path,
            "device": self.device,
            "n_params": count_parameters(self.model),
        }

    def core_generate(self, prompts, params, seeds):  # type: ignore[override]
        from transformers import GenerationConfig, LogitsProcessorList

        torch = self._torch
        ids, mask = encode_prompts(self.tokenizer, prompts, self.device)
        processor = make_hf_processor(list(seeds), params, self.device)
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=params.max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.stops,
        )
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                generation_config=config,
                logits_processor=LogitsProcessorList([processor]),
            )
        elapsed = time.perf_counter() - start
        new = out[:, ids.shape[1] :].tolist()
        entropies = torch.stack(processor.entropies, dim=1) if processor.entropies else None
        gens = []
        for i, row in enumerate(new):
            tokens, reason = cut_at_stop(row, self.stops)
            n = len(tokens)
            extra = {}
            if entropies is not None and n:
                extra["mean_entropy"] = float(entropies[i, :n].mean())
            gens.append(
                Generation(
                    text=self.tokenizer.decode(tokens, skip_special_tokens=True),
                    token_ids=tokens,
                    n_tokens=n,
                    iter_counts=iter_summary([1] * n),
                    time_s=elapsed / len(prompts),
                    finish_reason=reason,
                    extra=extra,
                )
            )
        return gens

    def close(self) -> None:
        super().close()
        self.model = None


# ---------------------------------------------------------------------------------- tah
class TaHBackend(EngineBackedBackend):
    """A TaH checkpoint (TaH, TaH+, AlwaysThink) on the engine or the core's ``generate``."""

    name = "tah"

    def __init__(self, model_path: str, options: BackendOptions) -> None:
        import torch

        from tah import TaHForCausalLM

        self.model_path = model_path
        self.device = resolve_device(options.device)
        dtype = resolve_dtype(options.dtype, self.device)
        generator = options.take("generator", "auto")
        speculate = options.take("speculate_depth1", "greedy", str)
        if speculate not in SPECULATE_MODES:  # before the engine, whose refusal means "fall back"
            raise ConfigError(
                f"--backend-option speculate_depth1={speculate!r}: use one of {SPECULATE_MODES}"
            )
        options.reject_unused(self.name)
        self.threshold = options.threshold
        self.iter_budget = options.iter_budget
        self.model = TaHForCausalLM.from_pretrained(
            model_path,
            threshold=options.threshold,
            decider=options.decider,
            device=self.device,
            dtype=dtype,
        )
        self.model.eval()
        self.context_length = self.model.max_context
        self.tokenizer = getattr(self.model, "tokenizer", None) or load_tokenizer(model_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.stops = stop_token_ids(self.tokenizer, self.model.base_model)
        self._torch = torch
        from tah.evaluation.continuous_batching import tah_engine_factory

        self._use_engine(
            generator,
            lambda: tah_engine_factory(self.model, self.stops, self.tokenizer, speculate),
        )

    def info(self) -> dict[str, Any]:
        cfg = self.model.config
        return {
            **super().info(),
            "model": self.model_path,
            "device": self.device,
            "n_params": count_parameters(self.model),
            "decider": cfg.decider,
            "threshold": float(cfg.threshold if self.threshold is None else self.threshold),
            "max_iter": cfg.max_iter,
            "iter_budget": self.iter_budget,
        }

    def core_generate(self, prompts, params, seeds):  # type: ignore[override]
        torch = self._torch
        ids, mask = encode_prompts(self.tokenizer, prompts, self.device)
        start = time.perf_counter()
        with torch.inference_mode():
            res = self.model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=params.max_new_tokens,
                do_sample=not params.greedy,
                temperature=params.temperature if not params.greedy else 1.0,
                top_k=params.top_k,
                top_p=params.top_p,
                min_p=params.min_p,
                eos_token_id=self.stops if len(self.stops) > 1 else self.stops[0],
                seed=[int(s) for s in seeds],  # one generator per row: per-sample seeding
                threshold=self.threshold,
                iter_budget=self.iter_budget,
            )
        elapsed = time.perf_counter() - start
        new = res.sequences[:, ids.shape[1] :].tolist()
        iters = res.iter_counts.tolist()
        gens = []
        for i, row in enumerate(new):
            tokens, reason = cut_at_stop(row, self.stops)
            n = len(tokens)
            gens.append(
                Generation(
                    text=self.tokenizer.decode(tokens, skip_special_tokens=True),
                    token_ids=tokens,
                    n_tokens=n,
                    iter_counts=iter_summary(iters[i][:n]),
                    time_s=elapsed / len(prompts),
                    finish_reason=reason,
                )
            )
        return gens

    def close(self) -> None:
        super().close()
        self.model = None


# ---------------------------------------------------------------------------------- scripted
class ScriptedBackend(Backend):
    """Answers from a file: the first line whose ``match`` occurs in the prompt wins.

    The file is JSONL with ``{"match": str, "output": str}`` lines. Option ``delay_s`` sleeps
    per prompt (to test kills and progress). Token counts are whitespace-separated words.
    """

    name = "scripted"

    def __init__(self, path: str, options: BackendOptions) -> None:
        self.path = path
        self.delay_s = options.take("delay_s", 0.0, float)
        self.default = options.take("default", "", str)
        options.reject_unused(self.name)
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"scripted backend: {path} is not a JSONL file of match/output lines")
        self.rules: list[tuple[str, str]] = []
        for lineno, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                self.rules.append((str(rec["match"]), str(rec["output"])))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ConfigError(
                    f'{path}:{lineno}: expected {{"match": ..., "output": ...}}'
                ) from exc

    def info(self) -> dict[str, Any]:
        return {**super().info(), "model": self.path, "n_params": 0}

    def generate(self, prompts, params, seeds):  # type: ignore[override]
        gens = []
        for prompt in prompts:
            start = time.perf_counter()
            if self.delay_s:
                time.sleep(self.delay_s)
            text = next((out for m, out in self.rules if m in str(prompt)), self.default)
            words = text.split()[: params.max_new_tokens]
            n = len(words)
            gens.append(
                Generation(
                    text=text,
                    token_ids=[],
                    n_tokens=n,
                    iter_counts=iter_summary([1] * n),
                    time_s=time.perf_counter() - start,
                    finish_reason="stop" if n < params.max_new_tokens else "length",
                )
            )
        return gens


# ---------------------------------------------------------------------------------- factory
def check_local_model(kind: str, model_path: str) -> None:
    """A missing local model path fails here, clearly, for the backends that load with
    transformers (see :func:`tah.model.loading.check_model_source`)."""
    if kind in ("hf", "tah", "softthink", "oracle"):
        check_model_source(model_path, needs_config=False)
        if not Path(model_path).expanduser().exists():
            check_hub_model(model_path)


def check_hub_model(name: str) -> None:
    """A hub id must be in the local Hugging Face cache or the hub reachable: offline, a
    mistyped id fails here at once, before a run folder is made."""
    from huggingface_hub import try_to_load_from_cache

    from tah.model.checkpoint import hub_unreachable

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except Exception:  # an id the hub client refuses (bad characters ...)
        cached = None
    if isinstance(cached, str):
        return
    offline = hub_unreachable()
    if offline is not None:
        raise CheckpointError(
            f"--model {name}: no such local folder ({Path(name).expanduser().resolve()}), not in "
            f"the Hugging Face cache, and the hub is offline ({offline}); check the name or pass "
            "a local model folder"
        )


def make_backend(kind: str, model_path: str, options: BackendOptions | None = None) -> Backend:
    """Build a backend by name; options are consumed, leftovers are an error."""
    options = options or BackendOptions()
    options = BackendOptions(**{**asdict(options), "extra": dict(options.extra)})
    check_local_model(kind, model_path)
    if kind == "hf":
        return HFBackend(model_path, options)
    if kind == "tah":
        return TaHBackend(model_path, options)
    if kind == "softthink":
        from tah.evaluation.softthink import SoftThinkBackend

        return SoftThinkBackend(model_path, options)
    if kind == "oracle":
        from tah.evaluation.oracle import OracleBackend

        return OracleBackend(model_path, options)
    if kind in ("vllm", "sglang"):
        from tah.evaluation.engines import SGLangBackend, VLLMBackend

        return (VLLMBackend if kind == "vllm" else SGLangBackend)(model_path, options)
    if kind == "scripted":
        return ScriptedBackend(model_path, options)
    raise ConfigError(
        f"backend {kind!r} unknown; use one of {BACKENDS} (routing: --backend routing)"
    )
