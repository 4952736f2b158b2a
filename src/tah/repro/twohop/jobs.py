"""One job of ``tah repro twohop``: train one model (or TaH's two stages) and evaluate it.

Run in a worker process by :func:`tah.repro.jobs.run_jobs`; writes ``progress.json`` while it
trains, the model, and last ``result.json`` (its presence means "done": a rerun skips the job).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from tah.data.twohop import build_tokenizer, shortcut_accuracy
from tah.io import atomic_dir, write_json
from tah.repro.twohop.config import BARE_SUFFIX, GATE, TAH_JOBS, TwoHopConfig, job_dir, mixed_arm
from tah.repro.twohop.runs import (
    Predictions,
    Shape,
    TrainSettings,
    auc,
    count_parameters,
    decider_scores,
    deepen,
    eval_batches,
    new_standard,
    new_tah,
    predict,
    stage1_loss,
    stage2_loss,
    standard_forward,
    standard_loss,
    tah_config,
    tah_forward,
    train_loop,
    written_second_step_accuracy,
)
from tah.repro.widen import widen

# Disjoint problem streams: training rows, validation and test problems never share a seed.
TEST_SEED, VAL_SEED, GATE_STREAM, FINETUNE_STREAM, DECIDER_STREAM = 10**6, 2 * 10**6, 0, 1, 2
BASE_ROUND_STREAM = 10  # round k of the base trains on stream BASE_ROUND_STREAM + k
# A restarted base (attempt a >= 1): init seed seed + a * RESTART_SEED_OFFSET, problem streams
# RESTART_STREAM + 10 a + k (its first S steps k = 0, then round k)
RESTART_SEED_OFFSET, RESTART_STREAM = 10**4, 100
# The base's resumable state (between attempts; removed when the job finishes)
ATTEMPTS_FILE, KEPT_MODEL_DIR = "attempts.json", "kept-model"


def _stream(seed: int, which: int) -> int:
    return 1000 * seed + which


class _Reporter:
    def __init__(self, path: Path, total: int) -> None:
        self.path, self.total, self.done, self.last = path, total, 0, 0.0

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last > 1.0 or self.done == self.total:
            write_json(self.path, {"done": self.done, "total": self.total})
            self.last = now


def _bits(flags: torch.Tensor) -> str:
    return "".join("1" if bool(x) else "0" for x in flags)


def _outcome(pred: Predictions) -> dict[str, Any]:
    return {**pred.summary(), "correct": _bits(pred.correct), "kinds": _bits_kinds(pred.kinds)}


def _bits_kinds(kinds: torch.Tensor) -> str:
    return "".join(str(int(k)) for k in kinds)


def _shape(config: TwoHopConfig, layers: int, intermediate: int | None = None) -> Shape:
    return Shape(
        layers=layers,
        hidden=config.hidden,
        intermediate=intermediate or config.intermediate,
        heads=config.heads,
        kv_heads=config.kv_heads,
        family=config.family,
        init_std=config.init_std,
        tie_embeddings=config.tie_embeddings,
    )


def _load_standard(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)


def _save_standard(model, tokenizer, path: Path) -> None:
    with atomic_dir(path) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))


def untrained(config: TwoHopConfig, layers: int, width: int | None = None, tahplus: bool = False):
    """A Standard model of the study's shape, or TaH+ on it (base + LoRA + learned decider);
    weights from seed 0, for counting, not training."""
    base = new_standard(config.task_spec, _shape(config, layers, width), 0)
    return new_tah(base, _decider_config(config), 0) if tahplus else base


def tahplus_parameters(config: TwoHopConfig) -> int:
    """Parameters of the TaH+ model (base + LoRA + decider), built without training."""
    return count_parameters(untrained(config, config.shallow_layers, tahplus=True))


def _decider_config(config: TwoHopConfig):
    """The TaH settings of TaH+'s learned decider (stage 2)."""
    return tah_config(
        "mlp",
        config.lora_r,
        config.decider_hidden,
        config.shallow_layers,
        config.decider_reads,
        config.decider_previous_token,
    )


