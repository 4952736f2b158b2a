"""Flags that several ``tah`` commands share, declared once so that their names, defaults and
help read the same everywhere (``eval`` / ``sweep``, ``generate``, ``label``, ``prune``)."""

from __future__ import annotations

import argparse
from typing import Any

Adder = argparse.ArgumentParser | argparse._ArgumentGroup

__all__ = [
    "add_overrides_argument",
    "add_iter_budget_argument",
    "add_load_arguments",
    "add_records_arguments",
    "add_run_arguments",
    "add_sampling_arguments",
]


def add_sampling_arguments(parser: Adder, *, seed: int, when: str = "") -> None:
    """--temperature / --top-p / --top-k / --min-p / --seed, with the paper's defaults.

    ``when`` is appended to each help (``generate`` samples only with ``--do-sample``).
    """
    note = f"{when}; " if when else ""
    parser.add_argument(
        "--temperature", type=float, default=0.6, help=f"{when}" if when else "0 = greedy"
    )
    parser.add_argument("--top-p", type=float, default=0.95, help=f"{note}nucleus; 1 = off")
    parser.add_argument("--top-k", type=int, default=20, help=f"{note}top-k; 0 = off")
    parser.add_argument("--min-p", type=float, default=0.0, help=f"{note}min-p; 0 = off")
    parser.add_argument("--seed", type=int, default=seed, help="random seed of the sampling")


def add_iter_budget_argument(parser: Adder) -> None:
    parser.add_argument(
        "--iter-budget",
        type=float,
        default=None,
        help="target share of generated tokens that iterate (e.g. 0.05): steers τ per sample so "
        "the realised share tracks it; --threshold is then the starting τ",
    )


def add_load_arguments(parser: Adder, device_help: str = "auto, cpu, cuda, cuda:1, ...") -> None:
    """--dtype / --device of a command that loads a model (auto: bf16 on GPU, fp32 on CPU)."""
    parser.add_argument(
        "--dtype", default="auto", help="auto (fp32 on CPU, bf16 on GPU), float32, bfloat16"
    )
    parser.add_argument("--device", default="auto", help=device_help)


def add_records_arguments(parser: Adder) -> None:
    """How records become token rows: tokenizer, chat template, supervision start, split."""
    parser.add_argument("--split", default="train", help="split of a DatasetDict / hub dataset")
    parser.add_argument(
        "--skip-bad-records",
        action="store_true",
        help="skip (and count) malformed records instead of stopping at the first one",
    )
    parser.add_argument("--tokenizer", help="tokenizer (default: the model's)")
    parser.add_argument(
        "--chat-template", help="Jinja chat template file overriding the tokenizer's"
    )
    parser.add_argument(
        "--think-token",
        default="<think>",
        help="supervision starts at this token when the assistant turn has it ('' to disable)",
    )


def add_run_arguments(parser: Adder, overwrite_help: str, **output: Any) -> None:
    """--output (when ``output`` holds its add_argument settings), --overwrite, --no-progress."""
    if output:
        parser.add_argument("--output", **output)
    parser.add_argument("--overwrite", action="store_true", help=overwrite_help)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_overrides_argument(parser: Adder, help: str) -> None:
    """--set KEY=VALUE, repeatable, collected in ``args.overrides`` (recipes, study settings)."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help
    )
