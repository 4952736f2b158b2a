"""Optional serving engines (vLLM, SGLang) for plain checkpoints, behind the backend interface.

They are imported only when asked for; when the package is missing the user gets a
:class:`~tah.errors.ConfigError` that says so and points at ``--backend hf``. Both refuse a
TaH checkpoint: they would load its base weights and silently drop the iterations (LoRA and
decider), which is how the reference evaluator produced misleading numbers (docs/method.md §11).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tah.errors import ConfigError
from tah.evaluation.backend_base import (
    Backend,
    BackendOptions,
    Generation,
    iter_summary,
    load_tokenizer,
)


def _missing(package: str, backend: str) -> ConfigError:
    return ConfigError(
        f"backend {backend!r} needs the {package!r} package, which is not installed "
        f"(pip install {package}); use --backend hf for the same plain model without it"
    )


class VLLMBackend(Backend):
    """vLLM for plain checkpoints (a TaH checkpoint would lose its iterations: refused)."""

    name = "vllm"

    def __init__(self, model_path: str, options: BackendOptions) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise _missing("vllm", "vllm") from exc
        _refuse_tah_checkpoint(model_path, self.name)
        self.model_path = model_path
        tp = options.take("tensor_parallel_size", 1, int)
        mem = options.take("gpu_memory_utilization", 0.85, float)
        options.reject_unused(self.name)
        self._vllm = vllm
        self.llm = vllm.LLM(
            model=model_path,
            tensor_parallel_size=tp,
            gpu_memory_utilization=mem,
            dtype=options.dtype if options.dtype != "auto" else "auto",
        )
        self.tokenizer = self.llm.get_tokenizer()

    def info(self) -> dict[str, Any]:
        return {**super().info(), "model": self.model_path}

    def generate(self, prompts, params, seeds):  # type: ignore[override]
        sp = [
            self._vllm.SamplingParams(
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k or -1,
                min_p=params.min_p,
                max_tokens=params.max_new_tokens,
                seed=int(s),
            )
            for s in seeds
        ]
        start = time.perf_counter()
        if prompts and not isinstance(prompts[0], str):
            inputs: Any = [{"prompt_token_ids": list(p)} for p in prompts]
        else:
            inputs = list(prompts)
        outs = self.llm.generate(inputs, sp, use_tqdm=False)
        elapsed = time.perf_counter() - start
        gens = []
        for out in outs:
            c = out.outputs[0]
            n = len(c.token_ids)
            gens.append(
                Generation(
                    c.text,
                    list(c.token_ids),
                    n,
                    iter_summary([1] * n),
                    elapsed / len(prompts),
                    "length" if c.finish_reason == "length" else "stop",
                )
            )
        return gens


class SGLangBackend(Backend):
    """SGLang for plain checkpoints (refuses TaH checkpoints, see docs/method.md §11)."""

    name = "sglang"

    def __init__(self, model_path: str, options: BackendOptions) -> None:
        try:
            import sglang
        except ImportError as exc:
            raise _missing("sglang", "sglang") from exc
        _refuse_tah_checkpoint(model_path, self.name)
        self.model_path = model_path
        tp = options.take("tp_size", 1, int)
        mem = options.take("mem_fraction_static", 0.8, float)
        options.reject_unused(self.name)
        self.engine = sglang.Engine(model_path=model_path, tp_size=tp, mem_fraction_static=mem)
        self.tokenizer = load_tokenizer(model_path)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "model": self.model_path}

    def generate(self, prompts, params, seeds):  # type: ignore[override]
        sp = [
            {
                "temperature": params.temperature,
                "top_p": params.top_p,
                "top_k": params.top_k or -1,
                "min_p": params.min_p,
                "max_new_tokens": params.max_new_tokens,
                "sampling_seed": int(s),
            }
            for s in seeds
        ]
        start = time.perf_counter()
        if prompts and not isinstance(prompts[0], str):
            outs = self.engine.generate(input_ids=[list(p) for p in prompts], sampling_params=sp)
        else:
            outs = self.engine.generate(prompt=list(prompts), sampling_params=sp)
        elapsed = time.perf_counter() - start
        gens = []
        for out in outs:
            meta = out.get("meta_info", {})
            n = int(meta.get("completion_tokens", 0))
            reason = (meta.get("finish_reason") or {}).get("type", "stop")
            gens.append(
                Generation(
                    out["text"],
                    list(out.get("output_ids", [])),
                    n,
                    iter_summary([1] * n),
                    elapsed / len(prompts),
                    "length" if reason == "length" else "stop",
                )
            )
        return gens

    def close(self) -> None:
        self.engine.shutdown()


def _refuse_tah_checkpoint(model_path: str, backend: str) -> None:
    if (Path(model_path) / "tah_config.json").is_file():
        raise ConfigError(
            f"{model_path} is a TaH checkpoint; backend {backend!r} would silently drop its "
            f"iterations (LoRA and decider). Use --backend tah."
        )