def wide_intermediate(config: TwoHopConfig) -> int:
    """The smallest MLP width (multiple of 16) giving a base-depth Standard >= TaH+'s parameters."""
    target = tahplus_parameters(config)
    task = config.task_spec
    width = config.intermediate
    while count_parameters(new_standard(task, _shape(config, config.shallow_layers, width), 0)) < (
        target
    ):
        width += 16
    return width


def run_job(config: dict[str, Any], out: str, seed: int, name: str) -> dict[str, Any]:
    cfg = TwoHopConfig.from_dict(config)
    where = job_dir(Path(out), seed, name)
    where.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    job = {"shallow": _scratch_job, "base": _base_job}.get(name, _finetune_job)
    result = job(cfg, Path(out), seed, name, where)
    result["wall_s"] = time.perf_counter() - started
    result["shortcut_two_hop_accuracy"] = shortcut_accuracy(cfg.task_spec)
    write_json(where / "result.json", result)
    return {"name": name, "seed": seed}


# ------------------------------------------------------------------ the base (Standard only)
def _written_second_step(cfg: TwoHopConfig, model, problems: int, seed: int) -> dict[str, float]:
    """With a written-format base: its second-step accuracy given the written intermediate."""
    if not cfg.base_writes_intermediate:
        return {}
    task = cfg.base_task_spec
    batches = eval_batches(task, problems, seed)
    accuracy = written_second_step_accuracy(standard_forward(model), task, batches)
    model.train()
    return {"written_second_step": accuracy}


def _scratch_job(cfg: TwoHopConfig, out: Path, seed: int, name: str, where: Path) -> dict[str, Any]:
    task, train_task = cfg.task_spec, cfg.base_first_task_spec
    layers = cfg.shallow_layers
    width, steps = cfg.intermediate, cfg.base_steps
    model = new_standard(task, _shape(cfg, layers, width), seed)
    model.train()
    settings = TrainSettings(
        steps=steps, batch=cfg.batch, lr=cfg.lr, data_seed=_stream(seed, GATE_STREAM)
    )
    curve: list[dict[str, Any]] = []
    val = eval_batches(task, cfg.curve_problems, VAL_SEED)

    def probe(step: int) -> None:  # the learning curve, on validation problems
        acc = predict(standard_forward(model), task, val).summary()["accuracy"]
        model.train()
        point = {"step": step, "one_hop": acc["one_hop"], "two_hop": acc["gf"]}
        point |= _written_second_step(cfg, model, cfg.curve_problems, VAL_SEED)
        curve.append(point)
        print(f"step {step}: one-hop {acc['one_hop']:.3f}  two-hop {acc['gf']:.3f}", flush=True)

    log = train_loop(
        list(model.parameters()),
        standard_loss(model),
        train_task,
        settings,
        _Reporter(where / "progress.json", steps),
        probe=probe,
        probe_every=cfg.curve_every,
    )
    test = predict(standard_forward(model), task, eval_batches(task, cfg.test_problems, TEST_SEED))
    _save_standard(model, build_tokenizer(task), where / "model")
    return {
        "kind": "scratch",
        "layers": layers,
        "intermediate": width,
        "steps": steps,
        "parameters": count_parameters(model),
        "train_loss": log.losses,
        "validation_curve": curve,
        "test": _outcome(test),
        **_written_second_step(cfg, model, cfg.test_problems, TEST_SEED),
    }


