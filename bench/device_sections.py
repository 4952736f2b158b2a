"""The sections of the device run: what each one measures and the tolerances it checks against.

This module holds the work of ``device_run.py`` section by section: the shared state a section
gets (:class:`Run`: the arguments, the device, the time budget and a synchronised timer), the
correctness sections (versions; engine vs core generate in fp32; bf16 vs fp32 forward,
decisions and one training step of each stage, with their tolerances) and the speed sections
(decode throughput with achieved memory bandwidth, CUDA graphs, ``torch.compile``, ``tah
eval`` on the engine vs the core, speculative depth 1), each a function from the run to a
JSON-ready dict, listed in order in :data:`SECTIONS` and :data:`RUNNERS`. The bf16 training
check lives in ``device_bf16.py``. Running them within the budget, and the report, live in ``device_run.py``.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from device_bf16 import train_bf16

LOGIT_TOL = 0.05  # bf16 vs fp32, depth-1 logits: max |diff| / max |fp32 logit|
DEEP_MEAN_TOL = 0.1  # bf16 vs fp32, TaH logits (some tokens iterated): mean |diff| / std
TAU_MARGIN = 0.02  # decisions may differ only where |p_fp32 - tau| < this
PEAK_BW = 4.8e12  # H200 HBM3e bytes/s

SECTIONS = (
    "env", "correct_fp32", "correct_bf16", "train_bf16", "throughput", "graphs", "compile",
    "eval_engine", "speculation",
)  # fmt: skip
MIN_SECONDS = {"throughput": 60, "graphs": 40, "compile": 90, "eval_engine": 40, "speculation": 20}
# The engine switch the speculation section looks for (issue 24 item 3): an Engine keyword.
SPECULATION_SWITCH = "speculate_depth1"


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = args.device
        self.cuda = args.device.startswith("cuda")
        self.quick = args.quick
        self.start = time.perf_counter()
        self.results: dict = {"config": vars(args), "sections": {}}

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.start)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def timed(self, fn, *args):
        self.sync()
        t = time.perf_counter()
        out = fn(*args)
        self.sync()
        return time.perf_counter() - t, out


# ---------------------------------------------------------------------------- sections
def env(run: Run) -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("transformers", "peft", "accelerate", "safetensors", "tokenizers", "rich"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    out["missing"] = [k for k, v in out.items() if v is None]
    out["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
        out["cuda"] = torch.version.cuda
        out["bf16"] = torch.cuda.is_bf16_supported()
    return out


def _tiny_tah(device: str, dtype=torch.float32, max_iter: int = 2):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from tah import TaHConfig, TaHForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
    )  # fmt: skip
    tah_config = TaHConfig(
        max_iter=max_iter, decider="mlp", topk=16, decider_topk=16, decider_layers=[0, 2, 3],
        decider_hidden_dims=[32],
    )  # fmt: skip
    model = TaHForCausalLM.from_base(Qwen3ForCausalLM(config), tah_config).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.lora_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    model.to(device=device, dtype=dtype)
    ids = torch.randint(3, 256, (1, 48), generator=gen).to(device)
    with torch.no_grad():
        probs = torch.sigmoid(model(ids, max_depth=1).decider_logits[0, :, 0].float())
    model.set_threshold(float(probs.median()))  # about half the tokens iterate
    return model


def correct_fp32(run: Run) -> dict:
    from tah.engine.engine import Engine
    from tah.engine.graphs import enable_decode_graphs
    from tah.engine.sampling import SamplingParams

    model = _tiny_tah(run.device)
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 256, (n,), generator=gen).tolist() for n in (5, 11, 7, 16)]
    new = 16
    ref = []
    for p in prompts:
        out = model.generate(
            torch.tensor([p], device=run.device), max_new_tokens=new, eos_token_id=[]
        )
        ref.append((out.sequences[0, len(p) :].tolist(), out.iter_counts[0].tolist()))
    out: dict = {"prompts": len(prompts), "new_tokens": new}
    for name in ("eager", "graphs"):
        engine = Engine.from_tah_model(model, max_batch=4, max_len=64, eos_token_ids=[])
        graphs = enable_decode_graphs(engine) if name == "graphs" else None
        got = [
            (o.token_ids, o.iter_counts)
            for o in engine.generate(prompts, SamplingParams(max_tokens=new))
        ]
        out[f"{name}_identical"] = got == ref
        out[f"{name}_mismatched_rows"] = sum(g != r for g, r in zip(got, ref))
        if graphs is not None:
            out["graph_stats"] = dict(graphs.stats)
    counts = [c for _, cs in ref for c in cs]
    out["iter_share"] = sum(c > 1 for c in counts) / len(counts)
    out["ok"] = out["eager_identical"] and out["graphs_identical"]
    return out


def correct_bf16(run: Run) -> dict:
    model = _tiny_tah(run.device)
    tau = float(model.decider.threshold)
    gen = torch.Generator().manual_seed(4)
    ids = torch.randint(3, 256, (4, 40), generator=gen).to(run.device)
    labels = 1 + (torch.rand(ids.shape, generator=gen) < 0.3).long().to(run.device)
    with torch.no_grad():
        ref = model(ids, iter_labels=labels)
        ref_dec = model(ids, max_depth=1)
        model.to(torch.bfloat16)
        low = model(ids, iter_labels=labels)
        low_dec = model(ids, max_depth=1)
    ref1, low1 = ref_dec.logits, low_dec.logits.float()
    logit_err = (low1 - ref1).abs().max().item() / ref1.abs().max().item()
    # Iterated tokens mix the top-k embeddings: on a random model's near-flat logits bf16
    # rounding flips near-ties of that top-k, so single tokens can move a lot; the mean is
    # checked, the max reported.
    diff2 = (low.logits.float() - ref.logits).abs()
    deep_mean_err = diff2.mean().item() / ref.logits.std().item()
    deep_max_err = diff2.max().item() / ref.logits.abs().max().item()
    p_ref = torch.sigmoid(ref_dec.decider_logits[..., 0].float())
    p_low = torch.sigmoid(low_dec.decider_logits[..., 0].float())
    differ = (p_ref > tau) != (p_low > tau)
    near = (p_ref - tau).abs() < TAU_MARGIN
    return {
        "logit_rel_err": logit_err,
        "logit_tol": LOGIT_TOL,
        "deep_logit_mean_err": deep_mean_err,
        "deep_logit_max_err": deep_max_err,
        "deep_mean_tol": DEEP_MEAN_TOL,
        "decisions": int(differ.numel()),
        "decisions_differ": int(differ.sum()),
        "decisions_differ_outside_margin": int((differ & ~near).sum()),
        "tau": tau,
        "tau_margin": TAU_MARGIN,
        "ok": logit_err <= LOGIT_TOL
        and deep_mean_err <= DEEP_MEAN_TOL
        and not bool((differ & ~near).any()),
    }


# ---------------------------------------------------------------------------- speed
class Models:
    """The throughput model pair (HF and TaH), its engines and prompts, built once."""

    def __init__(self, run: Run) -> None:
        from decode import build_models, calibrate
        from tah.engine.engine import Engine

        a = run.args
        self.size = "quick" if run.quick else "1.7b"
        self.dtype = torch.bfloat16 if run.cuda else torch.float32
        self.batches = [1, 4] if run.quick else [1, 16, 64]
        self.prompt_len, self.new_tokens = (8, 8) if run.quick else (32, a.new_tokens)
        self.hf, self.tah = build_models(self.size, device=run.device, dtype=self.dtype)
        self.vocab = self.hf.config.vocab_size
        gen = torch.Generator().manual_seed(7)
        self.prompts = torch.randint(
            3, self.vocab, (max(self.batches), self.prompt_len), generator=gen
        ).tolist()
        max_len = self.prompt_len + self.new_tokens
        self.common = dict(max_batch=max(self.batches), max_len=max_len, eos_token_ids=[])
        self.make_engine = lambda tah=True, **kw: (
            Engine.from_tah_model(self.tah, **self.common, **kw)
            if tah
            else Engine.from_hf_model(self.hf, **self.common, **kw)
        )
        calib = self.make_engine()
        self.threshold = calibrate(self.tah, calib, self.prompts[:8], self.new_tokens, 0.06)
        self.tah.set_threshold(self.threshold)
        del calib
        self.weight_bytes = sum(p.numel() * p.element_size() for p in self.hf.parameters())
        cfg = self.hf.config
        self.kv_bytes_per_pos = (
            2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim
            * torch.finfo(self.dtype).bits // 8
        )  # fmt: skip

    def params(self, n: int):
        from tah.engine.sampling import SamplingParams

        return [
            SamplingParams(max_tokens=self.new_tokens, temperature=1.0, seed=1 + i)
            for i in range(n)
        ]

    def engine_run(self, engine, b: int):
        before = engine.stats["steps"]
        outs = engine.generate(self.prompts[:b], self.params(b))
        counts = [c for o in outs for c in o.iter_counts]
        return engine.stats["steps"] - before, counts

    def bandwidth(self, steps: int, b: int, seconds: float) -> float:
        """Bytes read per second: the weights once per step, each row's cache per token."""
        mean_len = self.prompt_len + self.new_tokens / 2
        kv = b * self.new_tokens * mean_len * self.kv_bytes_per_pos
        return (steps * self.weight_bytes + kv) / seconds


