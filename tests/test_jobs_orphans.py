"""A killed orchestrator takes its job workers with it (Linux), so a rerun never races them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")

ORCHESTRATOR = """
import sys
from pathlib import Path
sys.path.insert(0, {here!r})
from tah.repro.jobs import Job, run_jobs
from sleeper import sleep
out = Path({out!r})
run_jobs([Job("sleeper", out / "sleeper.log", call=(sleep, {{"pid_file": str(out / "pid")}}))],
         workers=1, show_progress=False)
"""

SLEEPER = """
import os, time
def sleep(pid_file):
    with open(pid_file + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(pid_file + ".tmp", pid_file)
    time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead too: it only waits to be reaped by its (new) parent
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def _wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_killed_orchestrator_ends_its_workers(tmp_path, how):
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    script = ORCHESTRATOR.format(here=str(tmp_path), out=str(tmp_path))
    parent = subprocess.Popen([sys.executable, "-c", script])
    pid_file = tmp_path / "pid"
    try:
        assert _wait_for(pid_file.exists, 120), "the job never started"
        worker = int(pid_file.read_text())
        assert _alive(worker)
        parent.send_signal(how)
        parent.wait(30)
        assert _wait_for(lambda: not _alive(worker), 20), "the worker outlived its orchestrator"
    finally:
        if parent.poll() is None:
            parent.kill()
        if pid_file.exists() and _alive(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
