"""GSM8K as supervised fine-tuning records in the model's chat format.

`datasets` can load GSM8K, but the worked solutions are written for a calculator tool
(``48/2 = <<48/2=24>>24``) and end in ``#### 72``, which neither a chat model nor our grader
(``\\boxed{}`` via math-verify) expects. This module turns each problem into a record that
``tah label`` / ``tah train`` read directly:

* ``question``: the problem plus the same "reason step by step ... \\boxed{}" line that
  ``tah eval --prompt-style boxed`` appends (one definition: :func:`tah.data.prompts.user_message`),
  so training and evaluation prompts agree;
* ``solution``: the worked solution with the calculator annotations removed and the final
  ``#### 72`` turned into ``The answer is \\boxed{72}.``;
* ``answer``: the final answer alone, ``id``: the source id.

The chat template itself is applied later by the tokenizer (``tah label`` renders
[user: question, assistant: solution]); :func:`to_messages` gives that pair for other uses.
Both the shared JSONL layout (``problem``/``solution``/``answer``) and the hub layout
(``openai/gsm8k``: ``question``/``answer`` holding the solution) are accepted.

    python -m tah.data.gsm8k --input ../shared/data/gsm8k/train.jsonl --output sft.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tah.errors import DataError
from tah.io import atomic_file

_CALCULATOR = re.compile(r"<<[^<>]*>>")
_FINAL = re.compile(r"\n?\s*####\s*(?P<answer>[^\n]*)\s*$")
HUB_ID = "openai/gsm8k"


def normalise_answer(answer: str) -> str:
    """``1,250`` -> ``1250``; ``$18`` -> ``18``: the number alone, as the test set's answers are."""
    text = str(answer).strip().replace(",", "").replace("$", "").strip()
    return text.rstrip(".") if re.fullmatch(r"-?\d+(\.\d+)?\.?", text) else text


def split_solution(solution: str) -> tuple[str, str]:
    """(the reasoning without the final ``#### x`` line, x); DataError when there is no ``####``."""
    match = _FINAL.search(solution)
    if match is None:
        raise DataError(
            f"GSM8K solution has no final '#### <answer>' line: {solution[-80:]!r}; pass records "
            "in the GSM8K format"
        )
    return solution[: match.start()].rstrip(), normalise_answer(match.group("answer"))


def clean_solution(solution: str) -> str:
    """Drop ``<<...>>`` calculator annotations and end with ``The answer is \\boxed{x}.``."""
    reasoning, answer = split_solution(solution)
    reasoning = _CALCULATOR.sub("", reasoning)
    reasoning = "\n".join(line.rstrip() for line in reasoning.splitlines()).strip()
    final = f"The answer is \\boxed{{{answer}}}."
    return f"{reasoning}\n{final}" if reasoning else final


def to_sft_record(row: Mapping[str, Any], index: int = 0, style: str = "boxed") -> dict[str, str]:
    """One GSM8K row (shared or hub layout) as an SFT record ``{id, question, solution, answer}``."""
    from tah.data.prompts import user_message

    question = row.get("problem") or row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"GSM8K row {index} has no 'problem'/'question' text: {dict(row)!r:.200}")
    solution = row.get("solution")
    if not isinstance(solution, str) or "####" not in solution:
        solution = row.get("answer")  # hub layout: the answer field holds the whole solution
    if not isinstance(solution, str) or "####" not in solution:
        raise DataError(
            f"GSM8K row {index} has no worked solution ending in '#### <answer>' (fields "
            f"'solution' or 'answer'); keys: {sorted(row)}"
        )
    reasoning_answer = split_solution(solution)[1]
    return {
        "id": str(row.get("id", f"gsm8k-{index}")),
        "question": user_message(question.strip(), style),
        "solution": clean_solution(solution),
        "answer": reasoning_answer,
    }


def to_messages(record: Mapping[str, str]) -> list[dict[str, str]]:
    """The [user, assistant] chat turns of an SFT record (what the chat template renders)."""
    return [
        {"role": "user", "content": record["question"]},
        {"role": "assistant", "content": record["solution"]},
    ]


def read_gsm8k(source: str | os.PathLike, split: str = "train") -> list[dict[str, Any]]:
    """Rows of a GSM8K JSONL file, or of the hub dataset (``openai/gsm8k``, config ``main``)."""
    path = Path(source).expanduser()
    if path.is_file():
        rows = []
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{number} is not valid JSON: {exc}") from None
        if not rows:
            raise DataError(f"{path} holds no GSM8K rows")
        return rows
    if path.exists() or str(source).endswith(".jsonl"):
        raise DataError(f"GSM8K source {source} is not a JSONL file")
    try:
        import datasets

        name = "main" if str(source) == HUB_ID else None
        return [dict(r) for r in datasets.load_dataset(str(source), name, split=split)]
    except Exception as exc:  # offline, unknown id: say what to pass instead
        raise DataError(
            f"could not load GSM8K from {source!r} ({type(exc).__name__}: {exc}); pass a local "
            "JSONL file such as ../shared/data/gsm8k/train.jsonl"
        ) from None


def select(rows: list[Any], count: int | None, skip: int = 0, seed: int | None = None) -> list[Any]:
    """``count`` rows after the first ``skip``, of a seeded shuffle when ``seed`` is given.

    Disjoint ``skip`` ranges of the same seed give disjoint subsets (train vs held-out).
    """
    order = list(range(len(rows)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    end = None if count is None else skip + count
    return [rows[i] for i in order[skip:end]]


def write_sft_jsonl(records: Iterable[Mapping[str, Any]], output: str | os.PathLike) -> int:
    """Write records as JSON Lines, atomically; return how many."""
    count = 0
    with atomic_file(output, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    if count == 0:
        raise DataError(f"no GSM8K records to write to {output}")
    return count


def prepare_sft(
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    count: int | None = None,
    skip: int = 0,
    seed: int | None = None,
    split: str = "train",
    style: str = "boxed",
) -> int:
    """Read GSM8K, pick a subset (see :func:`select`), convert and write it; return the count."""
    rows = select(read_gsm8k(source, split), count, skip, seed)
    records = [to_sft_record(row, i, style) for i, row in enumerate(rows)]
    return write_sft_jsonl(records, output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tah.data.gsm8k", description="GSM8K -> SFT records (JSONL)"
    )
    parser.add_argument("--input", default=HUB_ID, help="GSM8K JSONL file or hub id")
    parser.add_argument("--split", default="train", help="hub split")
    parser.add_argument("--output", required=True, help="JSONL file to write")
    parser.add_argument("--count", type=int, help="number of records (default: all)")
    parser.add_argument("--skip", type=int, default=0, help="skip this many (after shuffling)")
    parser.add_argument("--seed", type=int, help="shuffle with this seed before selecting")
    parser.add_argument("--prompt-style", default="boxed", choices=["bare", "boxed"])
    args = parser.parse_args(argv)
    try:
        n = prepare_sft(
            args.input,
            args.output,
            count=args.count,
            skip=args.skip,
            seed=args.seed,
            split=args.split,
            style=args.prompt_style,
        )
    except DataError as exc:
        print(f"error: {exc}")
        return 2
    print(f"wrote {n} records to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
