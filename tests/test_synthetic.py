"""Tests for the synthetic reasoning task and its tokenizer (tah.data.synthetic / .tokenizer)."""

from __future__ import annotations

import json
import operator
import random
import re
import statistics

import pytest

from tah.data.synthetic import (
    DIFFICULTIES,
    Difficulty,
    generate_dataset,
    generate_problem,
    generate_splits,
    write_jsonl,
)
from tah.data.tokenizer import (
    CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    build_task_tokenizer,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from tah.errors import ConfigError, DataError

# Independent of the generator: any "a op b = c" with integers.
EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


def equations(solution: str) -> list[tuple[int, str, int, int]]:
    return [(int(a), op, int(b), int(c)) for a, op, b, c in EQUATION.findall(solution)]


@pytest.fixture(scope="module")
def records() -> list[dict[str, str]]:
    return generate_dataset(400, seed=11, difficulty=(1, 2, 3, 4))


@pytest.fixture(scope="module")
def tok():
    return build_task_tokenizer(n=800, seed=3)


# --------------------------------------------------------------------------- generator


def test_same_seed_same_records_and_no_global_state():
    random.seed(1234)
    state = random.getstate()
    a = generate_dataset(150, seed=5)
    b = generate_dataset(150, seed=5)
    assert random.getstate() == state  # the generator never touches global random state
    assert a == b
    c = generate_dataset(150, seed=6)
    assert sum(x["problem"] != y["problem"] for x, y in zip(a, c)) > 140
    one = generate_problem(random.Random(9), 3)
    assert one == generate_problem(random.Random(9), 3)


def test_record_format(records):
    ids = [r["id"] for r in records]
    assert len(set(ids)) == len(ids)
    assert len({r["problem"] for r in records}) == len(records)
    for r in records:
        assert set(r) == {"id", "problem", "solution", "answer"}
        assert all(isinstance(v, str) and v for v in r.values())
        assert r["problem"].endswith("?")


def test_solution_arithmetic_is_correct_and_chained(records):
    for r in records:
        lines = r["solution"].split("\n")
        assert lines[-1] == f"#### {r['answer']}"
        steps = [equations(line) for line in lines[:-1]]
        assert all(len(found) == 1 for found in steps), r["solution"]  # one computation a line
        results: list[int] = []
        problem_numbers = {int(x) for x in re.findall(r"\d+", r["problem"])}
        operands: set[int] = set()
        for i, [(a, op, b, c)] in enumerate(steps):
            value = OPS[op](a, b)
            assert value == c and c == int(c) and c > 0, (r["solution"], (a, op, b, c))
            if i > 0:  # every later step builds on an earlier result
                assert a in results or b in results, r["solution"]
            assert {a, b} <= problem_numbers | set(results), (r["problem"], r["solution"])
            operands |= {a, b}
            results.append(c)
        assert int(r["answer"]) == results[-1]
        assert problem_numbers <= operands, r  # every number in the problem is needed


def test_difficulty_controls_steps_and_sizes():
    mean_steps, mean_answer = [], []
    for level, spec in DIFFICULTIES.items():
        recs = generate_dataset(150, seed=2, difficulty=level)
        counts = [len(equations(r["solution"])) for r in recs]
        assert min(counts) >= spec.min_steps and max(counts) <= spec.max_steps
        assert set(counts) == set(range(spec.min_steps, spec.max_steps + 1))
        values = [c for r in recs for (_, _, _, c) in equations(r["solution"])]
        assert max(values) <= spec.max_value
        mean_steps.append(statistics.mean(counts))
        mean_answer.append(statistics.mean(int(r["answer"]) for r in recs))
    assert mean_steps == sorted(mean_steps) and len(set(mean_steps)) == len(mean_steps)
    assert mean_answer == sorted(mean_answer)


def test_difficulty_mix_draws_every_level():
    recs = generate_dataset(200, seed=4, difficulty=[1, 4])
    counts = {len(equations(r["solution"])) for r in recs}
    assert counts == {1, 2, 4, 5}


def test_answer_styles():
    rng_seed = 8
    by_style = {
        style: generate_dataset(50, rng_seed, 2, answer_style=style)
        for style in ("hash", "boxed", "both")
    }
    for h, b, both in zip(by_style["hash"], by_style["boxed"], by_style["both"]):
        assert h["problem"] == b["problem"] == both["problem"]  # style never changes the draw
        ans = h["answer"]
        assert h["solution"].endswith(f"\n#### {ans}") and "boxed" not in h["solution"]
        assert "answer" not in h["solution"].lower()  # would trip math-verify's answer regexes
        assert b["solution"].endswith(f"\nThe answer is \\boxed{{{ans}}}.")
        assert "####" not in b["solution"]
        assert both["solution"].endswith(f"\nThe answer is \\boxed{{{ans}}}.\n#### {ans}")


def test_math_verify_grades_outputs_as_intended():
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    # The evaluation's model-output config (docs/method.md §11): boxed first, first-match extraction.
    pred_config = [
        LatexExtractionConfig(
            normalization_config=NormalizationConfig(
                nits=False, malformed_operators=False, basic_latex=True, boxed="all", units=True
            ),
            boxed_match_priority=0,
            try_extract_without_anchor=False,
        ),
        ExprExtractionConfig(),
    ]

    def grade(gold: str, output: str) -> bool:
        gold_parsed = parse(gold, extraction_config=[ExprExtractionConfig()])
        pred = parse(output, extraction_config=pred_config, extraction_mode="first_match")
        return bool(pred) and verify(gold_parsed, pred)

    for style in ("hash", "boxed", "both"):
        for r in generate_dataset(40, seed=21, answer_style=style):
            assert grade(r["answer"], r["solution"]), r
            wrong = str(int(r["answer"]) + 1)
            bad = r["solution"].replace(f"{{{r['answer']}}}", f"{{{wrong}}}")
            bad = re.sub(r"#### \d+$", f"#### {wrong}", bad)
            assert not grade(r["answer"], bad), bad
    # A boxed answer outranks a later stray number; without one the last number counts.
    assert grade("36", "12 + 24 = 36.\nThe answer is \\boxed{36}.\n#### 35")
    assert not grade("36", "12 + 24 = 36.\n#### 35")


def test_splits_never_share_a_problem():
    splits = generate_splits(300, 100, seed=3, difficulty=1)
    train, test = splits["train"], splits["test"]
    assert len(train) == 300 and len(test) == 100
    assert not {r["problem"] for r in train} & {r["problem"] for r in test}
    assert not {r["id"] for r in train} & {r["id"] for r in test}
    # Growing the training set leaves the test set unchanged.
    assert generate_splits(50, 100, seed=3, difficulty=1)["test"] == test


def test_write_jsonl_roundtrip(tmp_path, records):
    path = tmp_path / "sub" / "train.jsonl"
    write_jsonl(records[:20], path)
    write_jsonl(records[:30], path)  # overwrite in place
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == records[:30]
    assert [p.name for p in path.parent.iterdir()] == ["train.jsonl"]  # no temp files left


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ConfigError, match="difficulty"):
        generate_dataset(3, difficulty=7)
    with pytest.raises(ConfigError, match="answer_style"):
        generate_dataset(3, answer_style="latex")
    with pytest.raises(ConfigError, match="n="):
        generate_dataset(-1)
    with pytest.raises(ConfigError, match="random.Random"):
        generate_problem(random, 1)
    with pytest.raises(ConfigError, match="min_steps"):
        Difficulty(9, min_steps=3, max_steps=2, max_number=9, max_factor=3, max_value=99)
    with pytest.raises(ConfigError, match="distinct problems"):
        tiny = Difficulty(9, min_steps=1, max_steps=1, max_number=2, max_factor=2, max_value=4)
        generate_dataset(10_000, seed=0, difficulty=tiny)


