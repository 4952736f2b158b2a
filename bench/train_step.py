"""Training-step benchmark: TaH stage 1 against the Standard baseline, side by side.

    python bench/train_step.py [--quick] [--hard-ratio 0.16] [--json out.json]

One random-weight Qwen3-shaped model, one batch of labelled rows (a prompt, then a supervised
span in which a ``--hard-ratio`` share of tokens is labelled hard). Both setups run the trainer's
own code path (``tah.training.stages.micro_step`` + backward + AdamW step with the recipe's
parameter groups): Stage 1 = TaH (label routing, LoRA r 16, base + LoRA trainable), Standard =
the plain HF model. Step times are measured interleaved (TaH, Standard, TaH, ...) and compared
as medians, so background load hits both alike. Peak memory is the peak of live tensor bytes
during one step (parameters, gradients, optimiser state, activations): ``torch.cuda`` statistics
on a GPU, torch's ``MemTracker`` (tensor-level accounting) on CPU.

On CPU the default is one thread: flush-to-zero of denormals (set here) holds only for the
calling thread, and on a shared machine a single thread gives far steadier ratios.

Aim (issue #3): step cost <= (1 + hard ratio + 0.1) x Standard, peak memory <= 1.2 x Standard.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch


def build(args):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    size = (
        dict(
            hidden_size=128,
            intermediate_size=384,
            num_hidden_layers=4,
            vocab_size=2048,
            head_dim=32,
        )
        if args.quick
        else dict(
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=6,
            vocab_size=8192,
            head_dim=32,
        )
    )
    config = Qwen3Config(
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=4096,
        tie_word_embeddings=False, **size,
    )  # fmt: skip
    return Qwen3ForCausalLM(config)


def make_batch(args, vocab: int, device: str):
    gen = torch.Generator().manual_seed(1)
    b, t = args.batch, args.seq
    prompt = t // 8
    ids = torch.randint(0, vocab, (b, t), generator=gen)
    labels = ids.clone()
    labels[:, :prompt] = -100
    hard = torch.rand(b, t, generator=gen) < args.hard_ratio
    hard[:, :prompt] = False
    iter_labels = torch.where(hard, 2, 1)
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": labels,
        "iter_labels": iter_labels,
    }
    return {k: v.to(device) for k, v in batch.items()}


def setup(stage: str, hf, args, device: str):
    from tah.training import stages
    from tah.training.optim import build_optimizer, parameter_groups
    from tah.training.recipe import recipe_from_dict

    raw = {
        "stage": stage,
        "model": {"base": "bench"},
        "data": {"train": "bench"},
        "train": {"grad_accum": 1},
        "output": {"dir": "bench"},
    }
    if stage == "stage1":
        raw["model"]["tah"] = {"max_iter": 2, "topk": 100, "lora_r": 16, "lora_alpha": 32}
    recipe = recipe_from_dict(raw)
    if stage == "stage1":
        from tah import TaHConfig, TaHForCausalLM

        config = TaHConfig(
            decider="label", topk=100, lora_r=16, lora_alpha=32, lora_dropout=args.lora_dropout
        )
        model = TaHForCausalLM.from_base(hf, config)
    else:
        model = hf
    model.to(device)
    stages.set_trainable(recipe, model)
    groups, _ = parameter_groups(model.named_parameters(), recipe.optim.weight_decay)
    optimizer = build_optimizer(groups, recipe.optim)
    settings = stages.LossSettings()
    stages.prepare_for_training(recipe, model)

    def step(batch):
        loss, stats = stages.micro_step(recipe, model, batch, settings)
        (loss / max(stats.items, 1)).backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 0.2)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return stats

    step.tracked = (model, optimizer)
    return step


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_bytes(step, batch, device: str) -> int:
    """Peak live tensor bytes over one training step (after a warm-up step)."""
    step(batch)
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        step(batch)
        sync(device)
        return torch.cuda.max_memory_allocated()
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(*step.tracked)  # parameters, gradients and AdamW state too
    with tracker:
        step(batch)
    return max(v["Total"] for v in tracker.get_tracker_snapshot("peak").values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller model, fewer steps")
    parser.add_argument("--hard-ratio", type=float, default=0.16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--lora-dropout", type=float, default=0.1, help="paper: 0.1")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (1: stable timings on a shared machine)"
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    if args.quick:
        args.seq, args.steps = min(args.seq, 256), min(args.steps, 5)
    torch.set_flush_denormal(True)

    hf = build(args)
    batch = make_batch(args, hf.config.vocab_size, args.device)
    steps = {
        "standard": setup("standard", copy.deepcopy(hf), args, args.device),
        "stage1": setup("stage1", copy.deepcopy(hf), args, args.device),
    }
    stats = steps["stage1"](batch)  # warm-up, and the measured hard ratio
    steps["standard"](batch)
    hard_ratio = stats.hard / stats.depth_count
    times = {k: [] for k in steps}
    for i in range(args.steps):
        for name in ("stage1", "standard") if i % 2 == 0 else ("standard", "stage1"):
            sync(args.device)
            start = time.perf_counter()
            steps[name](batch)
            sync(args.device)
            times[name].append(time.perf_counter() - start)
    peak = {name: peak_bytes(fn, batch, args.device) for name, fn in steps.items()}

    t_ratio = statistics.median(times["stage1"]) / statistics.median(times["standard"])
    m_ratio = peak["stage1"] / peak["standard"]
    result = {
        "device": args.device,
        "model": {
            k: getattr(hf.config, k) for k in ("hidden_size", "num_hidden_layers", "vocab_size")
        },
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "lora_dropout": args.lora_dropout,
        "seq": args.seq,
        "hard_ratio": hard_ratio,
        "step_s": {k: statistics.median(v) for k, v in times.items()},
        "peak_mb": {k: v / 2**20 for k, v in peak.items()},
        "step_ratio": t_ratio,
        "step_ratio_aim": 1 + hard_ratio + 0.1,
        "memory_ratio": m_ratio,
        "memory_ratio_aim": 1.2,
    }
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"train step: TaH stage 1 vs Standard ({args.device})")
    for col in ("", "Standard", "Stage 1", "ratio", "aim"):
        table.add_column(col)
    table.add_row(
        "step time (s, median)",
        f"{result['step_s']['standard']:.4f}",
        f"{result['step_s']['stage1']:.4f}",
        f"{t_ratio:.3f}",
        f"<= {1 + hard_ratio + 0.1:.3f}",
    )
    table.add_row(
        "peak memory (MB)",
        f"{result['peak_mb']['standard']:.1f}",
        f"{result['peak_mb']['stage1']:.1f}",
        f"{m_ratio:.3f}",
        "<= 1.200",
    )
    Console().print(table)
    print(f"hard ratio (measured on the batch): {hard_ratio:.3f}; model {result['model']}, "
          f"batch {args.batch} x {args.seq}")  # fmt: skip
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
