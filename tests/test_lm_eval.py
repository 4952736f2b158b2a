"""lm-evaluation-harness against a live ``tah serve`` (slow; skipped unless ``lm_eval`` is
installed — it is not a dependency of tah: ``pip install 'lm_eval[api]'``).

Its ``local-completions`` model scores each multiple-choice option by the logprobs of the
option's tokens, read from ``/v1/completions`` with ``echo`` and ``logprobs``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from importlib.resources import files

import pytest

from tah.engine.engine import Engine
from test_playground import LiveServer

BUNDLED = str(files("tah") / "assets" / "tiny-tah")
QUESTIONS = [
    ("Lily has 3 apples and buys 4 more. How many apples does she have?", ["7", "12", "1"], 0),
    ("Sam has 10 pencils and gives away 6. How many are left?", ["16", "4", "60"], 1),
    ("What is 5 plus 5?", ["25", "0", "10"], 2),
    ("Ben reads 2 books a day for 3 days. How many books?", ["6", "5", "1"], 0),
]
TASK = """task: tah_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: label
doc_to_choice: "{{{{choices}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.mark.slow
@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("lm_eval", "tenacity")),
    reason="lm-evaluation-harness is not installed (pip install 'lm_eval[api]')",
)
def test_lm_eval_multiple_choice_against_live_server(tmp_path):
    data = tmp_path / "tah_tiny_mc.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": q, "choices": c, "label": y}) + "\n" for q, c, y in QUESTIONS
        )
    )
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tah_tiny_mc.yaml").write_text(TASK.format(data=data))
    engine = Engine.from_pretrained(BUNDLED, max_batch=4, model_name="tiny-tah")
    with LiveServer(engine) as live:
        model_args = ",".join(
            [
                "model=tiny-tah",
                f"base_url={live.url}/v1/completions",
                f"tokenizer={BUNDLED}",
                "tokenizer_backend=huggingface",
                "num_concurrent=1",
                "max_retries=1",
            ]
        )
        cmd = [
            sys.executable, "-m", "lm_eval", "run",
            "--model", "local-completions",
            "--model_args", model_args,
            "--tasks", "tah_tiny_mc",
            "--include_path", str(tasks),
            "--output_path", str(tmp_path / "out"),
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = list((tmp_path / "out").rglob("results_*.json"))
    assert results, done.stdout[-2000:]
    scores = json.loads(results[0].read_text())["results"]["tah_tiny_mc"]
    print("lm-eval tah_tiny_mc:", scores)
    assert 0.0 <= scores["acc,none"] <= 1.0
    assert engine.stats["prompt_tokens"] > 0  # the harness really queried the server
