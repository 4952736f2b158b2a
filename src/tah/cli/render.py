"""Terminal rendering shared by the commands: generated text coloured by iteration count
(generate, demo) and the worker / thread counts of a study (repro)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.text import Text

DEPTH_STYLES = {1: "", 2: "bold yellow", 3: "bold red", 4: "bold magenta"}


def token_pieces(tokenizer, token_ids: Sequence[int]) -> list[str]:
    """Text of each token, decoded incrementally so multi-byte characters stay intact."""
    pieces, previous = [], ""
    for end in range(1, len(token_ids) + 1):
        text = tokenizer.decode(list(token_ids[:end]), skip_special_tokens=False)
        pieces.append(text[len(previous) :] if text.startswith(previous) else text)
        previous = text
    return pieces


def coloured_text(pieces: Sequence[str], counts: Sequence[int]) -> Text:
    text = Text()
    for piece, count in zip(pieces, counts):
        text.append(piece, style=DEPTH_STYLES.get(int(count), "bold magenta"))
    return text


def legend(max_iter: int) -> Text:
    text = Text("depth: ")
    for depth in range(1, max_iter + 1):
        text.append(f" {depth} ", style=DEPTH_STYLES.get(depth, "bold magenta") or "default")
    return text


def stats_line(stats: dict) -> str:
    line = (
        f"{stats['tokens']} tokens · avg depth {stats['avg_depth']:.3f} · "
        f"{100 * stats['iter_share']:.1f}% iterated · {stats['tokens_per_s']:.1f} tok/s · "
        f"{stats['wall_time_s']:.2f} s"
    )
    if stats.get("iter_budget") is not None:
        line += f" · budget {100 * stats['iter_budget']:.1f}%"
    return line


def print_generation(console: Console, pieces, counts, stats, max_iter: int) -> None:
    console.print(coloured_text(pieces, counts))
    console.print()
    console.print(legend(max_iter))
    console.print(stats_line(stats), style="dim")


def workers_text(config: Any) -> str:
    """ "1 worker x 1 thread", "2 workers x 1 thread": a study's parallelism in words."""
    workers = f"{config.workers} worker{'s' if config.workers != 1 else ''}"
    return f"{workers} x {config.threads} thread{'s' if config.threads != 1 else ''}"
