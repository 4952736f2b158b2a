"""The benchmark scripts run: the device run's CPU mode, and core.py's decode set-up."""

from __future__ import annotations

import json
import sys

from test_train_utils import REPO

sys.path.insert(0, str(REPO / "bench"))


def test_core_bench_decode_uses_separate_unwrapped_models():
    """Before the fix, the "plain HF" baseline was the model ``from_base`` had wrapped (LoRA
    layers in it, wrapped again at batch 16)."""
    import core

    hf, standard, tah = core.decode_models(quick=True)
    assert not any("lora" in name for name, _ in hf.named_modules())
    assert standard.base_model is not hf and tah.base_model is not hf
    assert standard.base_model is not tah.base_model


def test_device_run_cpu_quick(tmp_path):
    """``bench/device_run.py --device cpu --quick`` runs every section (torch.compile's
    section is skipped here: it compiles for ~45 s on CPU) and writes JSON + Markdown."""
    import device_run

    code = device_run.main([str(tmp_path), "--device", "cpu", "--quick", "--skip", "compile"])
    assert code == 0  # nothing is wrong: every check passes
    result = json.loads((tmp_path / "device_run.json").read_text())
    sections = result["sections"]
    for name in device_run.SECTIONS:
        expected = {"compile": ("skipped",), "speculation": ("ok", "not available")}
        assert sections[name]["status"] in expected.get(name, ("ok",)), sections[name]
    assert sections["correct_fp32"]["ok"] is True  # engine == core, eager and padded
    assert sections["train_bf16"]["ok"] is True  # against the plain model's own bf16 error
    assert sections["eval_engine"]["rows"][0]["identical"] is True
    assert sections["correct_bf16"]["decisions_differ_outside_margin"] == 0
    assert {r["batch"] for r in sections["throughput"]["rows"]} == {1, 4}
    summary = (tmp_path / "summary.md").read_text()
    assert "decode tokens/s" in summary and "| compile | skipped" in summary
