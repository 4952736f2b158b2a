"""The data order: which examples each process reads at each optimiser step.

Why not ``DataLoader(shuffle=True)`` + ``DistributedSampler`` + ``skip_first_batches``: we need
three properties together that those pieces give only partly: (1) the order is a pure function
of ``(seed, epoch)``, so ``--resume`` jumps straight to step *k* without replaying the loader;
(2) one optimiser step always covers the same *global* batch whatever the number of processes
and accumulation steps, so a 2-process run and a 1-process run with twice the accumulation see
the same examples per step (and, with token-count normalisation, the same loss); (3) every
process gets exactly ``grad_accum`` non-empty micro-batches each step (DDP / DeepSpeed expect
equal work per rank). A ``StepPlan`` is ~60 lines and says all of that explicitly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepPlan:
    """Splits a seeded permutation of ``num_examples`` into global steps and micro-batches.

    A global step holds ``per_device * grad_accum * world_size`` examples. The last, partial
    step of an epoch is completed by wrapping around to the start of the same permutation (like
    ``DistributedSampler``'s padding), so every step has the full shape.
    """

    num_examples: int
    per_device: int
    grad_accum: int
    world_size: int
    seed: int

    @property
    def global_batch(self) -> int:
        return self.per_device * self.grad_accum * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.num_examples / self.global_batch))

    def epoch_order(self, epoch: int) -> list[int]:
        """The permutation of example indices for ``epoch`` (a function of seed and epoch only)."""
        generator = torch.Generator()
        generator.manual_seed(int(self.seed) * 1_000_003 + int(epoch))
        return torch.randperm(self.num_examples, generator=generator).tolist()

    def step_indices(
        self, epoch: int, step_in_epoch: int, order: list[int] | None = None
    ) -> list[int]:
        """The examples of one global step (all processes, all micro-batches)."""
        order = self.epoch_order(epoch) if order is None else order
        start = step_in_epoch * self.global_batch
        return [order[(start + i) % len(order)] for i in range(self.global_batch)]

    def micro_batches(
        self, epoch: int, step_in_epoch: int, rank: int, order: list[int] | None = None
    ) -> list[list[int]]:
        """The ``grad_accum`` micro-batches (lists of indices) process ``rank`` runs this step.

        Process ``r`` takes the ``r``-th contiguous share of the global step; within a share,
        micro-batch ``j`` takes the ``j``-th block of ``per_device`` examples.
        """
        indices = self.step_indices(epoch, step_in_epoch, order)
        share = self.per_device * self.grad_accum
        mine = indices[rank * share : (rank + 1) * share]
        return [
            mine[j * self.per_device : (j + 1) * self.per_device] for j in range(self.grad_accum)
        ]
