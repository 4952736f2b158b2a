"""Stage 2: only the decider changes (bit for bit), and it learns a planted routing rule.

Data: sequences that follow a fixed random successor map (token t+1 = succ[token t]), labelled
"hard" exactly where the *next* token id is odd. A causal decider cannot see the next token,
but with the successor map it is a function of the current one, so the rule is learnable from
the depth-1 features.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from tah.errors import ConfigError
from tah.training.recipe import recipe_from_dict
from tah.training.trainer import train
from test_train_utils import VOCAB, recipe_dict, tiny_init_config, train_records, write_rows

SUCC = list(range(VOCAB))
random.Random(1).shuffle(SUCC)


def chain_rows(n: int, seed: int, length: int = 24) -> list[dict]:
    """Chains through SUCC; training sets (n >= VOCAB) start once at every token.

    Positions 0-1 are the prompt and the last position (whose next token is unknown) is left
    out of the supervised span, so every decider target obeys the rule.
    """
    rng = random.Random(seed)
    starts = list(range(VOCAB))
    rng.shuffle(starts)
    rows = []
    for i in range(n):
        ids = [starts[i] if i < VOCAB else rng.randrange(VOCAB)]
        for _ in range(length - 1):
            ids.append(SUCC[ids[-1]])
        mismatch = [ids[t + 1] % 2 for t in range(length - 1)] + [0]
        mask = [0, 0] + [1] * (length - 3) + [0]
        rows.append({"data_id": i, "input_ids": ids, "mask": mask, "mismatch": mismatch})
    return rows


@pytest.fixture(scope="module")
def stage1_ckpt(tmp_path_factory):
    from transformers import AutoConfig, AutoModelForCausalLM

    from tah import TaHConfig, TaHForCausalLM

    cfg = dict(tiny_init_config())
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    model = TaHForCausalLM.from_base(hf, TaHConfig(decider="label", topk=8, lora_r=4))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1)
    path = tmp_path_factory.mktemp("s2") / "stage1"
    model.save_pretrained(path)
    return path


def stage2_recipe(tmp_path, ckpt, steps: int, **train_opts):
    data = write_rows(tmp_path / "chains.jsonl", chain_rows(64, seed=3))
    raw = recipe_dict(
        "stage2",
        data,
        tmp_path / "run",
        model={
            "init_config": None,
            "init_from": str(ckpt),
            "tah": {
                "decider": "mlp",
                "threshold": 0.5,
                "decider_layers": [0, 1, 2],
                "decider_topk": 8,
                "decider_hidden_dims": [64, 64],
                "decider_dropout": 0.0,
            },
        },
        loss={"pos_weight": "auto", "decider_targets": "response"},
        optim={"lr": 3e-3, "warmup_ratio": 0.0, "min_lr_ratio": 0.1},
        train={
            "max_steps": steps,
            "per_device_batch_size": 8,
            "global_batch_size": 8,
            **train_opts,
        },
    )
    return recipe_from_dict(raw)


def test_stage2_trains_only_the_decider_and_learns_the_rule(tmp_path, stage1_ckpt):
    from tah import TaHForCausalLM

    train(stage2_recipe(tmp_path, stage1_ckpt, steps=25))
    final = tmp_path / "run" / "final"

    # Everything but the decider is bit-identical to the stage-1 checkpoint.
    for name in ("model.safetensors", "lora/adapter_model.safetensors"):
        before, after = load_file(stage1_ckpt / name), load_file(final / name)
        assert before.keys() == after.keys()
        for key in before:
            assert torch.equal(before[key], after[key]), key
    start = TaHForCausalLM.from_pretrained(stage1_ckpt, decider="label")
    trained = TaHForCausalLM.from_pretrained(final, threshold=0.5)
    assert trained.config.decider == "mlp"
    for (k1, v1), (k2, v2) in zip(start.state_dict().items(), trained.state_dict().items()):
        if not k2.startswith("decider."):
            assert k1 == k2 and torch.equal(v1, v2), k1

    # The decider learned "continue iff the next token id is odd" on unseen chains.
    rows = chain_rows(32, seed=99)
    ids = torch.tensor([r["input_ids"] for r in rows])
    with torch.no_grad():
        out = trained.eval()(ids, max_depth=1)
    assert out.iter_counts.max() == 1  # only depth 1 ran
    # Response positions (the decider's training targets), each with a known next token.
    pred = out.decider_logits[:, 2:-1, 0] > 0.0
    truth = (ids[:, 3:] % 2) == 1
    assert pred.numel() == 32 * 21
    accuracy = (pred == truth).float().mean().item()
    assert accuracy > 0.95, accuracy
    last = train_records(tmp_path / "run")[-1]
    assert last["decider_accuracy"] > 0.9 and last["decider_recall"] > 0.9


def test_stage2_refuses_gradient_checkpointing_and_pos_weight_is_auto(tmp_path, stage1_ckpt):
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        train(stage2_recipe(tmp_path, stage1_ckpt, steps=1, gradient_checkpointing=True))
    result = train(stage2_recipe(tmp_path, stage1_ckpt, steps=1), overwrite=True)
    lines = (result.output_dir / "train_log.jsonl").read_text().splitlines()
    start = [json.loads(line) for line in lines]
    # rows without a supervised hard token are dropped (docs/method.md §8) before counting
    rows = [
        r for r in chain_rows(64, seed=3) if any(m * k for m, k in zip(r["mismatch"], r["mask"]))
    ]
    assert len(rows) < 64
    pos = sum(sum(m * k for m, k in zip(r["mismatch"], r["mask"])) for r in rows)
    total = sum(sum(r["mask"]) for r in rows)
    assert start[0]["pos_weight"] == pytest.approx((total - pos) / pos)
