"""``tah demo``: the bundled tiny TaH model solves a sample word problem, offline, in seconds.

The checkpoint in ``tah/assets/tiny-tah`` was trained by ``tah repro tiny`` (its
``repro.json`` says how, and with what results). The demo draws a problem from the same
synthetic task (or takes ``--problem``), decodes greedily, prints every token coloured by how
many passes it ran, the stats line, and whether the final answer matches.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=7, help="which sample problem (default 7)")
    parser.add_argument("--problem", help="your own problem text instead of a sample")
    parser.add_argument(
        "--difficulty",
        type=int,
        choices=[1, 2, 3, 4],
        help="difficulty of the sample problem (default: what the model was trained on)",
    )
    parser.add_argument("--model", help="a TaH checkpoint to use instead of the bundled tiny model")
    parser.add_argument("--threshold", type=float, help="override the decider threshold τ")
    parser.add_argument(
        "--decider", choices=["mlp", "always", "never"], help="override the decider"
    )
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _training_facts(model_dir) -> dict:
    import json
    from pathlib import Path

    path = Path(model_dir) / "repro.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _final_answer(text: str) -> str | None:
    import re

    match = re.search(r"####\s*(-?\d+)", text) or re.search(r"\\boxed\{(-?\d+)\}", text)
    return match.group(1) if match else None


def run(args: argparse.Namespace) -> int:
    import json
    import random
    import time

    import torch
    from rich.console import Console
    from transformers.utils import logging as hf_logging

    from tah.cli.generate import encode_prompt
    from tah.cli.render import print_generation, token_pieces
    from tah.data.synthetic import generate_problem
    from tah.errors import ConfigError
    from tah.model.loading import bundled_model_path, load_model_from_cli

    hf_logging.disable_progress_bar()  # a 1 MB model loads instantly: no "Loading weights" bar

    torch.set_flush_denormal(True)
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    start = time.perf_counter()
    model = load_model_from_cli(args.model, threshold=args.threshold, decider=args.decider)
    model.eval()
    facts = _training_facts(args.model or bundled_model_path())
    if args.problem:
        problem, gold = args.problem, None
    else:
        levels = facts.get("difficulty") or [2]
        level = args.difficulty or random.Random(args.seed).choice(list(levels))
        record = generate_problem(random.Random(args.seed), level)
        problem, gold = record["problem"], record["answer"]
    input_ids = encode_prompt(model.tokenizer, problem, chat=True)
    res = model.generate(input_ids, max_new_tokens=args.max_new_tokens, do_sample=False)
    counts = res.iter_counts[0].tolist()
    generated = res.sequences[0, input_ids.shape[1] :].tolist()
    keep = [i for i, c in enumerate(counts) if c > 0]
    generated, counts = [generated[i] for i in keep], [counts[i] for i in keep]
    text = model.tokenizer.decode(generated, skip_special_tokens=True)
    answer = _final_answer(text)
    verdict = None if gold is None else answer == gold
    if args.json:
        pieces = token_pieces(model.tokenizer, generated)
        print(
            json.dumps(
                {
                    "problem": problem,
                    "gold": gold,
                    "answer": answer,
                    "correct": verdict,
                    "text": text,
                    "tokens": [{"text": p, "iterations": c} for p, c in zip(pieces, counts)],
                    "stats": res.stats,
                    "threshold": model.config.threshold,
                    "total_time_s": time.perf_counter() - start,
                }
            )
        )
        return 0
    console = Console()
    name = "bundled tiny TaH model" if args.model is None else str(args.model)
    console.print(f"[bold]Problem[/] ({name}, τ = {model.config.threshold:g}):")
    console.print(problem, highlight=False)
    console.print()
    print_generation(
        console, token_pieces(model.tokenizer, generated), counts, res.stats, model.config.max_iter
    )
    if verdict is True:
        console.print(f"[green]✓ correct[/] (answer {answer})")
    elif verdict is False:
        console.print(f"[red]✗ wrong[/]: answered {answer}, expected {gold}")
    if facts.get("summary"):
        console.print(f"[dim]{facts['summary']}[/]")
    return 0
