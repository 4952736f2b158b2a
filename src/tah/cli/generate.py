"""`tah generate`: one prompt in, text out, each token coloured by its iteration count."""

from __future__ import annotations

import argparse
import json

from tah.cli.common_args import add_iter_budget_argument, add_sampling_arguments


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        help="TaH checkpoint, HF model directory, hub id or .gguf file "
        "(default: the bundled tiny model)",
    )
    parser.add_argument("--gguf-file", help="GGUF file name inside --model (a directory or hub id)")
    parser.add_argument(
        "--threshold",
        type=float,
        help="override the decider threshold τ (TaH checkpoints only; default: the checkpoint's)",
    )
    parser.add_argument(
        "--decider",
        choices=["mlp", "always", "never"],
        help="override the decider (TaH checkpoints only; default: the checkpoint's)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (the GPU when there is one), cpu, cuda, cuda:1 ..."
    )
    parser.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="weights' dtype (default: float32)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--prompt", required=True, help="the prompt text")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="most tokens to generate")
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy")
    add_sampling_arguments(parser, seed=0, when="with --do-sample")
    add_iter_budget_argument(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def load_from_args(args: argparse.Namespace):
    from tah.model.loading import load_model_from_cli

    return load_model_from_cli(
        args.model,
        gguf_file=args.gguf_file,
        threshold=args.threshold,
        decider=args.decider,
        device=args.device,
        dtype=args.dtype,
    )


def encode_prompt(tokenizer, prompt: str, chat: bool):
    import torch

    from tah.errors import DataError

    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise DataError("--chat needs a tokenizer with a chat template; this one has none")
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
    else:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    if not ids:
        raise DataError("the prompt is empty after tokenisation")
    return torch.tensor([list(ids)], dtype=torch.long)


def stop_ids(tokenizer, model) -> list[int]:
    """The tokens that end an answer: eos ids and the chat template's end-of-turn token."""
    from tah.errors import CheckpointError
    from tah.evaluation.backend_base import stop_token_ids

    try:
        return stop_token_ids(tokenizer, model.base_model)
    except CheckpointError:
        return []


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tah.cli.render import print_generation, token_pieces
    from tah.errors import DataError

    model = load_from_args(args)
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise DataError(f"{args.model} has no tokenizer files; save one with the model")
    input_ids = encode_prompt(tokenizer, args.prompt, args.chat)
    stops = stop_ids(tokenizer, model)
    res = model.generate(
        input_ids,
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        seed=args.seed,
        threshold=args.threshold,
        iter_budget=args.iter_budget,
        eos_token_id=stops or None,
    )
    generated = res.sequences[0, input_ids.shape[1] :].tolist()
    counts = res.iter_counts[0].tolist()
    # The end-of-turn token ends the answer; it is not part of the text shown.
    keep = [i for i, c in enumerate(counts) if c > 0 and generated[i] not in stops]
    generated = [generated[i] for i in keep]
    counts = [counts[i] for i in keep]
    pieces = token_pieces(tokenizer, generated)
    if args.json:
        print(
            json.dumps(
                {
                    "prompt": args.prompt,
                    "text": tokenizer.decode(generated, skip_special_tokens=True),
                    "tokens": [
                        {"id": t, "text": p, "iterations": c}
                        for t, p, c in zip(generated, pieces, counts)
                    ],
                    "stats": res.stats,
                    "threshold": model.config.threshold,
                    "max_iter": model.config.max_iter,
                    "iter_budget": args.iter_budget,
                }
            )
        )
        return 0
    print_generation(Console(), pieces, counts, res.stats, model.config.max_iter)
    return 0
