"""Core model benchmark: TaH forward and decode against the plain HF model, side by side.

    python bench/core.py [--quick]

Prints, for one random-weight Qwen3-shaped model:
* prefill (a full forward over B x T tokens): time and peak memory of TaH with ~6 % and 100 %
  of tokens iterating, as ratios to the plain HF forward;
* decode tokens/s at batch 1 and 16: HF ``generate`` (greedy) against
  ``TaHForCausalLM.generate`` in Standard mode and with an MLP decider calibrated to iterate
  ~6 % of tokens, each system on its own model instance; min / median / max over repeats,
  ratios of medians.
Times are interleaved in one process (the machines are noisy): prefill best-of-N, decode
min / median / max.
Peak memory is the peak of live tensors beyond the model's weights (torch's MemTracker). Target: cost ≈ (1 + share) × plain.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def build(quick: bool):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    size = (
        dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, vocab_size=2048)
        if quick
        else dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, vocab_size=8192)
    )
    config = Qwen3Config(
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64 if not quick else 16,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        **size,
    )
    return Qwen3ForCausalLM(config).eval()


def tah_model(hf, decider: str, threshold: float = 0.5):
    from tah import TaHConfig, TaHForCausalLM

    config = TaHConfig(
        max_iter=2, decider=decider, threshold=threshold, decider_hidden_dims=[256] * 2
    )
    return TaHForCausalLM.from_base(hf, config).eval()


def activation_peak_mb(run, module) -> float:
    """Peak bytes of live tensors during ``run`` beyond the module's own weights (MemTracker)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    weights = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    tracker = MemTracker()
    tracker.track_external(module)
    with torch.no_grad(), tracker:
        run()
    peak = max(v["Total"] for v in tracker.get_tracker_snapshot("peak").values())
    return (peak - weights) / 2**20


def prefill_measure(quick: bool, rounds: int = 6) -> tuple[dict[float, float], dict[float, float]]:
    """Best-of-N times (variants interleaved so load drifts hit them alike) and memory peaks."""
    hf = build(quick)
    batch, length = (2, 128) if quick else (2, 256)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, hf.config.vocab_size, (batch, length), generator=gen)
    model = tah_model(build(quick), "label")  # its own copy: wrapping modifies the HF model
    runs = {0.0: lambda: hf(ids)}
    for share in (0.06, 1.0):
        labels = 1 + (torch.rand(ids.shape, generator=gen) < share).long()
        runs[share] = lambda labels=labels: model(ids, iter_labels=labels)
    best = dict.fromkeys(runs, float("inf"))
    with torch.no_grad():
        for _ in range(rounds):
            for share, run in runs.items():
                start = time.perf_counter()
                run()
                best[share] = min(best[share], time.perf_counter() - start)
    memory = {
        share: activation_peak_mb(run, hf if share == 0.0 else model) for share, run in runs.items()
    }
    return best, memory


def calibrate_threshold(model, ids, share: float) -> float:
    with torch.no_grad():
        out = model(ids, max_depth=1)
    probs = torch.sigmoid(out.decider_logits[..., 0]).flatten()
    return float(torch.quantile(probs, 1 - share))


def decode_models(quick: bool):
    """Plain HF, TaH Standard and TaH with an MLP decider: three separate model instances."""
    return build(quick), tah_model(build(quick), "never"), tah_model(build(quick), "mlp")


def decode(quick: bool, repeats: int = 3) -> list[dict]:
    """Decode tokens/s per batch size: min / median / max over interleaved repeats.

    Each system has its own model instance (``from_base`` modifies the HF model it wraps, so
    wrapping the baseline would give "plain HF" LoRA layers), built once and reused across
    batch sizes; every repeat runs all three systems back to back, so load drifts hit them
    alike.
    """
    hf, standard, tah = decode_models(quick)
    new_tokens = 16 if quick else 64
    rows = []
    for batch in (1, 16):
        ids = torch.randint(
            0, hf.config.vocab_size, (batch, 32), generator=torch.Generator().manual_seed(1)
        )
        threshold = calibrate_threshold(tah, ids, 0.06)
        share = 0.0

        def run_hf(ids=ids):
            hf.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

        def run_standard(ids=ids):
            standard.generate(ids, max_new_tokens=new_tokens, eos_token_id=[])

        def run_tah(ids=ids, threshold=threshold):
            nonlocal share
            res = tah.generate(ids, max_new_tokens=new_tokens, eos_token_id=[], threshold=threshold)
            share = res.stats["iter_share"]

        runs = {"hf": run_hf, "standard": run_standard, "tah": run_tah}
        times: dict[str, list[float]] = {name: [] for name in runs}
        with torch.no_grad():
            for run in runs.values():  # warm-up
                run()
            for _ in range(repeats):
                for name, run in runs.items():
                    start = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - start)
        tokens = batch * new_tokens
        row = {"batch": batch, "iter_share": share}
        for name, ts in times.items():
            ts = sorted(ts)
            row[name] = [tokens / ts[-1], tokens / statistics.median(ts), tokens / ts[0]]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller model, for a fast check")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved decode repeats")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is steadier on a busy machine)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    from rich.console import Console
    from rich.table import Table

    times, memory = prefill_measure(args.quick)
    plain_m = memory[0.0]
    table = Table(title="prefill: TaH / plain HF (same model, same tokens)")
    for col in (
        "iterating",
        "time ratio",
        "target ≈ 1+share",
        "activation-peak ratio",
        "plain time",
        "plain act. peak",
    ):
        table.add_column(col)
    for share in (0.06, 1.0):
        m = memory[share]
        table.add_row(
            f"{share:.0%}",
            f"{times[share] / times[0.0]:.3f}",
            f"{1 + share:.2f}",
            f"{m / max(plain_m, 1e-6):.2f}",
            f"{times[0.0] * 1000:.0f} ms",
            f"{plain_m:.0f} MB",
        )
    Console().print(table)
    table = Table(
        title=f"decode tokens/s (greedy), min / median / max of {args.repeats} interleaved runs"
    )
    for col in ("batch", "HF generate", "TaH standard", "ratio", "TaH mlp", "iterating", "ratio"):
        table.add_column(col)

    def spread(v):
        return " / ".join(f"{x:.0f}" for x in v)

    for row in decode(args.quick, args.repeats):
        hf_med = row["hf"][1]
        table.add_row(
            str(row["batch"]),
            spread(row["hf"]),
            spread(row["standard"]),
            f"{row['standard'][1] / hf_med:.2f}",
            spread(row["tah"]),
            f"{row['iter_share']:.1%}",
            f"{row['tah'][1] / hf_med:.2f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
