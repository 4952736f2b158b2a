"""The progress bar of a training run.

This module holds the rich progress bar the training loop advances once per optimiser step,
showing the stage, steps done of the total, the last loss and learning rate and the time left;
it is shown on the main process only, and only when the recipe's ``output.progress`` asks.
"""

from __future__ import annotations

from tah.training.recipe import Recipe


class TrainingProgress:
    """A rich progress bar on the main process (no-op elsewhere or when disabled)."""

    def __init__(self, recipe: Recipe, enabled: bool, total: int, done: int) -> None:
        self.bar = None
        if not (enabled and recipe.output.progress):
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn(f"[bold]{recipe.stage}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f} lr {task.fields[lr]:.2e}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self.bar.start()
        self.task = self.bar.add_task(
            "train", total=total, completed=done, loss=float("nan"), lr=0.0
        )

    def advance(self, loss: float, lr: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, loss=loss, lr=lr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
