"""``tah demo``: the bundled tiny TaH model solves a few sample word problems, offline.

The checkpoint in ``tah/assets/tiny-tah`` was trained by ``tah repro tiny`` (its
``repro.json`` says how, and with what results). The demo draws ``--count`` problems from the
same synthetic task (or takes ``--problem``), decodes each greedily, prints every token
coloured by how many passes it ran, and marks each answer right or wrong, so what you see is
the model's real hit rate rather than one lucky or unlucky problem.

``tah demo --twohop`` runs the two-hop lookup model instead (:mod:`tah.cli.demo_twohop`).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seed", type=int, default=0, help="first sample problem (default 0); the next ones follow"
    )
    parser.add_argument(
        "--count", type=int, default=5, help="how many sample problems to solve (default 5)"
    )
    parser.add_argument("--problem", help="your own problem text instead of the samples")
    parser.add_argument(
        "--difficulty",
        type=int,
        choices=[1, 2, 3, 4],
        help="difficulty of the sample problems (default: what the model was trained on)",
    )
    parser.add_argument("--model", help="a TaH checkpoint to use instead of the bundled tiny model")
    parser.add_argument("--threshold", type=float, help="override the decider threshold τ")
    parser.add_argument(
        "--decider", choices=["mlp", "always", "never"], help="override the decider"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=160, help="token budget per answer (default 160)"
    )
    parser.add_argument(
        "--twohop",
        action="store_true",
        help="the two-hop lookup model of `tah repro twohop` instead (TaH+ vs its first pass)",
    )
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


def _problems(args: argparse.Namespace, facts: dict) -> list[tuple[str, str | None]]:
    """(problem, gold answer or None) pairs: the user's problem, or ``--count`` samples."""
    import random

    from tah.data.synthetic import generate_problem

    if args.problem:
        return [(args.problem, None)]
    levels = list(facts.get("difficulty") or [2])
    out = []
    for seed in range(args.seed, args.seed + args.count):
        level = args.difficulty or random.Random(seed).choice(levels)
        record = generate_problem(random.Random(seed), level)
        out.append((record["problem"], record["answer"]))
    return out


def _solve(model, problem: str, gold: str | None, max_new_tokens: int) -> dict:
    from tah.cli.generate import encode_prompt, stop_ids

    input_ids = encode_prompt(model.tokenizer, problem, chat=True)
    stops = stop_ids(model.tokenizer, model)
    res = model.generate(
        input_ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops or None
    )
    counts = res.iter_counts[0].tolist()
    generated = res.sequences[0, input_ids.shape[1] :].tolist()
    keep = [i for i, c in enumerate(counts) if c > 0]
    generated, counts = [generated[i] for i in keep], [counts[i] for i in keep]
    text = model.tokenizer.decode(generated, skip_special_tokens=True)
    answer = _final_answer(text)
    return {
        "problem": problem,
        "gold": gold,
        "answer": answer,
        "correct": None if gold is None else answer == gold,
        "text": text,
        "generated": generated,
        "counts": counts,
        # The end-of-turn token ends the answer: counted in the stats, not printed as text.
        "shown": [i for i, t in enumerate(generated) if t not in stops],
        "stats": res.stats,
    }


def run(args: argparse.Namespace) -> int:
    import json
    import time

    import torch
    from rich.console import Console
    from transformers.utils import logging as hf_logging

    from tah.cli.render import coloured_text, legend, stats_line, token_pieces
    from tah.errors import ConfigError
    from tah.model.loading import bundled_model_path, load_model_from_cli

    hf_logging.disable_progress_bar()  # a 1 MB model loads in well under a second: no bar
    if args.twohop:
        from tah.cli.demo_twohop import run_twohop_demo

        return run_twohop_demo(args)

    torch.set_flush_denormal(True)
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.count < 1:
        raise ConfigError(f"--count must be >= 1, got {args.count}")
    start = time.perf_counter()
    model = load_model_from_cli(args.model, threshold=args.threshold, decider=args.decider)
    model.eval()
    facts = _training_facts(args.model or bundled_model_path())
    loaded = time.perf_counter()
    results = [_solve(model, p, g, args.max_new_tokens) for p, g in _problems(args, facts)]
    graded = [r["correct"] for r in results if r["correct"] is not None]
    if args.json:
        for r in results:
            r.pop("shown")
            pieces = token_pieces(model.tokenizer, r.pop("generated"))
            r["tokens"] = [{"text": p, "iterations": c} for p, c in zip(pieces, r.pop("counts"))]
        print(
            json.dumps(
                {
                    "problems": results,
                    "correct": sum(graded),
                    "graded": len(graded),
                    "threshold": model.config.threshold,
                    "load_time_s": loaded - start,
                    "total_time_s": time.perf_counter() - start,
                }
            )
        )
        return 0
    console = Console()
    name = "bundled tiny TaH model" if args.model is None else str(args.model)
    console.print(f"[bold]{name}[/], τ = {model.config.threshold:g}", highlight=False)
    console.print(legend(model.config.max_iter))
    for i, r in enumerate(results, 1):
        console.print()
        console.print(f"[bold]Problem {i}/{len(results)}[/]: {r['problem']}", highlight=False)
        shown = [r["generated"][i] for i in r["shown"]]
        counts = [r["counts"][i] for i in r["shown"]]
        console.print(coloured_text(token_pieces(model.tokenizer, shown), counts))
        console.print(stats_line(r["stats"]), style="dim")
        if r["correct"] is True:
            console.print(f"[green]✓ right[/] (answer {r['answer']})")
        elif r["correct"] is False:
            console.print(f"[red]✗ wrong[/]: answered {r['answer']}, expected {r['gold']}")
    console.print()
    if graded:
        console.print(f"[bold]{sum(graded)} of {len(graded)} right[/] here.")
    if facts.get("summary"):
        console.print(f"[dim]{facts['summary']}[/]")
    return 0