def _models(run: Run) -> Models:
    if "models" not in run.__dict__:
        run.models = Models(run)
    return run.models


def throughput(run: Run) -> dict:
    m = _models(run)
    plain, tah_engine = m.make_engine(tah=False), m.make_engine()
    rows = []
    for b in m.batches:
        ids = torch.tensor(m.prompts[:b], device=run.device)
        tokens = b * m.new_tokens
        row: dict = {"batch": b, "tokens": tokens}
        for eng in (plain, tah_engine):  # warm-up
            m.engine_run(eng, b)
        for name, eng in (("engine", plain), ("engine_tah", tah_engine)):
            best = None
            for _ in range(1 if run.quick else 2):
                sec, (steps, counts) = run.timed(m.engine_run, eng, b)
                if best is None or sec < best[0]:
                    best = (sec, steps, counts)
            sec, steps, counts = best
            row[f"{name}_tok_s"] = tokens / sec
            row[f"{name}_steps"] = steps
            row[f"{name}_bw_frac"] = m.bandwidth(steps, b, sec) / PEAK_BW
            if name == "engine_tah":
                row["iter_share"] = sum(c > 1 for c in counts) / len(counts)

        def hf_run(ids=ids):
            with torch.no_grad():
                m.hf.generate(
                    ids, max_new_tokens=m.new_tokens, min_new_tokens=m.new_tokens,
                    do_sample=True, top_k=0, top_p=1.0, temperature=1.0, pad_token_id=0,
                )  # fmt: skip

        def core_run(ids=ids):
            m.tah.generate(
                ids, max_new_tokens=m.new_tokens, do_sample=True, seed=1, eos_token_id=[]
            )

        for name, fn in (("hf", hf_run), ("core", core_run)):
            fn() if b == m.batches[0] else None  # warm-up once
            row[f"{name}_tok_s"] = tokens / run.timed(fn)[0]
        row["tah_vs_engine"] = row["engine_tah_tok_s"] / row["engine_tok_s"]
        row["tah_vs_core"] = row["engine_tah_tok_s"] / row["core_tok_s"]
        row["engine_vs_hf"] = row["engine_tok_s"] / row["hf_tok_s"]
        rows.append(row)
    params = sum(p.numel() for p in m.hf.parameters())
    return {
        "model": m.size, "parameters": params, "dtype": str(m.dtype), "threshold": m.threshold,
        "prompt_len": m.prompt_len, "new_tokens": m.new_tokens, "peak_bw": PEAK_BW, "rows": rows,
    }  # fmt: skip


