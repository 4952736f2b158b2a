"""``tah label``: hard-token labels from a frozen reference model (see :mod:`tah.data.labeling`).

Every check that can fail on user input (arguments, records, tokenizer, vocabulary) runs before
the reference model's weights are loaded, so mistakes cost seconds, not a labelling run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tah.cli.common_args import add_load_arguments, add_records_arguments, add_run_arguments
from tah.errors import ConfigError, DataError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--data", required=True, help="records: JSONL file, datasets dir or hub id")
    data.add_argument("--question-field", help="record field holding the question")
    data.add_argument("--solution-field", help="record field holding the solution")
    data.add_argument("--limit", type=int, help="label only the first N records")
    model = parser.add_argument_group("reference model")
    model.add_argument(
        "--model", required=True, help="reference model: HF directory, hub id or .gguf file"
    )
    add_records_arguments(model)
    add_load_arguments(model)
    run_opts = parser.add_argument_group("run")
    run_opts.add_argument(
        "--max-length",
        type=int,
        help="longest sample in tokens (default: the model's context, max_position_embeddings)",
    )
    run_opts.add_argument(
        "--truncate",
        action="store_true",
        help="truncate samples longer than --max-length (default: drop them, counted)",
    )
    run_opts.add_argument("--batch-size", type=int, default=8, help="samples per forward pass")
    run_opts.add_argument("--max-batch-tokens", type=int, help="cap on batch size x longest sample")
    run_opts.add_argument("--shard-size", type=int, default=512, help="samples per output shard")
    run_opts.add_argument("--entropy", action="store_true", help="also store per-token entropy")
    run_opts.add_argument("--max-shards", type=int, help="stop after writing this many shards")
    add_run_arguments(
        run_opts,
        "replace labels from another run",
        required=True,
        help="output directory (shards + tah_labels.json)",
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tah.data.labeling import LabelSettings, label_records, report_table
    from tah.data.records import load_records
    from tah.data.reference import (
        check_vocab,
        load_causal_lm,
        load_model_config,
        load_tokenizer,
    )
    from tah.model.loading import resolve_device, resolve_dtype

    settings = LabelSettings(
        max_length=args.max_length,
        truncate=args.truncate,
        batch_size=args.batch_size,
        max_batch_tokens=args.max_batch_tokens,
        shard_size=args.shard_size,
        entropy=args.entropy,
        think_token=args.think_token or None,
    )
    settings.validate()
    if args.max_shards is not None and args.max_shards < 1:
        raise ConfigError(f"--max-shards must be >= 1, got {args.max_shards}")
    device = resolve_device(args.device)
    resolve_dtype(args.dtype, device)
    records = load_records(
        args.data,
        split=args.split,
        on_error="skip" if args.skip_bad_records else "raise",
        limit=args.limit,
        question_field=args.question_field,
        solution_field=args.solution_field,
    )
    console = Console(stderr=True)
    if records.skipped:
        console.print(f"[yellow]skipped {records.skipped} malformed records[/], e.g.:")
        for problem in records.problems[:3]:
            console.print(f"  {problem}")
    tokenizer = load_tokenizer(args.tokenizer or args.model, chat_template=args.chat_template)
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"tokenizer {args.tokenizer or args.model!r} has no chat template; pass --chat-template"
        )
    config = load_model_config(args.model)
    check_vocab(tokenizer, config.get_text_config().vocab_size, args.model)
    model = load_causal_lm(args.model, dtype=args.dtype, device=device)
    report = label_records(
        model,
        tokenizer,
        records.records,
        args.output,
        settings,
        model_name=str(Path(args.model).resolve()) if Path(args.model).exists() else args.model,
        source=str(args.data),
        skipped_records=records.skipped,
        overwrite=args.overwrite,
        max_shards=args.max_shards,
        progress=not args.no_progress,
    )
    Console().print(report_table(report))
    return 0