def _base_job(cfg: TwoHopConfig, out: Path, seed: int, name: str, where: Path) -> dict[str, Any]:
    """The shallow model, trained on in rounds while it misses the one-hop precondition on
    validation problems (never the test problems): the starting model of every arm.

    An attempt is the model after S steps plus at most R rounds. If one ends below the
    precondition, the base starts again from a fresh initialisation and problem stream, at most
    ``base_restarts`` times (attempt 0 is the ``shallow`` job's model).

    Resumable by attempt: after each attempt its record goes to ``attempts.json`` and, when it is
    the best so far, its model to ``kept-model/``; a rerun (after a kill, or with more restarts
    allowed: :func:`reopen_failed_bases`) continues with the next attempt. Attempts are
    deterministic, so a resumed base equals an uninterrupted one."""
    task = cfg.task_spec
    val = eval_batches(task, cfg.val_problems, VAL_SEED)
    per_attempt = cfg.base_steps + cfg.base_round_steps * cfg.base_max_rounds
    report = _Reporter(where / "progress.json", per_attempt * (1 + cfg.base_restarts))
    state_path, kept_dir = where / ATTEMPTS_FILE, where / KEPT_MODEL_DIR

    def one_hop(model) -> float:
        return predict(standard_forward(model), task, val).summary()["accuracy"]["one_hop"]

    def final(record: dict[str, Any]) -> float:
        return record["rounds"][-1]["validation_one_hop"]

    attempts: list[dict[str, Any]] = []
    if state_path.is_file():
        attempts = json.loads(state_path.read_text(encoding="utf-8"))["attempts"]
        print(f"resuming after attempt {len(attempts) - 1}", flush=True)
    kept = max(range(len(attempts)), key=lambda i: final(attempts[i]), default=None)
    model = None  # the kept attempt's model, once trained in this invocation
    report.done = per_attempt * len(attempts) if attempts else cfg.base_steps
    while len(attempts) <= cfg.base_restarts and not (
        attempts and _meets_precondition(attempts[-1]["rounds"])
    ):
        attempt = len(attempts)
        if attempt == 0:  # the shallow job's model: its first S steps
            trained = _load_standard(job_dir(out, seed, "shallow") / "model")
        else:
            trained = new_standard(
                task, _shape(cfg, cfg.shallow_layers), _restart_seed(seed, attempt)
            )
            stream = _restart_stream(seed, attempt, 0)
            _train_standard(cfg, trained, cfg.base_steps, stream, report, first=True)
        rounds = [{"round": 0, "steps": cfg.base_steps, "validation_one_hop": one_hop(trained)}]
        while not _meets_precondition(rounds) and len(rounds) <= cfg.base_max_rounds:
            k = len(rounds)
            stream = _restart_stream(seed, attempt, k)
            _train_standard(cfg, trained, cfg.base_round_steps, stream, report)
            rounds.append(
                {"round": k, "steps": cfg.base_round_steps, "validation_one_hop": one_hop(trained)}
            )
            print(
                f"attempt {attempt} round {k}: validation one-hop "
                f"{rounds[-1]['validation_one_hop']:.3f}",
                flush=True,
            )
        attempts.append({"attempt": attempt, "rounds": rounds})
        if kept is None or final(attempts[-1]) > final(attempts[kept]):
            kept, model = attempt, trained
            _save_standard(model, build_tokenizer(task), kept_dir)
        write_json(state_path, {"attempts": attempts, "attempt_kept": kept})
        report.done = per_attempt * (attempt + 1)
    # Kept: the attempt that passed, or (all failed: the study will stop at the precondition)
    # the one best on validation.
    if model is None:
        model = _load_standard(kept_dir)
    test = predict(standard_forward(model), task, eval_batches(task, cfg.test_problems, TEST_SEED))
    _save_standard(model, build_tokenizer(task), where / "model")
    rounds = attempts[kept]["rounds"]
    result = {
        "kind": "base",
        "layers": cfg.shallow_layers,
        "intermediate": cfg.intermediate,
        "steps": sum(r["steps"] for r in rounds),  # of the attempt kept
        "rounds": rounds,
        "attempts": attempts,
        "attempt_kept": kept,
        "parameters": count_parameters(model),
        "test": _outcome(test),
        **_written_second_step(cfg, model, cfg.test_problems, TEST_SEED),
    }
    # The attempt state is consumed into result.json (run_job writes it next); a fresh run of
    # this job starts from attempt 0 again.
    state_path.unlink()
    shutil.rmtree(kept_dir, ignore_errors=True)
    return result


def _meets_precondition(rounds: list[dict[str, Any]]) -> bool:
    """Whether an attempt's last round reaches the gate's one-hop precondition (validation)."""
    return 100 * rounds[-1]["validation_one_hop"] >= GATE["base_one_hop_min"]