def graphs(run: Run) -> dict:
    from tah.engine.graphs import enable_decode_graphs

    m = _models(run)
    rows = []
    for tah in (False, True):
        eager = m.make_engine(tah=tah)
        padded = m.make_engine(tah=tah)
        g = enable_decode_graphs(padded)
        for b in m.batches:
            m.engine_run(eager, b)
            m.engine_run(padded, b)  # warm-up: captures this batch's buckets
            row = {"engine": "tah" if tah else "plain", "batch": b}
            for name, eng in (("eager", eager), ("graphs", padded)):
                sec, _ = run.timed(m.engine_run, eng, b)
                row[f"{name}_tok_s"] = b * m.new_tokens / sec
            row["gain"] = row["graphs_tok_s"] / row["eager_tok_s"]
            rows.append(row)
        rows[-1]["graph_stats"] = dict(g.stats)
        del eager, padded
    return {"cuda_graphs": run.cuda, "rows": rows}


def compile_modes(run: Run) -> dict:
    m = _models(run)
    b = m.batches[-2] if len(m.batches) > 2 else m.batches[-1]
    modes = ["default"] if run.quick else ["default", "reduce-overhead"]
    out: dict = {"batch": b, "rows": []}
    eager = m.make_engine()
    m.engine_run(eager, b)
    base, _ = run.timed(m.engine_run, eager, b)
    for mode in modes:
        if run.left() < (20 if run.quick else 90):
            out["rows"].append({"mode": mode, "skipped": "time budget"})
            continue
        eng = m.make_engine(compile_mode=mode)
        warm, _ = run.timed(m.engine_run, eng, b)  # compiles
        sec, _ = run.timed(m.engine_run, eng, b)
        out["rows"].append(
            {"mode": mode, "compile_s": warm, "tok_s": b * m.new_tokens / sec,
             "vs_eager": base / sec}
        )  # fmt: skip
    out["eager_tok_s"] = b * m.new_tokens / base
    return out


