"""The README's examples for the bundled tiny model run and get right answers (issue 26,
item 7): its `tah generate` lines, its curl bodies against `tah serve`'s default app, and the
playground's default prompt. The bundled model only knows the synthetic word problems, in its
chat format, so every example must ask one of those."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tah.cli import build_parser, main
from tah.cli.serve import build_app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PLAYGROUND = ROOT / "src" / "tah" / "assets" / "playground" / "index.html"


def readme_lines(start: str) -> list[str]:
    return [line.split("   #")[0].strip() for line in README.splitlines() if line.startswith(start)]


def answer(text: str) -> str | None:
    match = re.search(r"####\s*(-?\d+)", text)
    return match.group(1) if match else None


def expected(question: str) -> str:
    """The gold answer of the bundled model's README question (a one-step product)."""
    numbers = [int(n) for n in re.findall(r"\d+", question)]
    return str(numbers[0] * numbers[1])


@pytest.fixture(scope="module")
def served():
    app = build_app(build_parser().parse_args(["serve"]))  # what `tah serve` runs
    with TestClient(app) as client:
        yield client, app.state.tah.model_name


BUNDLED_GENERATE = [x for x in readme_lines("tah generate") if "--model" not in x]


def test_readme_has_bundled_examples():
    assert BUNDLED_GENERATE and readme_lines("curl")


@pytest.mark.parametrize("line", BUNDLED_GENERATE)
def test_readme_generate_examples_answer_right(line, capsys):
    argv = shlex.split(line)[1:]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert answer(out["text"]) == expected(out["prompt"]), out["text"]


@pytest.mark.parametrize("line", readme_lines("curl"))
def test_readme_curl_examples_work_against_tah_serve(served, line):
    client, name = served
    argv = shlex.split(line)
    url, body = (
        next(a for a in argv if a.startswith("localhost")),
        json.loads(argv[argv.index("-d") + 1]),
    )
    assert body.get("model", name) == name  # no 404 against the bundled model
    r = client.post(url.removeprefix("localhost:8000"), json=body)
    assert r.status_code == 200, r.text
    question = body["messages"][-1]["content"]
    assert answer(r.json()["choices"][0]["message"]["content"]) == expected(question)


def test_playground_default_prompt_suits_the_bundled_model(served):
    client, _ = served
    prompt = re.search(r'<textarea id="prompt">(.*?)</textarea>', PLAYGROUND.read_text()).group(1)
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 64, "temperature": 0}
    r = client.post("/v1/chat/completions", json=body)
    assert answer(r.json()["choices"][0]["message"]["content"]) == expected(prompt)
