"""bench/memcap.py, the external memory governor: a tree over the cap is stopped with 137."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MEMCAP = Path(__file__).resolve().parents[1] / "bench" / "memcap.py"

HOG = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "a = bytearray(400 * 2**20)\\nfor i in range(0, len(a), 4096): a[i] = 1\\n"
    "import time; time.sleep(60)"])
time.sleep(60)
"""


def governed(limit_gb: float, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(MEMCAP), "--limit-gb", str(limit_gb), "--",
                           sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_a_tree_over_the_cap_is_stopped_and_named_in_one_line() -> None:
    """The memory is held by a grandchild, not by the command itself: the whole tree counts."""
    proc = governed(0.25, HOG)
    assert proc.returncode == 137, proc.stderr
    first = proc.stderr.splitlines()[0]
    assert first.startswith("memcap: process tree used ") and "> the 0.25 GiB cap" in first
    assert "fix:" in first and "Traceback" not in proc.stderr


def test_a_tree_under_the_cap_runs_to_its_own_exit_status() -> None:
    proc = governed(2.0, "import sys; print('done'); sys.exit(3)")
    assert proc.returncode == 3 and proc.stdout.strip() == "done"
