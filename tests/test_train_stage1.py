"""Stage 1, Standard and AlwaysThink: the loss is the cross-entropy at the oracle depths.

The reference for the oracle-depth logits is built without TaH's depth loop: a plain Hugging
Face forward with a ``DynamicCache`` for depth 1 (LoRA off), then a second HF forward (LoRA on)
of the hard tokens' soft embeddings at their own positions, attending through an explicit 4-D
mask to the cached depth-1 keys at positions <= p and to the earlier hard tokens' depth-2 keys.
The cross-entropy is then summed position by position in Python.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from tah.errors import ConfigError
from tah.training.recipe import recipe_from_dict
from tah.training.sampler import StepPlan
from tah.training.trainer import train
from test_train_utils import (
    random_rows,
    recipe_dict,
    tiny_init_config,
    train_records,
    write_rows,
)

TOPK = 8


@pytest.fixture(scope="module")
def stage1_start(tmp_path_factory):
    """A TaH checkpoint with a non-zero LoRA (so depth 2 differs from the base) and no dropout."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from tah import TaHConfig, TaHForCausalLM

    root = tmp_path_factory.mktemp("stage1_start")
    cfg = dict(tiny_init_config())
    torch.manual_seed(3)
    hf = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    config = TaHConfig(decider="label", topk=TOPK, lora_r=4, lora_alpha=8, lora_dropout=0.0)
    model = TaHForCausalLM.from_base(hf, config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)
    model.save_pretrained(root / "ckpt")
    return root / "ckpt"


def reference_logits(model, ids: list[int], iter_labels: list[int]) -> torch.Tensor:
    """Oracle-depth logits of one sequence, computed with plain HF forwards (see docstring)."""
    from transformers.cache_utils import DynamicCache

    from tah.evaluation.backend_base import with_cache

    base = model.base_model
    x = torch.tensor([ids])
    hard = [t for t, d in enumerate(iter_labels) if d > 1]
    layers = [m for m in base.modules() if hasattr(m, "_disable_adapters")]
    for m in layers:
        m._disable_adapters = True
    cache = DynamicCache(config=base.config)
    z1 = base(input_ids=x, **with_cache(base, cache)).logits[0]
    out = z1.clone()
    if hard:
        values, index = z1[hard].topk(TOPK, dim=-1)
        weights = torch.softmax(values, dim=-1)
        soft = (weights[..., None] * base.get_input_embeddings().weight[index]).sum(1)
        n, h = len(ids), len(hard)
        allowed = torch.zeros(1, 1, h, n + h, dtype=torch.bool)
        for q, p in enumerate(hard):
            allowed[0, 0, q, : p + 1] = True  # depth-1 keys at positions <= p
            for k, p2 in enumerate(hard):
                allowed[0, 0, q, n + k] = p2 <= p  # depth-2 keys of hard tokens at <= p
        for m in layers:
            m._disable_adapters = False
        z2 = base(
            inputs_embeds=soft[None],
            position_ids=torch.tensor([hard]),
            attention_mask=allowed,
            **with_cache(base, cache),
        ).logits[0]
        for m in layers:
            m._disable_adapters = True
        out[hard] = z1[hard] + z2
    return out


