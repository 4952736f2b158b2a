"""Training data: clear errors before compute, the data order, batching, labelled directories."""

from __future__ import annotations

import json

import pytest
import torch

from tah.errors import ConfigError, DataError
from tah.training.collate import Collator
from tah.training.data import load_training_data
from tah.training.recipe import recipe_from_dict
from tah.training.sampler import StepPlan
from tah.training.trainer import train
from test_train_utils import random_rows, recipe_dict, tiny_init_config, write_rows

WORDS = [f"w{i}" for i in range(30)]
SPECIALS = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>"]
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def word_tokenizer(words):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + ["user", "assistant", *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tok.chat_template = TEMPLATE
    return tok


def load(path, **kw):
    return load_training_data(path, max_iter=2, strategy="mismatch", max_length=64, **kw)


def test_malformed_lines_are_reported_with_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    good = [json.dumps(r) for r in random_rows(3)]
    bad = {"input_ids": [1, 2], "mask": [1], "mismatch": [0, 1]}
    path.write_text("\n".join([good[0], "{not json", good[1], json.dumps(bad), good[2]]) + "\n")
    with pytest.raises(DataError, match=r"rows.jsonl:2: invalid JSON"):
        load(path)
    data = load(path, on_bad_line="skip")
    assert (len(data), data.skipped_lines) == (3, 2)
    assert "rows.jsonl:4" in data.problems[1] and "different lengths" in data.problems[1]


def test_empty_data_and_out_of_vocabulary_ids(tmp_path):
    no_hard = [dict(r, mismatch=[0] * len(r["mismatch"])) for r in random_rows(3)]
    with pytest.raises(DataError, match="no training rows left.*without a supervised hard"):
        load(write_rows(tmp_path / "easy.jsonl", no_hard))
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no training rows"):
        load(tmp_path / "blank.jsonl")
    with pytest.raises(DataError, match="does not exist"):
        load(tmp_path / "missing.jsonl")
    # ids up to 99 but a 64-row vocabulary: refused before any model weights load
    rows = write_rows(tmp_path / "big.jsonl", random_rows(4, vocab=100, seed=1))
    raw = recipe_dict("stage1", rows, tmp_path / "out")
    with pytest.raises(DataError, match="token id 9[0-9] but the model's vocabulary has 64"):
        train(recipe_from_dict(raw))
    assert not (tmp_path / "out").exists()


def test_labels_from_another_tokenizer_and_vocab_mismatch_are_refused(tmp_path):
    from tah.data.labeling import LabelSettings, label_records
    from tah.data.records import Record
    from tah.training.stages import describe_model

    tok_a, tok_b = word_tokenizer(WORDS), word_tokenizer([*WORDS[:-1], "other"])
    tok_a.save_pretrained(tmp_path / "tok_a")
    tok_b.save_pretrained(tmp_path / "tok_b")
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(tiny_init_config())
    reference = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    records = [
        Record(index=i, record_id=str(i), question="w1 w2", solution=" ".join(WORDS[i : i + 9]))
        for i in range(6)
    ]
    label_records(
        reference, tok_a, records, tmp_path / "labels", LabelSettings(shard_size=4), progress=False
    )
    ok = recipe_dict("stage1", tmp_path / "labels", tmp_path / "ok", train={"max_steps": 1})
    ok["model"]["tokenizer"] = str(tmp_path / "tok_a")
    data = load_training_data(
        tmp_path / "labels", max_iter=2, strategy="mismatch", max_length=64, tokenizer=tok_a
    )
    assert 0 < len(data) <= 6 and data.metadata["tokenizer"]["vocab_size"] == len(tok_a)

    bad = dict(ok, model=dict(ok["model"], tokenizer=str(tmp_path / "tok_b")))
    with pytest.raises(DataError, match="labels were made with tokenizer"):
        train(recipe_from_dict(bad))
    small = dict(bad, model=dict(bad["model"], init_config=tiny_init_config(vocab=16)))
    with pytest.raises(ConfigError, match="has 37 ids but model .* vocabulary of 16"):
        describe_model(recipe_from_dict(small))


def test_step_plan_is_seeded_and_split_independent():
    plans = [
        StepPlan(10, per, accum, world, seed=3) for per, accum, world in [(1, 4, 1), (2, 1, 2)]
    ]
    assert plans[0].steps_per_epoch == plans[1].steps_per_epoch == 3
    for epoch in (0, 1):
        for step in range(3):
            a = sorted(i for mb in plans[0].micro_batches(epoch, step, 0) for i in mb)
            b = sorted(
                i for r in (0, 1) for mb in plans[1].micro_batches(epoch, step, r) for i in mb
            )
            assert a == b and len(a) == 4
    assert [len(mb) for mb in plans[0].micro_batches(0, 0, 0)] == [1, 1, 1, 1]
    assert [len(mb) for mb in plans[1].micro_batches(0, 0, 1)] == [2]
    order0, order1 = plans[0].epoch_order(0), plans[0].epoch_order(1)
    assert sorted(order0) == list(range(10)) and order0 != order1
    assert order0 == StepPlan(10, 3, 3, 3, seed=3).epoch_order(0)
    assert order0 != StepPlan(10, 1, 4, 1, seed=4).epoch_order(0)
    seen = [i for s in range(3) for mb in plans[0].micro_batches(0, s, 0) for i in mb]
    assert set(seen) == set(range(10))  # the last step wraps around to complete its shape


def test_collator_pads_right_with_ignore_labels():
    batch = Collator(pad_token_id=5)(
        [
            {"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "iter_labels": [1, 2, 1]},
            {"input_ids": [4], "labels": [4], "iter_labels": [2]},
        ]
    )
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 5, 5]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert batch["iter_labels"].tolist() == [[1, 2, 1], [2, -100, -100]]
    assert batch["input_ids"].dtype == torch.long
