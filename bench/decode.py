"""Decode throughput of the TaH engine, side by side with the reference loops.

    python bench/decode.py [--size quick|small|medium|1.7b] [--batches 1 8 16 32] [--threads 1]
                           [--mode fixed|continuous] [--cpu-time] [--systems ...] [--out F]
                           [--device cpu|cuda] [--dtype float32|bfloat16] [--compile MODE]

On a GPU: ``python bench/decode.py --device cuda --dtype bfloat16 --size 1.7b`` (a random-weight
model of Qwen3-1.7B's shape; timings synchronise the device).

For one random-weight Qwen3-shaped model (``small`` is the shape of ``bench/core.py``) it
measures, at each batch size B, tokens/s of

* ``hf``          Hugging Face ``generate`` of the plain model,
* ``core``        ``TaHForCausalLM.generate`` with an MLP decider,
* ``engine``      the engine serving the plain model,
* ``engine_tah``  the engine serving the TaH model (speculative depth 1 per ``--speculate``),
* ``engine_tah_nospec``  the same without speculation,

all sampling (temperature 1, no top-k/top-p, seeded) the same number of new tokens after the
same random prompts, EOS disabled, and prints the ratios. Sampling instead of greedy keeps the
random model from looping on one token. The decider threshold is calibrated so that about
``--iter-rate`` of generated tokens iterate; the rate each run measured is printed beside it.

``--mode fixed`` gives every system the same B prompts at once. ``--mode continuous`` gives
the engines ``--rounds`` x B prompts with B rows, so new requests take rows as others finish
(what a server sees); the reference loops run the same prompts as consecutive batches of B.
Times are wall-clock; ``--cpu-time`` uses process CPU time instead, which is steadier on a
machine shared with other jobs (use it with ``--threads 1``).

Targets (issues #6, #13, #24): engine_tah >= 0.90 x engine at ~6 % iterating; engine_tah >= 5 x
core at batch 16; at most 0.6 extra steps per iterating token at batch 1 (continuous mode).
``steps engine/tah`` is the ratio of the engines' step counts: without speculation a token that
thinks again costs its row one more step, so where a step costs the same whatever its rows
(decode on a GPU, bound by reading the weights) this is about the best tah/engine can reach in
that run. ``extra steps/iter`` is (TaH engine steps - plain engine steps) / iterating tokens,
and ``accepted`` the share of speculative drafts kept (``tah.engine.speculate``). The bench
samples, so ``--speculate all`` (the default here) is what speculates; the engine's own
default, ``greedy``, leaves sampled requests alone.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

SIZES = {
    "quick": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, vocab_size=2048,
                  num_attention_heads=8, num_key_value_heads=4, head_dim=16),
    "small": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, vocab_size=8192,
                  num_attention_heads=8, num_key_value_heads=4, head_dim=64),
    "medium": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=12,
                   vocab_size=16384, num_attention_heads=16, num_key_value_heads=8, head_dim=64),
    # Qwen3-1.7B's shape (for the GPU machine; about 2 B parameters with the untied vocab)
    "1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                 vocab_size=151936, num_attention_heads=16, num_key_value_heads=8, head_dim=128),
}  # fmt: skip


def build_models(size: str = "small", seed: int = 0, device: str = "cpu", dtype=torch.float32):
    """A random Qwen3-shaped model and its TaH version (MLP decider, LoRA r=16).

    The decider reads hidden-state index 0 only (the token's input embedding, one of the
    0.6B recipe's layers) and has ~1 % of the model's parameters, as in the paper. With a
    random model, deeper layers carry a large per-prompt component, so a decider reading them
    would make whole requests iterate or not; reading the embedding keeps the choice per token,
    as on real text.
    """
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from tah import TaHConfig, TaHForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(max_position_embeddings=4096, tie_word_embeddings=True, **SIZES[size])
    hf = Qwen3ForCausalLM(config).eval()
    dims = [32] * 2 if size == "quick" else [64] * 2
    tah_config = TaHConfig(max_iter=2, decider="mlp", decider_hidden_dims=dims, decider_layers=[0])
    tah = TaHForCausalLM.from_base(hf, tah_config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in tah.lora_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    tah.to(device=device, dtype=dtype)  # moves the wrapped HF model too
    return hf, tah


def calibrate(tah, engine, prompts: list[list[int]], new_tokens: int, rate: float) -> float:
    """Threshold at which about ``rate`` of generated tokens continue after depth 1.

    The decision after depth 1 depends only on the token sequence, so the depth-1 decider
    probabilities over sequences the engine generated give the quantile; two rounds, since
    the threshold changes the sequences a little.
    """
    from tah.model.sampling import SamplingParams

    params = [
        SamplingParams(max_tokens=new_tokens, temperature=1.0, seed=100 + i)
        for i in range(len(prompts))
    ]
    threshold = 1.0  # first round: sequences of the plain model
    for _ in range(2):
        engine.threshold = threshold
        outs = engine.generate(prompts, params)
        probs = []
        with torch.no_grad():
            for p, o in zip(prompts, outs):
                ids = torch.tensor([p + o.token_ids], device=tah.device)
                res = tah(ids, max_depth=1)
                probs.append(torch.sigmoid(res.decider_logits[0, len(p) - 1 : -1, 0].float()))
        threshold = float(torch.quantile(torch.cat(probs), 1 - rate))
    return threshold


class Clock:
    def __init__(self, cpu: bool, device: str = "cpu") -> None:
        self.cpu = cpu
        self.cuda = device.startswith("cuda")

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()  # kernels run asynchronously: time what has finished
        return time.process_time() if self.cpu else time.perf_counter()


def best_time(repeats: int, clock: Clock, fn, *args):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = clock.now()
        result = fn(*args)
        best = min(best, clock.now() - start)
    return best, result


SYSTEMS = ("hf", "core", "engine", "engine_tah", "engine_tah_nospec")


def run(args: argparse.Namespace) -> dict:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from tah.engine.engine import Engine
    from tah.model.sampling import SamplingParams

    console = Console(width=150)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    dtype = getattr(torch, args.dtype)
    hf, tah = build_models(args.size, device=args.device, dtype=dtype)
    vocab = hf.config.vocab_size
    max_batch = max(args.batches)
    max_len = args.prompt_len + args.new_tokens
    common = dict(max_batch=max_batch, max_len=max_len, eos_token_ids=[], compile_mode=args.compile)
    plain = Engine.from_hf_model(hf, **common)
    engine = Engine.from_tah_model(tah, **common, speculate_depth1=args.speculate)
    nospec = Engine.from_tah_model(tah, **common, speculate_depth1="off")
    gen = torch.Generator().manual_seed(7)

    def prompts_for(n: int) -> list[list[int]]:
        return torch.randint(3, vocab, (n, args.prompt_len), generator=gen).tolist()

    threshold = calibrate(tah, engine, prompts_for(8), args.new_tokens, args.iter_rate)
    tah.set_threshold(threshold)
    engine.threshold = nospec.threshold = threshold
    clock = Clock(args.cpu_time, args.device)
    rounds = args.rounds if args.mode == "continuous" else 1

    def hf_run(batches):
        for ids in batches:
            hf.generate(
                ids,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                do_sample=True,
                top_k=0,
                top_p=1.0,
                temperature=1.0,
                pad_token_id=0,
            )

    def core_run(batches):
        counts = []
        for ids in batches:
            out = tah.generate(
                ids, max_new_tokens=args.new_tokens, do_sample=True, seed=1, eos_token_id=[]
            )
            counts.append(out.iter_counts.flatten().tolist())
        return [c for cs in counts for c in cs]

    def engine_run(eng, prompts, slots):
        """Generate with at most ``slots`` requests in flight (the batch size under test)."""
        params = [
            # seed 1 + i: at batch 1 the request draws exactly what the core's seed-1 run draws
            SamplingParams(max_tokens=args.new_tokens, temperature=1.0, seed=1 + i)
            for i in range(len(prompts))
        ]
        eng.max_active = slots
        before = dict(eng.stats)
        try:
            outs = eng.generate(prompts, params)
        finally:
            eng.max_active = None
        steps[id(eng)] = {k: eng.stats[k] - before[k] for k in ("steps", "drafts", "accepted")}
        return [c for o in outs for c in o.iter_counts]

    steps: dict[int, dict[str, int]] = {}

    rows = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("measuring", total=len(args.batches) * len(args.systems))
        for b in args.batches:
            prompts = prompts_for(b * rounds)
            batches = [
                torch.tensor(prompts[i : i + b], device=args.device)
                for i in range(0, len(prompts), b)
            ]
            for eng in (plain, engine, nospec):  # warm-up (allocations, first-call costs)
                eng.generate(prompts[:b], SamplingParams(max_tokens=4))
            n_tokens = len(prompts) * args.new_tokens
            runs = {
                "hf": (hf_run, batches),
                "core": (core_run, batches),
                "engine": (engine_run, plain, prompts, b),
                "engine_tah": (engine_run, engine, prompts, b),
                "engine_tah_nospec": (engine_run, nospec, prompts, b),
            }
            engines = {"engine": plain, "engine_tah": engine, "engine_tah_nospec": nospec}
            row: dict = {"batch": b, "tokens": n_tokens}
            for name in args.systems:
                fn, *fn_args = runs[name]
                seconds, counts = best_time(args.repeats, clock, fn, *fn_args)
                row[f"{name}_tok_s"] = n_tokens / seconds
                if name in ("core", "engine_tah", "engine_tah_nospec"):
                    row[f"iter_share_{name}"] = sum(c > 1 for c in counts) / len(counts)
                    row[f"iterating_{name}"] = sum(c > 1 for c in counts)
                if name in engines:
                    ran = steps[id(engines[name])]
                    row[f"{name}_steps"] = ran["steps"]
                    if ran["drafts"]:
                        row[f"{name}_accepted"] = ran["accepted"] / ran["drafts"]
                progress.advance(task)
            for name in ("engine_tah", "engine_tah_nospec"):
                if "engine_steps" in row and f"{name}_steps" in row:
                    # without speculation a token that thinks again costs its row a step: the
                    # step-count ratio bounds tah/engine where a step costs the same whatever
                    # its rows (memory-bound GPUs)
                    suffix = "" if name == "engine_tah" else "_nospec"
                    extra = row[f"{name}_steps"] - row["engine_steps"]
                    row[f"steps_ratio{suffix}"] = row["engine_steps"] / row[f"{name}_steps"]
                    iterating = row[f"iterating_{name}"]
                    row[f"extra_steps_per_iter{suffix}"] = extra / iterating if iterating else 0.0
            for key, num, den in (
                ("engine_vs_hf", "engine", "hf"),
                ("tah_vs_engine", "engine_tah", "engine"),
                ("tah_vs_core", "engine_tah", "core"),
                ("spec_vs_nospec", "engine_tah", "engine_tah_nospec"),
            ):
                if f"{num}_tok_s" in row and f"{den}_tok_s" in row:
                    row[key] = row[f"{num}_tok_s"] / row[f"{den}_tok_s"]
            rows.append(row)

    params = sum(p.numel() for p in hf.parameters())
    decider = sum(p.numel() for p in tah.decider_parameters())
    table = Table(
        title=f"decode tokens/s: {args.size} model ({params / 1e6:.1f} M parameters, decider "
        f"{decider / 1e6:.2f} M), {args.mode} batching, {'CPU' if args.cpu_time else 'wall'} "
        f"time, {args.device} {args.dtype}, {torch.get_num_threads()} thread(s), "
        f"threshold {threshold:.4f}"
    )
    columns = [("batch", "batch", "{:d}")]
    columns += [(f"{s}_tok_s", s, "{:.0f}") for s in SYSTEMS]
    columns += [
        ("engine_vs_hf", "engine/hf", "{:.2f}"),
        ("tah_vs_engine", "tah/engine", "{:.2f}"),
        ("tah_vs_core", "tah/core", "{:.2f}"),
        ("spec_vs_nospec", "tah spec/nospec", "{:.2f}"),
        ("steps_ratio", "steps engine/tah", "{:.2f}"),
        ("steps_ratio_nospec", "steps engine/nospec", "{:.2f}"),
        ("extra_steps_per_iter", "extra steps/iter", "{:.2f}"),
        ("extra_steps_per_iter_nospec", "extra/iter nospec", "{:.2f}"),
        ("engine_tah_accepted", "accepted", "{:.1%}"),
        ("iter_share_engine_tah", "iter% tah", "{:.1%}"),
        ("iter_share_core", "iter% core", "{:.1%}"),
    ]
    columns = [c for c in columns if any(c[0] in r for r in rows)]
    for _, title, _ in columns:
        table.add_column(title, justify="right")
    for r in rows:
        table.add_row(*(fmt.format(r[key]) if key in r else "-" for key, _, fmt in columns))
    console.print(table)
    console.print(
        f"prompt {args.prompt_len} tokens, {args.new_tokens} new tokens per request, "
        f"{rounds} round(s) of B requests, best of {args.repeats}"
    )
    result = {"config": vars(args), "threshold": threshold, "rows": rows}
    if args.out:
        from tah.io import write_json

        write_json(args.out, result)
    return result


def main(argv: list[str] | None = None) -> int:
    from tah.engine import COMPILE_MODES
    from tah.engine.options import SPECULATE_MODES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small", help="model preset")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16, 32])
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--iter-rate", type=float, default=0.06)
    parser.add_argument("--mode", choices=("fixed", "continuous"), default="fixed")
    parser.add_argument(
        "--rounds", type=int, default=3, help="continuous mode: B x rounds requests"
    )
    parser.add_argument("--repeats", type=int, default=2, help="best of N runs")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--cpu-time", action="store_true", help="time by process CPU time")
    parser.add_argument("--out", default=None, help="write the numbers as JSON here")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default=None,
        help="torch.compile the engines' layer stacks (warm-up runs absorb the compilation)",
    )
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument(
        "--speculate",
        choices=SPECULATE_MODES,
        default="all",
        help="engine_tah's speculative depth 1 (the bench samples: 'all' speculates)",
    )
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is available here")
    if args.cpu_time and args.device != "cpu":
        parser.error("--cpu-time measures host CPU time; use it with --device cpu")
    result = run(args)
    if not args.out:
        print(json.dumps(result["rows"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