def test_stage1_loss_equals_hand_computed_ce_at_oracle_depths(tmp_path, stage1_start):
    from tah import TaHForCausalLM
    from tah.data.label_features import build_features

    rows = random_rows(8, seed=11, hard_p=0.35)
    data = write_rows(tmp_path / "train.jsonl", rows)
    raw = recipe_dict(
        "stage1",
        data,
        tmp_path / "run",
        model={"init_config": None, "init_from": str(stage1_start), "tah": {}},
        train={"max_steps": 1},
    )
    train(recipe_from_dict(raw))
    logged = train_records(tmp_path / "run")[0]

    # The same global batch the trainer used for step 1, computed by hand.
    plan = StepPlan(len(rows), 2, 2, 1, raw["train"]["seed"])
    model = TaHForCausalLM.from_pretrained(stage1_start, decider="label").eval()
    total, count, deep = 0.0, 0, 0
    with torch.no_grad():
        for i in plan.step_indices(0, 0):
            feats = build_features(rows[i], max_iter=2)
            ids, labels, depth = feats["input_ids"], feats["labels"], feats["iter_labels"]
            ref = reference_logits(model, ids, depth)
            out = model(torch.tensor([ids]), iter_labels=torch.tensor([depth]))
            assert out.iter_counts[0].tolist() == depth
            torch.testing.assert_close(out.logits[0], ref, rtol=1e-4, atol=1e-4)
            for t in range(len(ids) - 1):
                if labels[t + 1] == -100:
                    continue
                row = ref[t].double().tolist()
                top = max(row)
                lse = top + math.log(sum(math.exp(v - top) for v in row))
                total += lse - row[labels[t + 1]]
                count += 1
                deep += depth[t] > 1
    assert deep > 0 and logged["items"] == count
    assert logged["loss"] == pytest.approx(total / count, rel=1e-5)
    assert logged["hard_ratio"] > 0 and logged["avg_depth"] > 1


def test_loss_does_not_depend_on_the_micro_batch_split(tmp_path):
    data = write_rows(tmp_path / "train.jsonl", random_rows(12, seed=5))
    evals = write_rows(tmp_path / "eval.jsonl", random_rows(3, seed=6))
    curves, eval_losses = [], []
    for per_device in (1, 4):
        out = tmp_path / f"run{per_device}"
        raw = recipe_dict(
            "stage1",
            data,
            out,
            train={"max_steps": 3, "per_device_batch_size": per_device},
            model={"tah": {"max_iter": 2, "topk": 8, "lora_r": 4, "lora_dropout": 0.0}},
            data={"train": str(data), "eval": str(evals), "max_length": 64},
            output={"dir": str(out), "progress": False, "eval_every": 3},
        )
        train(recipe_from_dict(raw))
        curves.append([r["loss"] for r in train_records(out)])
        log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        eval_losses += [r["loss"] for r in log if r["event"] == "eval"]
    assert len(curves[0]) == 3
    assert curves[0] == pytest.approx(curves[1], rel=1e-5)
    assert len(eval_losses) == 2 and eval_losses[0] == pytest.approx(eval_losses[1], rel=1e-5)


def test_standard_and_alwaysthink_baselines(tmp_path):
    from transformers import AutoModelForCausalLM

    data = write_rows(tmp_path / "train.jsonl", random_rows(8, seed=2))
    std = recipe_dict("standard", data, tmp_path / "std", train={"max_steps": 2})
    train(recipe_from_dict(std))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "std" / "final")
    assert model.config.vocab_size == 64
    assert not (tmp_path / "std" / "final" / "tah_config.json").exists()

    always = recipe_dict("alwaysthink", data, tmp_path / "always", train={"max_steps": 2})
    train(recipe_from_dict(always))
    records = train_records(tmp_path / "always")
    assert all(r["avg_depth"] == 2.0 and r["hard_ratio"] == 1.0 for r in records)
    saved = json.loads((tmp_path / "always" / "final" / "tah_config.json").read_text())
    assert saved["decider"] == "always"


def test_gradient_checkpointing_refused_for_tah_allowed_for_standard(tmp_path):
    data = write_rows(tmp_path / "train.jsonl", random_rows(4, seed=2))
    raw = recipe_dict(
        "stage1", data, tmp_path / "s1", train={"max_steps": 1, "gradient_checkpointing": True}
    )
    with pytest.raises(ConfigError, match="per-depth store"):
        train(recipe_from_dict(raw))
    assert not (tmp_path / "s1" / "train_log.jsonl").exists()
    raw = recipe_dict(
        "standard", data, tmp_path / "std", train={"max_steps": 1, "gradient_checkpointing": True}
    )
    assert train(recipe_from_dict(raw)).global_step == 1
