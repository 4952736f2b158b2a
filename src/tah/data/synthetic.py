"""A synthetic GSM8K-like reasoning task that a laptop can train on in minutes.

Why our own generator: public math sets (GSM8K, MATH) need a large pretrained model before any
"hard token" structure shows up, and no library ships a *tiny*, seedable word-problem task with
worked solutions in our record format. This one produces short multi-step arithmetic word
problems whose worked solutions spell out every computation (``36 + 12 = 48``), so the tokens a
small model finds hard (result digits, carries, products) are visible and countable.

Each problem is a chain of quantities owned by named people. Every step builds a new quantity
from the current one (plus a fresh number from the text, or another person's earlier total):
``+`` (finds / buys more, "has N more than"), ``-`` (gives away, "has N fewer than"), ``*``
("has K times as many as", boxes of N), exact integer ``/`` (splits into K containers and keeps
one), and "as many as A and B together". ``difficulty`` (1..4) sets the number of steps and the
size of the numbers; see :data:`DIFFICULTIES`.

Records follow the project's JSONL format ``{"id", "problem", "solution", "answer"}``. The
solution ends with ``#### <answer>`` by default (GSM8K style), and optionally with
``The answer is \\boxed{<answer>}.``; both are graded correctly by math-verify's first-match
extraction (the boxed form wins outright; the ``####`` form is the last number in the text and
the solution never contains the word "answer", which would trigger math-verify's answer-phrase
patterns on an intermediate number).

Everything random flows from an explicit ``random.Random``; the module never touches global
random state, so the same seed always yields the same records.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from tah.errors import ConfigError
from tah.io import atomic_file

__all__ = [
    "ANSWER_STYLES",
    "DIFFICULTIES",
    "Difficulty",
    "generate_dataset",
    "generate_problem",
    "generate_splits",
    "write_jsonl",
]

AnswerStyle = Literal["hash", "boxed", "both"]
ANSWER_STYLES: tuple[str, ...] = ("hash", "boxed", "both")


_NAMES = (
    "Tom",
    "Anna",
    "Ben",
    "Mia",
    "Sam",
    "Lily",
    "Max",
    "Zoe",
    "Leo",
    "Emma",
    "Jack",
    "Nora",
)
_OBJECTS = (
    "apples",
    "pencils",
    "stickers",
    "marbles",
    "cookies",
    "books",
    "coins",
    "shells",
    "cards",
    "eggs",
    "flowers",
    "stamps",
)
# (plural, singular)
_CONTAINERS = (("boxes", "box"), ("bags", "bag"), ("packs", "pack"), ("jars", "jar"))
_GAIN_VERBS = ("finds", "buys", "gets", "wins")
_LOSE_VERBS = ("gives away", "loses", "sells", "uses")

# Relative weights of the step kinds; kinds whose constraints fail are skipped for that step.
_STEP_WEIGHTS = {
    "gain": 3,
    "lose": 3,
    "times": 3,
    "more": 2,
    "fewer": 2,
    "split": 2,
    "together": 2,
}

_MAX_ATTEMPTS = 200


@dataclass(frozen=True)
class Difficulty:
    """How hard one level is: a range of computation steps and the size of the numbers.

    ``max_number`` bounds the fresh numbers written in the problem, ``max_factor`` the
    multipliers and divisors, and ``max_value`` every intermediate and final result.
    """

    level: int
    min_steps: int
    max_steps: int
    max_number: int
    max_factor: int
    max_value: int

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps <= len(_NAMES) - 1:
            raise ConfigError(
                f"Difficulty(level={self.level}): need 1 <= min_steps <= max_steps <= "
                f"{len(_NAMES) - 1}, got {self.min_steps}..{self.max_steps}"
            )
        if self.max_number < 2 or self.max_factor < 2 or self.max_value < 2 * self.max_number:
            raise ConfigError(
                f"Difficulty(level={self.level}): need max_number >= 2, max_factor >= 2 and "
                f"max_value >= 2 * max_number, got {self.max_number}, {self.max_factor}, "
                f"{self.max_value}"
            )


DIFFICULTIES: dict[int, Difficulty] = {
    1: Difficulty(1, min_steps=1, max_steps=2, max_number=20, max_factor=5, max_value=100),
    2: Difficulty(2, min_steps=2, max_steps=3, max_number=50, max_factor=6, max_value=300),
    3: Difficulty(3, min_steps=3, max_steps=4, max_number=99, max_factor=9, max_value=999),
    4: Difficulty(4, min_steps=4, max_steps=5, max_number=500, max_factor=12, max_value=9999),
}


@dataclass
class _Chain:
    """The story built so far: sentences, solution lines and who holds how many."""

    objects: str
    sentences: list[str]
    lines: list[str]
    holdings: dict[str, int]
    current: str
    steps: int = 0
    answer: int = 0
    subject: str = ""


def _resolve_difficulty(difficulty: int | Difficulty) -> Difficulty:
    if isinstance(difficulty, Difficulty):
        return difficulty
    if isinstance(difficulty, bool) or difficulty not in DIFFICULTIES:
        raise ConfigError(
            f"difficulty={difficulty!r} is not a known level; use one of {sorted(DIFFICULTIES)} "
            "or pass a tah.data.synthetic.Difficulty"
        )
    return DIFFICULTIES[difficulty]


def _check_answer_style(answer_style: str) -> None:
    if answer_style not in ANSWER_STYLES:
        raise ConfigError(
            f"answer_style={answer_style!r} is not supported; use one of {list(ANSWER_STYLES)}"
        )


def _new_name(rng: random.Random, chain: _Chain) -> str | None:
    free = [name for name in _NAMES if name not in chain.holdings]
    return rng.choice(free) if free else None


def _record(chain: _Chain, holder: str, value: int, sentence: str | None, line: str) -> None:
    if sentence is not None:
        chain.sentences.append(sentence)
    chain.lines.append(line)
    chain.holdings[holder] = value
    chain.current = holder
    chain.subject = holder
    chain.answer = value
    chain.steps += 1


def _gain_step(rng: random.Random, chain: _Chain, spec: Difficulty, kind: str, final: bool) -> bool:
    """The holder gets b more."""
    obj = chain.objects
    holder = chain.current
    x = chain.holdings[holder]
    room = min(spec.max_number, spec.max_value - x)
    if room < 2:
        return False
    b = rng.randint(2, room)
    verb = rng.choice(_GAIN_VERBS)
    _record(
        chain,
        holder,
        x + b,
        f"{holder} {verb} {b} more {obj}.",
        f"{holder} has {x} + {b} = {x + b}.",
    )
    return True


def _lose_step(rng: random.Random, chain: _Chain, spec: Difficulty, kind: str, final: bool) -> bool:
    """The holder gives b away."""
    obj = chain.objects
    holder = chain.current
    x = chain.holdings[holder]
    if x < 4:
        return False
    b = rng.randint(2, min(spec.max_number, x - 2))
    verb = rng.choice(_LOSE_VERBS)
    _record(
        chain,
        holder,
        x - b,
        f"{holder} {verb} {b} {obj}.",
        f"{holder} has {x} - {b} = {x - b}.",
    )
    return True


def _split_step(
    rng: random.Random, chain: _Chain, spec: Difficulty, kind: str, final: bool
) -> bool:
    """The holder keeps one of k equal parts."""
    holder = chain.current
    x = chain.holdings[holder]
    divisors = [k for k in range(2, spec.max_factor + 1) if x % k == 0 and x // k >= 2]
    if not divisors:
        return False
    k = rng.choice(divisors)
    plural, _ = rng.choice(_CONTAINERS)
    _record(
        chain,
        holder,
        x // k,
        f"{holder} splits them into {k} equal {plural} and keeps one.",
        f"{holder} keeps {x} / {k} = {x // k}.",
    )
    return True


def _compare_step(
    rng: random.Random, chain: _Chain, spec: Difficulty, kind: str, final: bool
) -> bool:
    """A new person holds k times, b more or b fewer than the holder."""
    holder = chain.current
    x = chain.holdings[holder]
    other = _new_name(rng, chain)
    if other is None:
        return False
    if kind == "times":
        factors = [k for k in range(2, spec.max_factor + 1) if x * k <= spec.max_value]
        if not factors:
            return False
        k = rng.choice(factors)
        sentence = f"{other} has {k} times as many as {holder}."
        line, value = f"{other} has {x} * {k} = {x * k}.", x * k
    elif kind == "more":
        room = min(spec.max_number, spec.max_value - x)
        if room < 2:
            return False
        b = rng.randint(2, room)
        sentence = f"{other} has {b} more than {holder}."
        line, value = f"{other} has {x} + {b} = {x + b}.", x + b
    else:
        if x < 4:
            return False
        b = rng.randint(2, min(spec.max_number, x - 2))
        sentence = f"{other} has {b} fewer than {holder}."
        line, value = f"{other} has {x} - {b} = {x - b}.", x - b
    _record(chain, other, value, sentence, line)
    return True


def _together_step(
    rng: random.Random, chain: _Chain, spec: Difficulty, kind: str, final: bool
) -> bool:
    """A new person (as the last step: the question) holds two holdings together."""
    holder = chain.current
    x = chain.holdings[holder]
    partners = [
        name
        for name, value in chain.holdings.items()
        if name != holder and value + x <= spec.max_value
    ]
    if not partners:
        return False
    partner = rng.choice(partners)
    y = chain.holdings[partner]
    if final:
        # The question itself asks for the total; no new person is introduced.
        chain.lines.append(f"Together {partner} and {holder} have {y} + {x} = {x + y}.")
        chain.subject = f"{partner} and {holder}"
        chain.answer = x + y
        chain.steps += 1
        return True
    other = _new_name(rng, chain)
    if other is None:
        return False
    _record(
        chain,
        other,
        x + y,
        f"{other} has as many as {partner} and {holder} together.",
        f"{other} has {y} + {x} = {x + y}.",
    )
    return True


_STEPS = {"gain": _gain_step, "lose": _lose_step, "split": _split_step, "together": _together_step}
_STEPS.update(dict.fromkeys(("times", "more", "fewer"), _compare_step))


def _try_step(rng: random.Random, kind: str, chain: _Chain, spec: Difficulty, final: bool) -> bool:
    """Append one step of ``kind`` to ``chain`` if its constraints allow; return whether it did.

    ``final`` marks the last step: a "together" step is then phrased as the question itself.
    """
    if kind not in _STEPS:
        raise AssertionError(f"unknown step kind {kind!r}")
    return _STEPS[kind](rng, chain, spec, kind, final)


def _start(rng: random.Random, spec: Difficulty) -> _Chain:
    """Open the story: either a plain count (no computation) or boxes of items (one product)."""
    obj = rng.choice(_OBJECTS)
    name = rng.choice(_NAMES)
    chain = _Chain(objects=obj, sentences=[], lines=[], holdings={}, current=name, subject=name)
    boxes = [k for k in range(2, spec.max_factor + 1) if 2 * k <= spec.max_value]
    if boxes and rng.random() < 0.35:
        a = rng.choice(boxes)
        b = rng.randint(2, max(2, min(spec.max_number, spec.max_value // a)))
        plural, _ = rng.choice(_CONTAINERS)
        _record(
            chain,
            name,
            a * b,
            f"{name} buys {a} {plural} of {obj} with {b} in each.",
            f"{name} buys {a} * {b} = {a * b}.",
        )
    else:
        a = rng.randint(2, spec.max_number)
        chain.sentences.append(f"{name} has {a} {obj}.")
        chain.holdings[name] = a
        chain.answer = a
    return chain


def _finish(answer: int, answer_style: str) -> str:
    if answer_style == "hash":
        return f"#### {answer}"
    if answer_style == "boxed":
        return f"The answer is \\boxed{{{answer}}}."
    return f"The answer is \\boxed{{{answer}}}.\n#### {answer}"


def generate_problem(
    rng: random.Random,
    difficulty: int | Difficulty = 2,
    *,
    answer_style: AnswerStyle = "hash",
    record_id: str = "synthetic-0",
) -> dict[str, str]:
    """Draw one word problem with a worked solution, using only ``rng`` for randomness.

    Returns a record ``{"id", "problem", "solution", "answer"}``. The solution has one line per
    computation, ``a op b = c``, each using the previous result, and ends with the answer line
    chosen by ``answer_style``: ``"hash"`` (``#### 36``, default), ``"boxed"``
    (``The answer is \\boxed{36}.``) or ``"both"`` (boxed line, then ``#### 36``).
    """
    if not isinstance(rng, random.Random):
        raise ConfigError(
            f"rng must be a random.Random (got {type(rng).__name__}); "
            "create one with random.Random(seed)"
        )
    spec = _resolve_difficulty(difficulty)
    _check_answer_style(answer_style)
    for _ in range(_MAX_ATTEMPTS):
        steps = rng.randint(spec.min_steps, spec.max_steps)
        chain = _start(rng, spec)
        kinds = list(_STEP_WEIGHTS)
        weights = [_STEP_WEIGHTS[k] for k in kinds]
        while chain.steps < steps:
            final = chain.steps == steps - 1
            order = []
            pool, pool_w = list(kinds), list(weights)
            while pool:  # weighted order without replacement: try kinds until one fits
                i = rng.choices(range(len(pool)), weights=pool_w)[0]
                order.append(pool.pop(i))
                pool_w.pop(i)
            if not any(_try_step(rng, kind, chain, spec, final) for kind in order):
                break
        if chain.steps != steps:
            continue  # a dead end (e.g. nothing divides, values at the cap): draw again
        answer = chain.answer
        if chain.subject != chain.current:
            question = f"How many {chain.objects} do {chain.subject} have together?"
        else:
            question = f"How many {chain.objects} does {chain.subject} have?"
        problem = " ".join([*chain.sentences, question])
        solution = "\n".join([*chain.lines, _finish(answer, answer_style)])
        return {"id": record_id, "problem": problem, "solution": solution, "answer": str(answer)}
    raise ConfigError(
        f"could not build a {steps}-step problem within {spec} in {_MAX_ATTEMPTS} attempts; "
        "raise max_value or max_number, or lower max_steps"
    )


def _levels(difficulty: int | Difficulty | Sequence[int | Difficulty]) -> list[Difficulty]:
    if isinstance(difficulty, (int, Difficulty)):
        return [_resolve_difficulty(difficulty)]
    levels = [_resolve_difficulty(d) for d in difficulty]
    if not levels:
        raise ConfigError("difficulty is an empty list; give at least one level, e.g. [1, 2]")
    return levels


def generate_dataset(
    n: int,
    seed: int = 0,
    difficulty: int | Difficulty | Sequence[int | Difficulty] = (1, 2, 3, 4),
    *,
    answer_style: AnswerStyle = "hash",
    id_prefix: str = "synthetic",
    exclude: Iterable[str] = (),
) -> list[dict[str, str]]:
    """Generate ``n`` records with distinct problem texts, deterministically from ``seed``.

    ``difficulty`` is one level or a list of levels to mix (each record draws its level
    uniformly from the list). Problem texts in ``exclude`` are never produced, which is how
    :func:`generate_splits` keeps test problems out of training. Ids are ``{id_prefix}-{i}``.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ConfigError(f"n={n!r} must be a non-negative integer number of records")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed={seed!r} must be an integer")
    levels = _levels(difficulty)
    _check_answer_style(answer_style)
    rng = random.Random(seed)
    seen = set(exclude)
    records: list[dict[str, str]] = []
    misses = 0  # consecutive duplicates: many in a row means the level's problems ran out
    while len(records) < n:
        level = levels[0] if len(levels) == 1 else rng.choice(levels)
        record = generate_problem(
            rng, level, answer_style=answer_style, record_id=f"{id_prefix}-{len(records)}"
        )
        if record["problem"] in seen:
            misses += 1
            if misses > 2000:
                raise ConfigError(
                    f"only {len(records)} distinct problems found for n={n} at difficulty "
                    f"{[lv.level for lv in levels]}; ask for fewer records or a harder mix"
                )
            continue
        misses = 0
        seen.add(record["problem"])
        records.append(record)
    return records


def generate_splits(
    n_train: int,
    n_test: int,
    seed: int = 0,
    difficulty: int | Difficulty | Sequence[int | Difficulty] = (1, 2, 3, 4),
    *,
    answer_style: AnswerStyle = "hash",
    id_prefix: str = "synthetic",
) -> dict[str, list[dict[str, str]]]:
    """Train and test records that never share a problem text.

    The test split is drawn first (from ``seed``), then the train split from a seed derived
    from it, excluding every test problem, so growing ``n_train`` never changes the test set.
    Ids are ``{id_prefix}-test-{i}`` and ``{id_prefix}-train-{i}``.
    """
    test = generate_dataset(
        n_test, seed, difficulty, answer_style=answer_style, id_prefix=f"{id_prefix}-test"
    )
    train = generate_dataset(
        n_train,
        random.Random(seed).randrange(2**31) ^ 0x5EED,
        difficulty,
        answer_style=answer_style,
        id_prefix=f"{id_prefix}-train",
        exclude=(r["problem"] for r in test),
    )
    return {"train": train, "test": test}


def write_jsonl(records: Iterable[dict[str, str]], path: str | os.PathLike) -> None:
    """Write records one JSON object per line, atomically (a crash never leaves half a file)."""
    with atomic_file(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