def reopen_failed_bases(out: Path, config: TwoHopConfig) -> list[int]:
    """Seeds whose finished base missed the precondition with fewer attempts than ``config``
    now allows: turn each back into a resumable job (its attempts and kept model become the
    attempt state), so the base phase continues it with the next attempt. Returns those seeds."""
    reopened = []
    for seed in config.seeds:
        where = job_dir(out, seed, "base")
        path = where / "result.json"
        if not path.is_file():
            continue
        done = json.loads(path.read_text(encoding="utf-8"))
        attempts = done.get("attempts", [])
        passed = attempts and _meets_precondition(attempts[-1]["rounds"])
        if passed or len(attempts) >= 1 + config.base_restarts:
            continue
        if (where / KEPT_MODEL_DIR).exists():
            shutil.rmtree(where / KEPT_MODEL_DIR)
        shutil.copytree(where / "model", where / KEPT_MODEL_DIR)
        write_json(
            where / ATTEMPTS_FILE, {"attempts": attempts, "attempt_kept": done["attempt_kept"]}
        )
        os.replace(path, where / "result.superseded.json")  # kept for the record
        reopened.append(seed)
    return reopened


def _restart_seed(seed: int, attempt: int) -> int:
    """Initialisation seed of a restarted base (attempt >= 1): apart from every study seed."""
    return seed + RESTART_SEED_OFFSET * attempt


def _restart_stream(seed: int, attempt: int, k: int) -> int:
    """Problem stream of attempt ``attempt``'s first S steps (k = 0) or its round k."""
    if attempt == 0:
        return _stream(seed, BASE_ROUND_STREAM + k)  # k >= 1 here: rounds of the shallow model
    return _stream(seed, RESTART_STREAM + 10 * attempt + k)


def _train_standard(
    cfg: TwoHopConfig, model, steps: int, data_seed: int, report, first: bool = False
) -> None:
    """Train the base: its first S steps (``first``, on the curriculum's task) or a round."""
    model.train()
    settings = TrainSettings(steps=steps, batch=cfg.batch, lr=cfg.lr, data_seed=data_seed)
    task = cfg.base_first_task_spec if first else cfg.base_task_spec
    train_loop(list(model.parameters()), standard_loss(model), task, settings, report)


# ------------------------------------------------------------------ fine-tuning arms
def _finetune_job(
    cfg: TwoHopConfig, out: Path, seed: int, name: str, where: Path
) -> dict[str, Any]:
    task = cfg.task_spec
    base = _load_standard(job_dir(out, seed, "base") / "model")
    labeller = _load_standard(job_dir(out, seed, "base") / "model").eval()
    for p in labeller.parameters():
        p.requires_grad_(False)
    steps = cfg.finetune_steps * (2 if name == "standard2x" else 1)
    bare = name.endswith(BARE_SUFFIX)  # the same arm and stream, no written-out rows
    name = mixed_arm(name)
    settings = TrainSettings(
        steps=steps,
        batch=cfg.batch,
        lr=cfg.finetune_lr,
        data_seed=_stream(seed, FINETUNE_STREAM),
        written_per_batch=0 if bare else cfg.written_per_batch,
    )
    test_batches = eval_batches(task, cfg.test_problems, TEST_SEED)
    total = steps + (cfg.decider_steps if name == "tahplus" else 0)
    report = _Reporter(where / "progress.json", total)
    result: dict[str, Any] = {"kind": "finetune", "steps": steps}
    result["written_per_batch"] = settings.written_per_batch
    if name in TAH_JOBS:
        state = json.loads((out / "results.json").read_text(encoding="utf-8"))
        result["gate_when_trained"] = {  # the verdict on record when this arm started
            k: state["gate"].get(k) for k in ("passed", "enforced", "recorded_at")
        } | {"seeds": sorted(state["gate"]["per_seed"])}

    if name in ("standard", "standard2x", "wide", "deep"):
        model = base
        if name == "wide":
            model = widen(base, wide_intermediate(cfg), seed)
        elif name == "deep":
            model = deepen(base, cfg.deep_layers, seed)
        model.train()
        log = train_loop(list(model.parameters()), standard_loss(model), task, settings, report)
        result["test"] = _outcome(predict(standard_forward(model), task, test_batches))
        result |= {"parameters": count_parameters(model), "train_loss": log.losses}
        result["intermediate"] = model.config.intermediate_size
        result["layers"] = model.config.num_hidden_layers
        return result

    # TaH arms: stage 1 under label routing (AlwaysThink: every token at depth 2).
    label = tah_config("label", cfg.lora_r, cfg.decider_hidden, cfg.shallow_layers)
    model = new_tah(base, label, seed)
    model.set_trainable(backbone=True, lora=True, decider=False)
    model.train()
    routing = None if name == "alwaysthink" else labeller
    params = [p for p in model.parameters() if p.requires_grad]
    log = train_loop(params, stage1_loss(model, routing), task, settings, report)
    result["train_loss"] = log.losses
    if name == "alwaysthink":
        result["test"] = _outcome(predict(tah_forward(model, always=True), task, test_batches))
        result["parameters"] = count_parameters(model)
        return result

    result["oracle"] = _outcome(predict(tah_forward(model, labeller=labeller), task, test_batches))
    result["depth1"] = _outcome(predict(tah_forward(model, max_depth=1), task, test_batches))
    stage1_dir = where / "stage1"
    with atomic_dir(stage1_dir) as tmp:
        model.save_pretrained(tmp)
    result |= _stage2(cfg, seed, stage1_dir, labeller, test_batches, report, where)
    return result


