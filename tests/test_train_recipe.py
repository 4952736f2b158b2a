"""Recipes: unknown keys, overrides, cross-field checks, the shipped recipes, the schedule."""

from __future__ import annotations

import math

import pytest
import yaml

from tah.cli import main
from tah.errors import ConfigError
from tah.training.recipe import load_recipe, recipe_from_dict
from test_train_utils import REPO, recipe_dict, write_recipe


def base(tmp_path, stage="stage1", **sections):
    return recipe_dict(stage, tmp_path / "train.jsonl", tmp_path / "out", **sections)


def test_unknown_keys_are_named_with_a_suggestion(tmp_path):
    raw = base(tmp_path)
    raw["optim"]["lrr"] = 1
    with pytest.raises(ConfigError, match=r"'optim.lrr'.*did you mean 'optim.lr'"):
        recipe_from_dict(raw)
    raw = base(tmp_path)
    raw["trian"] = {}
    with pytest.raises(ConfigError, match=r"'trian'.*did you mean 'train'"):
        recipe_from_dict(raw)
    raw = base(tmp_path)
    raw["model"]["tah"]["lora_rank"] = 8
    with pytest.raises(ConfigError, match=r"model.tah.lora_rank.*lora_r"):
        recipe_from_dict(raw)


def test_overrides_are_typed_and_checked(tmp_path):
    raw = base(tmp_path)
    recipe = recipe_from_dict(
        raw, ["optim.lr=1e-4", "train.max_steps=5", "model.tah.lora_r=2", "data.eval=null"]
    )
    assert recipe.optim.lr == pytest.approx(1e-4) and isinstance(recipe.optim.lr, float)
    assert recipe.train.max_steps == 5 and recipe.model.tah["lora_r"] == 2
    with pytest.raises(ConfigError, match="did you mean 'train.max_steps'"):
        recipe_from_dict(raw, ["train.max_step=5"])
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        recipe_from_dict(raw, ["train.max_steps"])
    with pytest.raises(ConfigError, match="train.epochs must be int"):
        recipe_from_dict(raw, ["train.epochs=many"])


@pytest.mark.parametrize(
    ("stage", "change", "message"),
    [
        ("stage2", {"model": {"init_config": None}}, "stage2 needs model.init_from"),
        ("standard", {"model": {"tah": {"max_iter": 2}}}, "no TaH settings"),
        ("stage1", {"model": {"tah": {"decider": "mlp"}}}, "must be 'label'"),
        ("stage1", {"train": {"grad_accum": 2}}, "exactly one of train.global_batch_size"),
        ("stage1", {"output": {"report_to": ["mlflow"]}}, "output.report_to must be one of"),
        ("stage1", {"output": {"eval_every": 5}}, "need data.eval"),
    ],
)
def test_cross_field_errors(tmp_path, stage, change, message):
    raw = base(tmp_path, stage)
    for section, values in change.items():
        raw[section].update(values)
    with pytest.raises(ConfigError, match=message):
        recipe_from_dict(raw)


def test_stage2_refuses_training_anything_but_the_decider(tmp_path):
    raw = base(tmp_path, "stage2")
    raw["model"] = {"init_from": str(tmp_path / "s1"), "train_backbone": True}
    with pytest.raises(ConfigError, match="decider only"):
        recipe_from_dict(raw)


def test_global_batch_sets_accumulation_per_world_size(tmp_path):
    recipe = recipe_from_dict(base(tmp_path, train={"global_batch_size": 8}))
    assert [recipe.grad_accum_for(w) for w in (1, 2, 4)] == [4, 2, 1]
    with pytest.raises(ConfigError, match="not a multiple"):
        recipe.grad_accum_for(3)


def test_shipped_recipes_validate():
    paths = sorted(p for p in (REPO / "recipes").rglob("*.yaml") if "accelerate" not in p.parts)
    names = {f"{p.parent.name}/{p.name}" for p in paths}
    for family in ("qwen3_0.6b", "qwen3_1.7b", "tiny_cpu"):
        for stage in ("stage1", "stage2", "standard", "alwaysthink"):
            assert f"{family}/{stage}.yaml" in names
    for path in paths:
        recipe = load_recipe(path)
        assert recipe.stage in path.name
    s1 = load_recipe(REPO / "recipes/qwen3_1.7b/stage1.yaml")
    assert (s1.optim.lr, s1.optim.max_grad_norm, s1.train.epochs) == (4e-5, 0.2, 5)
    assert (s1.model.tah["lora_r"], s1.model.tah["lora_alpha"], s1.train.global_batch_size) == (
        32,
        64,
        128,
    )
    s2 = load_recipe(REPO / "recipes/qwen3_0.6b/stage2.yaml")
    assert (s2.optim.lr, s2.loss.pos_weight, s2.model.tah["threshold"]) == (3e-5, 4.8, 0.8)
    for name in ("ddp", "fsdp", "zero2"):
        cfg = yaml.safe_load((REPO / f"recipes/accelerate/{name}.yaml").read_text())
        assert cfg["distributed_type"] in ("MULTI_GPU", "FSDP", "DEEPSPEED")


