"""Batching: right-pad token ids with the pad id, labels and iteration labels with -100.

Why not ``DataCollatorForSeq2Seq``: it pads ``labels`` but knows nothing of ``iter_labels``
(they would need a second pass), goes through the tokenizer's ``pad`` (a tokenizer is optional
for pre-tokenised training data), and converts through numpy. Our examples are already lists of
ints, so padding is a few tensor writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

IGNORE = -100


class Collator:
    """Turn examples ``{"input_ids", "labels", "iter_labels"?}`` into a right-padded batch.

    Output: ``input_ids`` (pad id), ``attention_mask`` (1 on real tokens), ``labels`` (-100 on
    padding), and ``iter_labels`` (-100 on padding) when the examples carry them.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = int(pad_token_id)

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        width = max(len(ex["input_ids"]) for ex in examples)
        rows = len(examples)
        input_ids = torch.full((rows, width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((rows, width), dtype=torch.long)
        labels = torch.full((rows, width), IGNORE, dtype=torch.long)
        with_iter = examples[0].get("iter_labels") is not None
        iter_labels = torch.full((rows, width), IGNORE, dtype=torch.long) if with_iter else None
        for i, ex in enumerate(examples):
            n = len(ex["input_ids"])
            input_ids[i, :n] = torch.as_tensor(ex["input_ids"], dtype=torch.long)
            attention[i, :n] = 1
            labels[i, :n] = torch.as_tensor(ex["labels"], dtype=torch.long)
            if iter_labels is not None:
                iter_labels[i, :n] = torch.as_tensor(ex["iter_labels"], dtype=torch.long)
        batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
        if iter_labels is not None:
            batch["iter_labels"] = iter_labels
        return batch
