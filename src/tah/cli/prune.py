"""``tah prune``: drop the layers whose removal raises perplexity least (see :mod:`tah.training.prune`).

Arguments, calibration data, tokenizer and layer counts are all checked before the model's
weights are loaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tah.cli.common_args import add_load_arguments, add_records_arguments, add_run_arguments
from tah.errors import ConfigError, DataError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model to prune: HF directory or hub id")
    parser.add_argument("--output", required=True, help="directory for the pruned checkpoint")
    parser.add_argument(
        "--data",
        required=True,
        help="calibration set: records (JSONL, datasets dir, hub id) or a `tah label` directory",
    )
    parser.add_argument("--num-prune", type=int, default=1, help="number of layers to remove")
    parser.add_argument("--max-samples", type=int, default=64, help="calibration samples")
    parser.add_argument("--max-length", type=int, default=4096, help="tokens per sample (cut)")
    parser.add_argument("--batch-size", type=int, default=4, help="samples per forward pass")
    parser.add_argument(
        "--score",
        choices=("assistant", "all"),
        default="assistant",
        help="tokens scored: the assistant span (default) or every token",
    )
    add_records_arguments(parser)
    add_load_arguments(parser)
    add_run_arguments(parser, "replace an existing --output")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tah.data.reference import (
        check_vocab,
        load_causal_lm,
        load_model_config,
        load_tokenizer,
    )
    from tah.model.loading import resolve_device, resolve_dtype
    from tah.training.prune import load_calibration, prune_layers, save_pruned, scores_table

    for name in ("max_samples", "batch_size", "num_prune"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_length < 2:
        raise ConfigError(f"--max-length must be >= 2, got {args.max_length}")
    out = Path(args.output)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise ConfigError(
            f"{out} exists and is not empty; pass --overwrite or choose another --output"
        )
    device = resolve_device(args.device)
    resolve_dtype(args.dtype, device)
    config = load_model_config(args.model)
    layers = config.get_text_config().num_hidden_layers
    if args.num_prune >= layers:
        raise ConfigError(f"--num-prune {args.num_prune}: {args.model} has only {layers} layers")
    tokenizer = load_tokenizer(args.tokenizer or args.model, chat_template=args.chat_template)
    check_vocab(tokenizer, config.get_text_config().vocab_size, args.model)
    calib = load_calibration(
        args.data,
        tokenizer,
        max_samples=args.max_samples,
        max_length=args.max_length,
        score=args.score,
        batch_size=args.batch_size,
        split=args.split,
        on_error="skip" if args.skip_bad_records else "raise",
        think_token=args.think_token or None,
    )
    model = load_causal_lm(args.model, dtype=args.dtype, device=device)
    if calib.tokens == 0:
        raise DataError(f"{args.data}: no calibration tokens")
    report = prune_layers(model, calib, args.num_prune, progress=not args.no_progress)
    save_pruned(model, tokenizer, out, report)
    console = Console()
    console.print(scores_table(report))
    console.print(
        f"removed layers {report.removed}: PPL {report.base_ppl:.4f} → {report.pruned_ppl:.4f}; "
        f"saved to {out}"
    )
    return 0