def eval_engine(run: Run) -> dict:
    """``tah eval``'s generation, engine vs core (``bench/eval_engine.py``): the bundled model
    in float32 (answers must be identical) and a SmolLM2-135M-shaped plain model in the eval
    default dtype (bf16 on CUDA: speed only, identity reported)."""
    import eval_engine as ee

    cases = [("bundled", "float32", 16 if run.quick else 256, 32 if run.quick else 256)]
    if not run.quick:
        cases.append(("smollm2", "auto", 64, 128))
    rows = []
    for model, dtype, problems, new in cases:
        args = argparse.Namespace(
            model=model, problems=problems, batch_size=16, max_new_tokens=new, rounds=1,
            threads=torch.get_num_threads(), device=run.device, dtype=dtype, out=None,
        )  # fmt: skip
        res = ee.run(args)
        row = {"model": model, "dtype": dtype, "problems": problems, "max_new_tokens": new}
        for g in ("engine", "core"):
            row.update({f"{g}_{k}": v for k, v in res[g].items()})
        row.update(
            ratio_wall=res["ratio_wall"], identical=res["identical"], iter_share=res["iter_share"]
        )
        rows.append(row)
    return {"batch": 16, "rows": rows, "ok": rows[0]["identical"]}


def speculation(run: Run) -> dict:
    """Speculative depth 1 on vs off (TaH engine): identical greedy tokens, steps per token,
    extra steps per iterating token (batch 1), drafts accepted, tokens/s. Reports "not
    available" when the engine has no :data:`SPECULATION_SWITCH` keyword yet."""
    import inspect

    from tah.engine.engine import Engine
    from tah.engine.sampling import SamplingParams

    if SPECULATION_SWITCH not in inspect.signature(Engine.__init__).parameters:
        return {
            "status": "not available",
            "reason": f"this engine has no {SPECULATION_SWITCH!r} switch (issue 24 item 3)",
        }
    m = _models(run)
    greedy = SamplingParams(max_tokens=m.new_tokens)
    rows = []
    ok = True
    for b in m.batches:
        row: dict = {"batch": b}
        plain = m.make_engine(tah=False)
        plain.generate(m.prompts[:b], greedy)
        before = plain.stats["steps"]
        plain.generate(m.prompts[:b], greedy)
        plain_steps = plain.stats["steps"] - before
        outs = {}
        for on in (False, True):
            eng = m.make_engine(**{SPECULATION_SWITCH: on})
            eng.generate(m.prompts[:b], greedy)  # warm-up
            stats = dict(eng.stats)
            sec, out = run.timed(eng.generate, m.prompts[:b], greedy)
            d = {k: eng.stats.get(k, 0) - stats.get(k, 0) for k in eng.stats}
            counts = [c for o in out for c in o.iter_counts]
            deep = sum(c > 1 for c in counts)
            key = "on" if on else "off"
            outs[key] = [(o.token_ids, o.iter_counts) for o in out]
            row[f"{key}_tok_s"] = len(counts) / sec
            row[f"{key}_steps"] = d["steps"]
            row[f"{key}_extra_steps_per_iterating"] = (d["steps"] - plain_steps) / max(deep, 1)
            row["iterating_tokens"] = deep
            if on:
                row["drafts"], row["accepted"] = d.get("drafts", 0), d.get("accepted", 0)
        row["identical"] = outs["on"] == outs["off"]
        row["speedup"] = row["on_tok_s"] / row["off_tok_s"]
        ok = ok and row["identical"]
        rows.append(row)
    return {"switch": SPECULATION_SWITCH, "threshold": m.threshold, "rows": rows, "ok": ok}


RUNNERS = {
    "env": env, "correct_fp32": correct_fp32, "correct_bf16": correct_bf16,
    "train_bf16": train_bf16, "throughput": throughput, "graphs": graphs,
    "compile": compile_modes, "eval_engine": eval_engine, "speculation": speculation,
}  # fmt: skip
