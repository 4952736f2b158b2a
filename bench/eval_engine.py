"""``tah eval``'s generation on the engine vs the core generate path, side by side.

    python bench/eval_engine.py [--model bundled|smollm2] [--problems 256] [--batch-size 16]
                                [--max-new-tokens 256] [--rounds 1] [--threads 1] [--device cpu] [--dtype auto]

Both generators run exactly what a ``tah eval`` worker runs (``workers.generations``: rendered
chat prompts, per-row budgets, per-sample seeds), greedy, on the same synthetic word problems
(``tah.data.synthetic``), after one untimed warm-up batch each, in the order engine, core,
core, engine, ... (``--rounds`` pairs), so load from other jobs hits both alike. It prints, per generator, generated tokens, wall time,
process CPU time and tokens/s by each clock, the ratios engine / core, and whether the answers
(tokens and iteration counts) are identical.

``--model bundled`` is the tiny TaH checkpoint shipped in the package (answers of varied
length, some tokens iterating: the core pads every batch to its slowest answer, the engine
refills a row as soon as its answer ends). ``--model smollm2`` is a plain Llama model of
SmolLM2-135M's shape with random weights and the bundled tokenizer (``--backend hf``; random
weights never emit EOS, so every answer runs its full budget and continuous batching cannot
help: this measures the engine's decode step against ``AutoModelForCausalLM.generate``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

SMOLLM2_135M = dict(
    hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192,
    rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
)  # fmt: skip


def smollm2_shaped(folder: Path) -> Path:
    """A random-weight Llama of SmolLM2-135M's shape with the bundled model's tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tah.model.loading import bundled_model_path

    bundled = bundled_model_path()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (bundled / name).is_file():
            shutil.copy(bundled / name, folder / name)
    tok = json.loads((bundled / "config.json").read_text())
    torch.manual_seed(0)
    config = LlamaConfig(
        **SMOLLM2_135M, eos_token_id=tok["eos_token_id"], pad_token_id=tok["pad_token_id"]
    )
    LlamaForCausalLM(config).eval().save_pretrained(folder)
    return folder


def work(tokenizer, n: int) -> tuple[list[str], list[dict]]:
    from tah.data.synthetic import generate_dataset
    from tah.evaluation.prompts import render_prompt
    from tah.evaluation.sampling import sample_seed

    problems = generate_dataset(n, seed=2026, difficulty=(1, 2, 3))
    items = [{"seed": sample_seed(42, "bench", p["id"], 0)} for p in problems]
    return [render_prompt(tokenizer, p["problem"]) for p in problems], items


def measure(backend, prompts, items, config) -> dict:
    from tah.evaluation.workers import generations

    gens: list = [None] * len(prompts)
    wall, cpu = time.perf_counter(), time.process_time()
    for i, gen in generations(backend, prompts, config, items):
        gens[i] = gen
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    tokens = sum(g.n_tokens for g in gens)
    answers = [(g.token_ids, g.iter_counts) for g in gens]
    return {"tokens": tokens, "wall_s": wall, "cpu_s": cpu, "answers": answers}


def run(args: argparse.Namespace) -> dict:
    from tah.evaluation.backends import BackendOptions, make_backend
    from tah.evaluation.eval_config import EvalConfig
    from tah.evaluation.sampling import paper_sampling
    from tah.model.loading import bundled_model_path

    torch.set_num_threads(args.threads)
    tmp = None
    if args.model == "bundled":
        path, kind = str(bundled_model_path()), "tah"
    else:
        tmp = tempfile.mkdtemp(prefix="tah-bench-")
        path, kind = str(smollm2_shaped(Path(tmp))), "hf"
    try:
        backends = {
            g: make_backend(kind, path, BackendOptions(device=args.device, extra={"generator": g}))
            for g in ("engine", "core")
        }
        prompts, items = work(backends["core"].tokenizer, args.problems)
        sampling = paper_sampling(temperature=0, max_tokens=args.max_new_tokens)
        config = EvalConfig(
            model=path, datasets=["bench"], output="", batch_size=args.batch_size,
            sampling=sampling,
        )  # fmt: skip
        warm = slice(0, min(args.batch_size, len(prompts)))
        for g in ("engine", "core"):  # first calls allocate and initialise: not timed
            measure(backends[g], prompts[warm], items[warm], config)
        runs: dict[str, list[dict]] = {"engine": [], "core": []}
        for r in range(args.rounds):
            order = ("engine", "core") if r % 2 == 0 else ("core", "engine")
            for g in order:
                runs[g].append(measure(backends[g], prompts, items, config))
                m = runs[g][-1]
                print(
                    f"  round {r + 1} {g:6s}: {m['tokens']} tokens, wall {m['wall_s']:.1f} s, "
                    f"CPU {m['cpu_s']:.1f} s",
                    flush=True,
                )
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    out: dict = {"config": vars(args)}
    for g, ms in runs.items():
        tokens = sum(m["tokens"] for m in ms)
        wall, cpu = sum(m["wall_s"] for m in ms), sum(m["cpu_s"] for m in ms)
        out[g] = {
            "tokens": tokens, "wall_s": wall, "cpu_s": cpu,
            "tok_s_wall": tokens / wall, "tok_s_cpu": tokens / cpu,
        }  # fmt: skip
    out["ratio_wall"] = out["engine"]["tok_s_wall"] / out["core"]["tok_s_wall"]
    out["ratio_cpu"] = out["engine"]["tok_s_cpu"] / out["core"]["tok_s_cpu"]
    out["identical"] = all(
        e["answers"] == c["answers"] for e, c in zip(runs["engine"], runs["core"])
    )
    hists = [summary["hist"] for _, summary in runs["engine"][0]["answers"]]
    deep = sum(n for h in hists for depth, n in h.items() if int(depth) > 1)
    out["iter_share"] = deep / max(1, sum(n for h in hists for n in h.values()))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("bundled", "smollm2"), default="bundled")
    parser.add_argument("--problems", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=1, help="engine/core pairs, alternating")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA), float32, bfloat16")
    parser.add_argument("--out", default=None, help="also write the numbers as JSON here")
    args = parser.parse_args(argv)
    res = run(args)
    print(
        f"{args.model}: {args.problems} problems, batch {args.batch_size}, greedy, up to "
        f"{args.max_new_tokens} new tokens, {args.threads} thread(s); "
        f"{res['iter_share']:.1%} of generated tokens iterate"
    )
    print("| generator | tokens | wall s | CPU s | tok/s (wall) | tok/s (CPU) |")
    print("|---|---|---|---|---|---|")
    for g in ("engine", "core"):
        r = res[g]
        print(
            f"| {g} | {r['tokens']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
            f"{r['tok_s_wall']:.0f} | {r['tok_s_cpu']:.0f} |"
        )
    print(
        f"engine / core: {res['ratio_wall']:.2f}x (wall), {res['ratio_cpu']:.2f}x (CPU); "
        f"identical answers: {res['identical']}"
    )
    if args.out:
        from tah.io import write_json

        write_json(args.out, res)
    return 0 if res["identical"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