# --------------------------------------------------------------------------- tokenizer


def test_digits_are_single_tokens(tok, records):
    vocab = tok.get_vocab()
    assert all(str(d) in vocab for d in range(10))
    assert len(tok.encode("1234567890", add_special_tokens=False)) == 10
    for r in records[:100]:
        for text in (r["problem"], r["solution"]):
            ids = tok.encode(text, add_special_tokens=False)
            pieces = [tok.decode([i]) for i in ids]
            for piece in pieces:
                if any(ch.isdigit() for ch in piece):
                    assert len(piece) == 1, (piece, text)
            assert sum(p.isdigit() for p in pieces) == sum(ch.isdigit() for ch in text)


def test_small_vocab_with_whole_word_tokens(tok, records):
    assert 300 <= len(tok) <= 640
    words = {w for r in records for w in re.findall(r"[A-Za-z]+", r["problem"] + r["solution"])}
    for word in words:  # as it occurs: after a space, or first on a line
        lengths = {len(tok.encode(w, add_special_tokens=False)) for w in (word, " " + word)}
        assert 1 in lengths, word


def test_decode_round_trips_exactly(tok, records):
    extra = [
        "Janet’s ducks  lay 16 eggs\tper day.\n\nDouble  spaces , odd spacing .",
        " leading space and trailing newline\n",
        "The answer is \\boxed{1,234}.\n#### 1234",
    ]
    for text in [t for r in records for t in (r["problem"], r["solution"])] + extra:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text, text


