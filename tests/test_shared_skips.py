"""Tests that need ../shared say what it is when they skip (issue 26, item 9): one reason,
from conftest, that points to the README section explaining the folder."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import QWEN3_SKIP, SHARED_README_SECTION

TESTS = Path(__file__).resolve().parent
README = (TESTS.parent / "README.md").read_text(encoding="utf-8")


def test_the_readme_explains_shared():
    heading = next(
        (
            line
            for line in README.splitlines()
            if line.startswith("#") and SHARED_README_SECTION in line
        ),
        None,
    )
    assert heading is not None, f"README.md has no '{SHARED_README_SECTION}' section"
    section = README[README.index(heading) :].split("\n## ")[0]
    for fact in ("tokenizers/qwen3", "data", "skip", "TAH_DATA_DIR"):
        assert fact in section, fact
    assert SHARED_README_SECTION in QWEN3_SKIP and "not part of it" in QWEN3_SKIP


def test_no_test_words_its_own_shared_skip_or_hard_codes_the_path():
    offenders = []
    for path in sorted(TESTS.glob("test_*.py")):
        text = path.read_text(encoding="utf-8")
        if "/work/" + "shared" in text:  # split so that this file does not match itself
            offenders.append(f"{path.name}: a hard-coded absolute path to shared")
        for reason in re.findall(r"(?:skip\(|reason=)\s*\"([^\"]*)\"", text):
            if "shared" in reason or "qwen3" in reason.lower():
                offenders.append(f"{path.name}: {reason}")
    assert offenders == []
