"""Feasibility probe (Standard only): is the tiny word-problem task depth-bound once training
has plateaued? A plain Qwen3 (the tiny repro's shape: hidden 128, MLP 384, 4 heads / 2 KV heads,
head_dim 32) with L layers is trained from scratch on fresh synthetic problems (difficulty 1-2,
chat format, loss on the assistant's solution), AdamW lr 3e-3, 50 warmup steps then constant,
batch 32; greedy answer accuracy on 300 held-out problems at checkpoints.
Usage: OMP_NUM_THREADS=1 [DIFFICULTY=1,2] python tiny_plateau_probe.py LAYERS MAX_STEPS CHECKPOINTS(comma) SEED"""
import json, os, re, sys, time
from pathlib import Path
import torch
from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM
from tah.data.synthetic import generate_dataset

L, max_steps, checkpoints, seed = int(sys.argv[1]), int(sys.argv[2]), [int(x) for x in sys.argv[3].split(",")], int(sys.argv[4])
torch.manual_seed(seed); torch.set_num_threads(1)
DIFF = tuple(int(x) for x in os.environ.get("DIFFICULTY", "1,2").split(","))
asset = Path(__import__("tah").__file__).parent / "assets" / "tiny-tah"
tok = AutoTokenizer.from_pretrained(asset)
cfg = Qwen3Config(vocab_size=len(tok), hidden_size=int(os.environ.get("H","128")), intermediate_size=3*int(os.environ.get("H","128")), num_hidden_layers=L,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=int(os.environ.get("H","128"))//4, max_position_embeddings=512,
                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
model = Qwen3ForCausalLM(cfg)
test = generate_dataset(300, seed=424242, difficulty=DIFF, id_prefix="t")
test_texts = {r["problem"] for r in test}
def prompt(r):
    return tok.apply_chat_template([{"role": "user", "content": r["problem"]}], tokenize=False, add_generation_prompt=True)
def encode(batch):
    ids, labels = [], []
    for r in batch:
        p = tok(prompt(r), add_special_tokens=False)["input_ids"]
        s = tok(r["solution"] + tok.eos_token, add_special_tokens=False)["input_ids"]
        ids.append(p + s); labels.append([-100] * len(p) + s)
    n = max(map(len, ids))
    I = torch.full((len(ids), n), tok.pad_token_id); Lb = torch.full((len(ids), n), -100); M = torch.zeros((len(ids), n), dtype=torch.long)
    for i, (a, b) in enumerate(zip(ids, labels)):
        I[i, :len(a)] = torch.tensor(a); Lb[i, :len(b)] = torch.tensor(b); M[i, :len(a)] = 1
    return I, M, Lb
def answer(text):
    m = re.search(r"####\s*(-?\d+)", text); return m.group(1) if m else None
@torch.no_grad()
def evaluate():
    model.eval(); tok.padding_side = "left"; right = 0
    for i in range(0, len(test), 50):
        b = test[i:i + 50]
        enc = tok([prompt(r) for r in b], return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(**enc, max_new_tokens=128, do_sample=False, pad_token_id=tok.pad_token_id)
        for r, o in zip(b, out[:, enc["input_ids"].shape[1]:]):
            right += answer(tok.decode(o, skip_special_tokens=True)) == str(r["answer"]).strip()
    model.train(); return right / len(test)
opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
data_seed = 1000 * seed + 7; pool, t0, log = [], time.time(), []
model.train()
for step in range(1, max_steps + 1):
    while len(pool) < 32:
        data_seed += 1
        pool += [r for r in generate_dataset(256, seed=data_seed, difficulty=DIFF) if r["problem"] not in test_texts]
    batch, pool = pool[:32], pool[32:]
    I, M, Lb = encode(batch)
    loss = model(input_ids=I, attention_mask=M, labels=Lb).loss
    loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step(); sched.step(); opt.zero_grad()
    if step in checkpoints:
        acc = evaluate()
        log.append({"layers": L, "difficulty": DIFF, "step": step, "acc": acc, "loss": loss.item(), "elapsed_s": time.time() - t0})
        print(json.dumps(log[-1]), flush=True)
    if step == 20 and os.environ.get("TIME_ONLY"):
        print(json.dumps({"L": L, "H": os.environ.get("H"), "diff": DIFF, "s_per_step": (time.time()-t0)/20}), flush=True); break
