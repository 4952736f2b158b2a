"""Arguments and configuration shared by ``tah eval`` and ``tah sweep``.

Both commands take the same evaluation flags; this module sits below both, so neither command
module imports the other's internals (``tah eval --thresholds`` hands over to ``tah sweep``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from tah.errors import ConfigError

BACKEND_CHOICES = (
    "auto",
    "tah",
    "hf",
    "softthink",
    "oracle",
    "routing",
    "vllm",
    "sglang",
    "scripted",
)


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by ``tah eval`` and ``tah sweep``."""
    g = parser.add_argument_group("what to evaluate")
    g.add_argument(
        "--model",
        help="model folder, hub id or .gguf file (scripted backend: its JSONL file); "
        "default: the bundled tiny model",
    )
    g.add_argument(
        "--datasets",
        default="gsm8k",
        help="comma list of registry names (gsm8k, math500, aime24, aime25, amc23, "
        "olympiadbench), JSONL paths, dataset folders or hub ids",
    )
    g.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default="auto",
        help="auto = tah for TaH checkpoints, hf otherwise",
    )
    g.add_argument("--samples", type=int, default=1, help="samples per problem")
    g.add_argument("--limit", type=int, default=None, help="first K problems of each dataset")
    g.add_argument("--threshold", type=float, default=None, help="override the decider threshold τ")
    g.add_argument(
        "--iter-budget",
        type=float,
        default=None,
        help="target share of generated tokens that iterate (e.g. 0.05); steers τ per sample",
    )
    g.add_argument(
        "--decider",
        choices=("mlp", "always", "never", "label"),
        default=None,
        help="override the decider (always = AlwaysThink baseline)",
    )
    g.add_argument("--reference", default=None, help="reference model for --backend oracle")
    g.add_argument("--data-dir", default=None, help="folder with <name>/test.jsonl files")
    g.add_argument(
        "--answer-type",
        choices=("expr", "latex", "string"),
        default=None,
        help="grader for file/hub datasets (default: registry value, else latex)",
    )

    g = parser.add_argument_group("prompting and sampling (paper defaults)")
    g.add_argument(
        "--prompt-style",
        choices=("bare", "boxed"),
        default="bare",
        help="bare = the question alone (paper); boxed = add the step-by-step/\\boxed{} line",
    )
    g.add_argument("--no-chat-template", action="store_true", help="feed the raw question text")
    g.add_argument(
        "--thinking",
        choices=("default", "on", "off"),
        default="default",
        help="enable_thinking for templates that support it (default: template default)",
    )
    g.add_argument("--temperature", type=float, default=0.6, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling; 1 = off")
    g.add_argument("--top-k", type=int, default=20, help="top-k sampling; 0 = off")
    g.add_argument("--min-p", type=float, default=0.0, help="min-p sampling; 0 = off")
    g.add_argument(
        "--max-new-tokens",
        type=int,
        default=4096,
        help="token budget per answer (less where the prompt leaves less of the context)",
    )
    g.add_argument("--seed", type=int, default=42, help="base seed; each sample derives its own")

    g = parser.add_argument_group("execution")
    g.add_argument("--jobs", type=int, default=1, help="worker processes")
    g.add_argument("--devices", default=None, help="comma list, one per worker (cuda:0,cuda:1)")
    g.add_argument("--device", default="auto", help="device for --jobs 1 (auto, cpu, cuda:0 ...)")
    g.add_argument(
        "--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16"
    )
    g.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="sequences in flight (engine: a finished one's row takes the next prompt at once) "
        "or prompts per generate call",
    )
    g.add_argument(
        "--grade-timeout", type=float, default=10.0, help="seconds per sample for grading"
    )
    g.add_argument(
        "--grading",
        choices=("default", "paper"),
        default="default",
        help="paper = the reference grader exactly (it marks \\frac43 wrong); "
        "see tah.evaluation.grading",
    )
    g.add_argument(
        "--backend-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="backend-specific option, repeatable (hf, tah: generator=auto|engine|core, "
        "auto = the engine with continuous batching where it runs the model; tah: "
        "speculate_depth1=greedy|all|off, the engine's speculative depth 1; softthink: "
        "soft_scope, soft_topk; vllm: tensor_parallel_size; scripted: delay_s)",
    )
    g.add_argument(
        "--trust-remote-code", action="store_true", help="let transformers run the model's own code"
    )
    g.add_argument("--output", default=None, help="run folder (default: eval_runs/<name>)")
    g.add_argument("--name", default=None, help="method name shown in reports")
    g.add_argument("--overwrite", action="store_true", help="discard an existing run in --output")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _backend_options(args: argparse.Namespace) -> dict[str, str]:
    extra = {}
    for item in args.backend_option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--backend-option {item!r}: use KEY=VALUE")
        extra[key.strip()] = value.strip()
    return extra


def resolve_backend(backend: str, model: str) -> str:
    if backend != "auto":
        return backend
    return "tah" if (Path(model) / "tah_config.json").is_file() else "hf"


def config_from_args(args: argparse.Namespace) -> Any:
    """Build an EvalConfig from parsed arguments (shared with ``tah sweep``)."""
    from tah.evaluation.backends import BackendOptions
    from tah.evaluation.datasets import parse_dataset_list
    from tah.evaluation.runner import EvalConfig
    from tah.model.sampling import SamplingParams

    if not args.model:
        if args.backend == "scripted":
            raise ConfigError("--backend scripted needs --model FILE.jsonl (match/output lines)")
        from tah.model.loading import bundled_model_path

        args.model = str(bundled_model_path())
    backend = resolve_backend(args.backend, args.model)
    options = BackendOptions(
        device=args.device,
        dtype=args.dtype,
        threshold=args.threshold,
        iter_budget=args.iter_budget,
        decider=args.decider,
        reference=args.reference,
        trust_remote_code=args.trust_remote_code,
        extra=_backend_options(args),
    )
    if args.threshold is not None and backend not in ("tah",):
        raise ConfigError(f"--threshold applies to --backend tah, not {backend!r}")
    if args.iter_budget is not None:
        from tah.model.budget import check_budget

        check_budget(args.iter_budget, "--iter-budget")
        if backend != "tah":
            raise ConfigError(f"--iter-budget applies to --backend tah, not {backend!r}")
    if args.decider is not None and backend != "tah":
        raise ConfigError(f"--decider applies to --backend tah, not {backend!r}")
    sampling = SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        max_tokens=args.max_new_tokens,
    )
    thinking = {"default": None, "on": True, "off": False}[args.thinking]
    devices = [d.strip() for d in args.devices.split(",")] if args.devices else None
    config = EvalConfig(
        model=args.model,
        datasets=parse_dataset_list(args.datasets),
        output="",
        backend=backend,
        samples=args.samples,
        jobs=args.jobs,
        limit=args.limit,
        batch_size=args.batch_size,
        seed=args.seed,
        prompt_style=args.prompt_style,
        chat_template=not args.no_chat_template,
        enable_thinking=thinking,
        sampling=sampling,
        backend_options=options,
        devices=devices,
        data_dir=args.data_dir,
        answer_type=args.answer_type,
        grade_time_limit=args.grade_timeout,
        grading=args.grading,
        name=args.name,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    config.output = args.output or os.path.join("eval_runs", config.display_name())
    return config
