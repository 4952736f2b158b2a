"""``tah report RUN...``: evaluation runs side by side, in the layout of the paper's Table 1.

Example::

    tah report eval_runs/standard eval_runs/tah --names Standard,TaH --baseline Standard \
        --output results/table1
"""

from __future__ import annotations

import argparse
import sys

from tah.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run folders (or their summary.json files)")
    parser.add_argument("--names", default=None, help="comma list of column names, one per run")
    parser.add_argument(
        "--baseline", default=None, help="column to compute Δ against (default: first)"
    )
    parser.add_argument(
        "--metric",
        default="accuracy",
        choices=("accuracy", "iter_share", "avg_depth", "mean_tokens", "tokens_per_s"),
        help="the number shown per dataset",
    )
    parser.add_argument("--stderr", action="store_true", help="show ± standard errors")
    parser.add_argument(
        "--output", default=None, help="write OUTPUT.md and OUTPUT.json (default: print only)"
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from tah.evaluation.report import build_report, load_summary, to_markdown, to_rich
    from tah.io import atomic_file, write_json

    names = [n.strip() for n in args.names.split(",")] if args.names else None
    if names is not None and len(names) != len(args.runs):
        raise ConfigError(f"--names has {len(names)} entries for {len(args.runs)} runs")
    summaries = [load_summary(r) for r in args.runs]
    report = build_report(summaries, names, args.baseline, args.metric)
    markdown = to_markdown(report, args.stderr)
    # One table: drawn for a terminal, Markdown when piped (to paste or to parse).
    if sys.stdout.isatty():
        Console().print(to_rich(report, args.stderr))
    else:
        print(markdown, end="")
    if args.output:
        base = Path(args.output)
        with atomic_file(base.with_suffix(".md"), "w", encoding="utf-8") as handle:
            handle.write(markdown)
        write_json(base.with_suffix(".json"), report)
        print(f"wrote {base.with_suffix('.md')} and {base.with_suffix('.json')}")
    return 0