def test_cli_reports_recipe_errors_without_traceback(tmp_path, capsys):
    raw = base(tmp_path)
    raw["optim"]["learning_rate"] = 1
    path = write_recipe(tmp_path / "r.yaml", raw)
    assert main(["train", str(path)]) == 2
    assert "unknown recipe key 'optim.learning_rate'" in capsys.readouterr().err
    good = write_recipe(tmp_path / "g.yaml", base(tmp_path))
    assert main(["train", str(good), "--dry-run", "--set", "optim.lr=2e-3"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["optim"]["lr"] == 2e-3


def test_cosine_schedule_warmup_and_floor():
    import torch

    from tah.training.optim import build_scheduler
    from tah.training.recipe import OptimSection

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    sched = build_scheduler(opt, OptimSection(lr=1.0, warmup_ratio=0.1, min_lr_ratio=0.1), 20)
    lrs = []
    for _ in range(20):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[1] == 0.5 and lrs[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    # cosine from 1 down to the floor 0.1 over steps 2..20
    mid = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 9 / 18))
    assert lrs[11] == pytest.approx(mid)
    assert min(lrs[2:]) > 0.1


def test_tiny_cpu_recipes_run_end_to_end_through_the_cli(tmp_path):
    from test_train_utils import random_rows, write_rows

    data = write_rows(tmp_path / "rows.jsonl", random_rows(8, seed=1))
    common = [f"data.train={data}", "model.tokenizer=null", "train.max_steps=1"]
    s1 = tmp_path / "s1"
    args = ["train", str(REPO / "recipes/tiny_cpu/stage1.yaml"), "--no-progress"]
    assert main([*args, "--output-dir", str(s1), *sum([["--set", c] for c in common], [])]) == 0
    args = ["train", str(REPO / "recipes/tiny_cpu/stage2.yaml"), "--no-progress"]
    overrides = [*common, f"model.init_from={s1 / 'final'}"]
    code = main(
        [*args, "--output-dir", str(tmp_path / "s2"), *sum([["--set", c] for c in overrides], [])]
    )
    assert code == 0
    assert (tmp_path / "s2" / "final" / "decider.safetensors").is_file()


def test_missing_tracker_package_is_refused_up_front():
    import importlib.util

    from tah.training.metrics import check_trackers

    assert check_trackers([]) == []
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        pytest.skip("tensorboard is installed here")
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        check_trackers(["tensorboard"])


def test_unquoted_yaml_no_for_mixed_precision_means_no(tmp_path):
    raw = base(tmp_path)
    raw["train"]["mixed_precision"] = "MP"
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw).replace("mixed_precision: MP", "mixed_precision: no"))
    assert yaml.safe_load(path.read_text())["train"]["mixed_precision"] is False
    assert load_recipe(path).train.mixed_precision == "no"
    raw["train"]["mixed_precision"] = True
    with pytest.raises(ConfigError, match="train.mixed_precision must be one of .*got True"):
        recipe_from_dict(raw)


def test_non_utf8_recipe_names_the_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"stage: stage1\n# caf\xe9\nmodel: {}\n")
    with pytest.raises(ConfigError, match=r"latin1.yaml:2 is not UTF-8"):
        load_recipe(path)


def test_shipped_recipes_are_found_outside_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no recipes/ folder here, as after `pip install tah`
    for name in ("recipes/tiny_cpu/stage1.yaml", "tiny_cpu/stage1.yaml"):
        assert load_recipe(name).stage == "stage1"
    with pytest.raises(ConfigError, match=r"does not exist; recipes shipped.*tiny_cpu/stage2.yaml"):
        load_recipe("recipes/tiny_cpu/stage9.yaml")


@pytest.mark.slow
def test_wheel_contains_the_recipes(tmp_path):
    import shutil
    import subprocess
    import sys
    import zipfile

    source = tmp_path / "src-copy"  # a clean tree: no build/ folder from an earlier build
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("src", "recipes"):
        shutil.copytree(REPO / name, source / name, symlinks=True, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path)],
        check=True,
    )  # fmt: skip
    names = zipfile.ZipFile(next(tmp_path.glob("tah-*.whl"))).namelist()
    assert "tah/recipes/tiny_cpu/stage1.yaml" in names
    assert "tah/recipes/accelerate/fsdp.yaml" in names