def _stage2(cfg, seed, stage1_dir, labeller, test_batches, report, where) -> dict[str, Any]:
    """Decider only, on depth-1 features, backbone and LoRA frozen (as ``tah train`` stage 2)."""
    from tah import TaHForCausalLM

    task = cfg.task_spec
    mlp = _decider_config(cfg)
    overrides = {
        k: getattr(mlp, k)
        for k in (
            "decider_topk",
            "decider_hidden_dims",
            "decider_expansion",
            "decider_dropout",
            "decider_previous_token",
        )
    }
    torch.manual_seed(seed)
    model = TaHForCausalLM.from_pretrained(
        stage1_dir, decider="mlp", decider_layers=mlp.decider_layers, **overrides
    )
    model.set_trainable(backbone=False, lora=False, decider=True)
    model.train()
    model.backbone.eval()
    settings = TrainSettings(
        steps=cfg.decider_steps,
        batch=cfg.batch,
        lr=cfg.finetune_lr,
        data_seed=_stream(seed, DECIDER_STREAM),
        written_per_batch=cfg.decider_written_per_batch,
    )
    params = list(model.decider_parameters())
    log = train_loop(params, stage2_loss(model, labeller, cfg.pos_weight), task, settings, report)
    model.eval()
    out: dict[str, Any] = {"decider_train_loss": log.losses, "parameters": count_parameters(model)}
    out["test"] = _outcome(predict(tah_forward(model, threshold=cfg.threshold), task, test_batches))
    out["tau_sweep"] = {
        str(tau): predict(tah_forward(model, threshold=tau), task, test_batches).summary()
        for tau in cfg.tau_sweep
    }
    val_batches = eval_batches(task, cfg.val_problems, VAL_SEED)
    out["decider"] = {
        "test": decider_metrics(decider_scores(model, labeller, test_batches), cfg.threshold),
        "validation": decider_metrics(decider_scores(model, labeller, val_batches), cfg.threshold),
    }
    with atomic_dir(where / "model") as tmp:
        model.save_pretrained(tmp)
    return out


def decider_metrics(scores: dict[str, torch.Tensor], threshold: float) -> dict[str, Any]:
    """Precision / recall / AUC of "continue" against the labeller's hard tokens, at answer
    positions and at every position."""
    out = {}
    for where, mask in (
        ("answers", scores["answer"]),
        ("all_tokens", torch.ones_like(scores["answer"])),
    ):
        prob, hard = scores["prob"][mask], scores["hard"][mask]
        go = prob > threshold
        tp = int((go & hard).sum())
        out[where] = {
            "precision": tp / int(go.sum()) if int(go.sum()) else None,
            "recall": tp / int(hard.sum()) if int(hard.sum()) else None,
            "auc": auc(prob, hard),
            "hard_share": float(hard.float().mean()),
            "predicted_share": float(go.float().mean()),
        }
    return out


__all__ = ["auc", "decider_metrics", "run_job", "wide_intermediate"]
