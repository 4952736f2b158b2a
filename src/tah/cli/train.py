"""``tah train RECIPE``: stage 1 / stage 2 of TaH, or the Standard / AlwaysThink baselines.

The same command runs on one CPU and under ``accelerate launch`` / ``torchrun`` (DDP, FSDP,
DeepSpeed); see ``recipes/`` for paper-scale and CPU-scale recipes and ``recipes/accelerate/``
for launcher configs. Every input problem (unknown recipe key, bad data line, tokenizer or
vocabulary mismatch, empty data) is reported before any compute.
"""

from __future__ import annotations

import argparse

from tah.cli.common_args import add_overrides_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="YAML recipe (see recipes/)")
    add_overrides_argument(
        parser, "override a recipe value, e.g. --set optim.lr=1e-4 --set train.max_steps=10"
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="CHECKPOINT",
        help="continue from a checkpoint-<step> directory, or the newest one in output.dir "
        "(no value / 'auto')",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="start over in an output dir that holds a run"
    )
    parser.add_argument("--output-dir", help="shorthand for --set output.dir=...")
    parser.add_argument("--max-steps", type=int, help="shorthand for --set train.max_steps=...")
    parser.add_argument(
        "--skip-bad-lines",
        action="store_true",
        help="skip (and count) malformed JSONL lines instead of stopping (data.on_bad_line)",
    )
    parser.add_argument(
        "--stop-after",
        type=int,
        metavar="N",
        help="stop after N optimiser steps, writing a checkpoint (resume later with --resume)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the recipe and print it; load nothing",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from tah.training.recipe import load_recipe

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output.dir={args.output_dir}")
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.skip_bad_lines:
        overrides.append("data.on_bad_line=skip")
    if args.no_progress:
        overrides.append("output.progress=false")
    recipe = load_recipe(args.recipe, overrides)
    if args.dry_run:
        import yaml

        print(yaml.safe_dump(recipe.to_dict(), sort_keys=False), end="")
        return 0

    from rich.console import Console
    from rich.table import Table

    from tah.training.trainer import train

    result = train(recipe, resume=args.resume, overwrite=args.overwrite, stop_after=args.stop_after)
    if result.is_main_process:
        table = Table(title=f"tah train: {recipe.stage}", show_header=False)
        table.add_row("steps", f"{result.global_step} / {result.total_steps}")
        for key in ("loss", "avg_depth", "hard_ratio", "decider_accuracy", "tokens_per_s"):
            value = result.last.get(key)
            if value is not None:
                table.add_row(key, f"{value:.4g}")
        if result.ranks_in_sync is not None:
            table.add_row("ranks in sync", str(result.ranks_in_sync))
        done = result.global_step >= result.total_steps
        table.add_row("model", str(result.final_dir) if done else "(not finished: --resume)")
        Console().print(table)
    _leave_process_group()
    return 0


def _leave_process_group() -> None:
    """Under torchrun, meet once more and tear the process group down before exiting. Left to
    interpreter exit, a rank that finished first could abort in gloo's teardown while another
    still wrote its summary ("terminate called without an active exception", seen in CI)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
