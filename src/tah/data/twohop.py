"""The two-hop lookup task: one-hop queries a shallow model answers, two-hop ones it cannot.

Each problem is one sequence of single-token words::

    <bos> F x3 y7 x0 y2 ... G y2 z5 y7 z1 ... f x0 y2  g y7 z1  gf x3 z1 ...

* table ``F`` maps K keys drawn from the X entities to K values drawn from the Y entities;
* table ``G`` maps exactly those Y values to K values drawn from the Z entities; both tables are
  listed in their own random order;
* then Q queries of three tokens ``op arg answer``: ``f x -> F(x)`` and ``g y -> G(y)`` are one
  lookup, ``gf x -> G(F(x))`` is two, and its intermediate ``F(x)`` is itself a token.

Why three disjoint entity sets and two tables: with one table over one entity set, a two-hop
answer can be guessed as "F of some value that is also a key" without reading the query (the
shortcut that scored ~51 % in the first version of this experiment). Here a two-hop answer is one
of the K values of G, and nothing but composing the two lookups points at the right one: the
best query-blind guess scores 1/K (see :func:`shortcut_accuracy`).

Why it is depth-bound: a lookup needs two attention layers (one to bind each value to the key
before it, one to find the key), so two lookups in a row need about four. (Trained, the depths
that learn are higher: see :mod:`tah.repro.twohop`.) TaH's second pass can
supply the second lookup if the first pass's guess at a two-hop answer is the intermediate
``F(x)``: the deeper pass starts from that token's (soft) embedding.

The written-out format (``written_intermediate``): a two-hop query spells out its intermediate,
``gf x F(x) G(F(x))``, both tokens supervised, the way a model that writes its reasoning answers.
A base taught in that format, then asked for the bare answer (``gf x G(F(x))``), guesses F(x)
first: the useful first guess TaH's second pass starts from. ``sample_mixed_batch`` draws a
batch holding both formats (fine-tuning on a mix keeps the written skill, and the F(x) it rests
on, alive).

Problems are generated in batches on the fly from a torch generator, so every training step sees
fresh problems and a seed reproduces the exact stream.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import torch

from tah.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerFast

IGNORE = -100
SPECIALS = ("<pad>", "<bos>", "F", "G", "f", "g", "gf")
PAD, BOS, TABLE_F, TABLE_G, OP_F, OP_G, OP_GF = range(len(SPECIALS))
#: Query kinds in reports; the index is the kind's code in ``TwoHopBatch.kinds``.
KINDS = ("f", "g", "gf")
TWO_HOP = KINDS.index("gf")


@dataclass(frozen=True)
class TwoHopTask:
    """Shape of the problems. Defaults: the feasibility setting of issue 11, split in two tables."""

    entities: int = 24  # per set (X, Y and Z each)
    pairs: int = 8  # K, per table
    queries: int = 6  # Q
    p_two_hop: float = 1 / 3  # the rest is split evenly between f and g
    # A ";" after every table pair and every query (the last id of the vocabulary, so the other
    # ids do not move): marks the pair boundaries a lookup needs. The loss covers answer tokens
    # only, so a trained model never writes the ";" after an answer: the study and the demo
    # read answers teacher-forced (the ";" comes from the problem), and anything decoding
    # freely, query after query, must insert the ";" itself after each answer.
    separators: bool = False
    # Two-hop queries written out, ``gf x F(x) G(F(x))``: the intermediate sits in the answer
    # slot and the final answer replaces the query's ";" (so needs ``separators``; every position
    # keeps its place). The format a base is taught in before it is asked for the bare answer.
    written_intermediate: bool = False

    def __post_init__(self) -> None:
        if self.pairs < 2 or self.entities < self.pairs:
            raise ConfigError(
                f"twohop task: need 2 <= pairs <= entities, got pairs={self.pairs}, "
                f"entities={self.entities}"
            )
        if self.queries < 1:
            raise ConfigError(f"twohop task: queries must be >= 1, got {self.queries}")
        if not 0.0 <= self.p_two_hop <= 1.0:
            raise ConfigError(f"twohop task: p_two_hop must be in [0, 1], got {self.p_two_hop}")
        if self.written_intermediate and not self.separators:
            raise ConfigError(
                "twohop task: written_intermediate needs separators=true (the final answer of a "
                "written-out two-hop query takes the place of its ';')"
            )

    @property
    def vocab_size(self) -> int:
        return len(SPECIALS) + 3 * self.entities + int(self.separators)

    @property
    def separator(self) -> int:
        return len(SPECIALS) + 3 * self.entities  # only in the vocabulary with separators

    @property
    def pair_len(self) -> int:
        return 2 + int(self.separators)

    @property
    def query_len(self) -> int:
        return 3 + int(self.separators)

    @property
    def length(self) -> int:
        return 1 + 2 * (1 + self.pair_len * self.pairs) + self.query_len * self.queries

    @property
    def first_query(self) -> int:
        return 1 + 2 * (1 + self.pair_len * self.pairs)

    def answer_positions(self) -> torch.Tensor:
        """(Q,) positions of the answer tokens (the model predicts them one position earlier)."""
        return self.first_query + self.query_len * torch.arange(self.queries) + 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TwoHopBatch:
    input_ids: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T): the answer tokens, IGNORE elsewhere (HF convention, unshifted)
    kinds: torch.Tensor  # (B, Q) query kind codes (index into KINDS)
    # (B, Q) the token in each query's answer slot: the answer, or with ``written_intermediate``
    # F(x) for two-hop queries (their final answer is the next token, also in ``labels``)
    answers: torch.Tensor
    intermediates: torch.Tensor  # (B, Q) F(x) for two-hop queries, -1 otherwise

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.ones_like(self.input_ids)


def _entity(task: TwoHopTask, which: int, index: torch.Tensor) -> torch.Tensor:
    return len(SPECIALS) + which * task.entities + index


def sample_batch(task: TwoHopTask, size: int, generator: torch.Generator) -> TwoHopBatch:
    """``size`` fresh problems, deterministic given the generator's state."""
    n, k, q = task.entities, task.pairs, task.queries

    def choose(count: int) -> torch.Tensor:  # (size, count) distinct indices out of n / k
        return torch.rand(size, count, generator=generator).argsort(dim=1)

    xs = _entity(task, 0, choose(n)[:, :k])  # pair i: x_i -> y_i -> z_i
    ys = _entity(task, 1, choose(n)[:, :k])
    zs = _entity(task, 2, choose(n)[:, :k])
    order_f, order_g = choose(k), choose(k)
    rows = torch.arange(size)[:, None]
    sep = [torch.full((size, k), task.separator)] if task.separators else []
    table_f = torch.stack([xs[rows, order_f], ys[rows, order_f], *sep], dim=2).flatten(1)
    table_g = torch.stack([ys[rows, order_g], zs[rows, order_g], *sep], dim=2).flatten(1)

    u = torch.rand(size, q, generator=generator)
    p_one = (1.0 - task.p_two_hop) / 2
    kinds = (u >= p_one).long() + (u >= 2 * p_one).long()
    # Each kind asks about distinct pairs (no query repeats an earlier one's answer).
    picks = torch.stack([choose(k) for _ in KINDS], dim=1)  # (size, kinds, k)
    rank = torch.zeros_like(kinds)
    for kind in range(len(KINDS)):
        is_kind = kinds == kind
        rank += (is_kind.cumsum(1) - 1).clamp(min=0) * is_kind
    pair = picks[rows, kinds, rank.clamp(max=k - 1)]
    args = torch.where(kinds == KINDS.index("g"), ys[rows, pair], xs[rows, pair])
    answers = torch.where(kinds == KINDS.index("f"), ys[rows, pair], zs[rows, pair])
    intermediates = torch.where(kinds == TWO_HOP, ys[rows, pair], torch.full_like(pair, -1))
    ops = torch.tensor([OP_F, OP_G, OP_GF])[kinds]
    sep = [torch.full((size, q), task.separator)] if task.separators else []
    if task.written_intermediate:
        two_hop = kinds == TWO_HOP
        sep = [torch.where(two_hop, answers, sep[0])]
        answers = torch.where(two_hop, intermediates, answers)
    query_tokens = torch.stack([ops, args, answers, *sep], dim=2).flatten(1)

    ids = torch.cat(
        [
            torch.full((size, 1), BOS),
            torch.full((size, 1), TABLE_F),
            table_f,
            torch.full((size, 1), TABLE_G),
            table_g,
            query_tokens,
        ],
        dim=1,
    )
    labels = torch.full_like(ids, IGNORE)
    positions = task.answer_positions()
    labels[:, positions] = ids[:, positions]
    if task.written_intermediate:
        finals = positions + 1
        labels[:, finals] = torch.where(kinds == TWO_HOP, ids[:, finals], IGNORE)
    return TwoHopBatch(ids, labels, kinds, answers, intermediates)