def test_special_tokens_and_chat_template(tok):
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    ids = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert len(set(ids)) == len(SPECIAL_TOKENS) and tok.unk_token_id not in ids
    for t in SPECIAL_TOKENS:  # never split, even inside text
        assert tok.encode(f"a{t}b", add_special_tokens=False)[1] == tok.convert_tokens_to_ids(t)
    assert tok.encode("Tom has 3.") == tok.encode("Tom has 3.", add_special_tokens=False)
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tom has 3 apples."},
        {"role": "assistant", "content": "Tom has 3 + 4 = 7.\n#### 7"},
    ]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nTom has 3 apples.<|im_end|>\n"
        "<|im_start|>assistant\nTom has 3 + 4 = 7.\n#### 7<|im_end|>\n"
    )
    prompt = tok.apply_chat_template(msgs[1:2], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nTom has 3 apples.<|im_end|>\n<|im_start|>assistant\n"
    prompt_ids = tok.apply_chat_template(msgs[1:2], add_generation_prompt=True, return_dict=True)
    assert tok.decode(prompt_ids["input_ids"]) == prompt
    assert tok.decode(tok.encode(text)) == text
    # The assistant mask is exactly the supervised span: the answer and its end-of-turn token.
    out = tok.apply_chat_template(msgs, return_dict=True, return_assistant_tokens_mask=True)
    kept = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(kept) == "Tom has 3 + 4 = 7.\n#### 7<|im_end|>"
    assert kept[-1] == tok.eos_token_id
    with pytest.raises(Exception, match="Unsupported chat role"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_save_and_reload_offline(tok, records, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    target = tmp_path / "tok"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    assert save_tokenizer(tok, target) == target
    assert not (target / "stale.txt").exists()  # replaced as a whole, atomically
    assert not [p for p in tmp_path.iterdir() if p.name != "tok"]
    for loaded in (AutoTokenizer.from_pretrained(str(target)), load_tokenizer(target)):
        assert loaded.get_vocab() == tok.get_vocab()
        assert loaded.chat_template == tok.chat_template == CHAT_TEMPLATE
        assert (loaded.eos_token_id, loaded.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)
        msgs = [{"role": "user", "content": records[0]["problem"]}]
        assert loaded.apply_chat_template(
            msgs, add_generation_prompt=True
        ) == tok.apply_chat_template(msgs, add_generation_prompt=True)
        for r in records[:50]:
            assert loaded.encode(r["solution"]) == tok.encode(r["solution"])
            assert loaded.decode(loaded.encode(r["solution"])) == r["solution"]
    with pytest.raises(ConfigError, match="tokenizer.json"):
        load_tokenizer(tmp_path / "missing")


def test_training_is_deterministic_and_validated(records):
    texts = [t for r in records for t in (r["problem"], r["solution"])]
    a = train_tokenizer(texts, vocab_size=400)
    b = train_tokenizer(texts, vocab_size=400)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert len(a) <= 400
    with pytest.raises(ConfigError, match="vocab_size"):
        train_tokenizer(texts, vocab_size=100)
    with pytest.raises(DataError, match="no texts"):
        train_tokenizer([])
    with pytest.raises(DataError, match="not a str"):
        train_tokenizer(["ok", 3])


def test_chat_sequences_stay_short(tok):
    lengths = {}
    for level in DIFFICULTIES:
        recs = generate_dataset(60, seed=13, difficulty=level)
        lengths[level] = statistics.mean(
            len(
                tok.apply_chat_template(
                    [
                        {"role": "user", "content": r["problem"]},
                        {"role": "assistant", "content": r["solution"]},
                    ],
                    return_dict=True,
                )["input_ids"]
            )
            for r in recs
        )
    assert lengths[1] < lengths[2] < lengths[3] < lengths[4]
    assert 50 <= lengths[1] and lengths[2] <= 100 and lengths[4] <= 170, lengths