def sample_mixed_batch(
    task: TwoHopTask, size: int, written: int, generator: torch.Generator
) -> TwoHopBatch:
    """``size`` fresh problems: the first ``written`` in the written-out format, the rest in
    ``task``'s own. Both formats have the same length and positions, so they stack. With
    ``written == 0`` this is exactly :func:`sample_batch` (the same draws)."""
    if written == 0:
        return sample_batch(task, size, generator)
    if not 0 < written <= size:
        raise ConfigError(
            f"twohop: written problems per batch must be in [0, {size}], got {written}"
        )
    parts = [sample_batch(replace(task, written_intermediate=True), written, generator)]
    if written < size:
        parts.append(sample_batch(task, size - written, generator))
    return TwoHopBatch(
        **{f.name: torch.cat([getattr(b, f.name) for b in parts]) for f in fields(TwoHopBatch)}
    )


def shortcut_accuracy(task: TwoHopTask) -> float:
    """Two-hop accuracy of the best guess that does not compose: a uniform pick among G's K values.

    Every G value is equally likely to be the answer given everything but the query's
    composition (tables are shuffled independently), so no query-blind rule beats 1/K.
    """
    return 1.0 / task.pairs


def vocabulary(task: TwoHopTask) -> list[str]:
    words = list(SPECIALS)
    for prefix in ("x", "y", "z"):
        words += [f"{prefix}{i}" for i in range(task.entities)]
    return words + [";"] * task.separators


def build_tokenizer(task: TwoHopTask) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer whose ids are exactly the generator's ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(vocabulary(task))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<pad>",
        model_max_length=task.length,
    )


def table_pairs(task: TwoHopTask, ids: torch.Tensor) -> tuple[list[tuple[int, int]], ...]:
    """The (key, value) ids of one problem's tables F and G, in their listed order."""
    step = task.pair_len
    start_f = 2  # after <bos> F
    start_g = start_f + step * task.pairs + 1  # after table F and G
    return tuple(
        [(int(ids[start + step * i]), int(ids[start + step * i + 1])) for i in range(task.pairs)]
        for start in (start_f, start_g)
    )


def render(task: TwoHopTask, ids: torch.Tensor) -> str:
    """One problem as text (for reports and debugging)."""
    words = vocabulary(task)
    return " ".join(words[int(i)] for i in ids)
