"""Every script answers --help without loading torch, matplotlib or pandas (instant on 2 cores)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPTS = ["train", "eval", "plot", "report", "bench", "demo_data", "predict", "export", "audit"]
HEAVY = ("torch", "matplotlib", "pandas", "sklearn")

PROBE = """
import sys, runpy
sys.argv = [{script!r}, "--help"]
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit as exit:
    assert exit.code == 0, exit.code
print("loaded:" + ",".join(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_loads_no_heavy_library(script: str) -> None:
    code = PROBE.format(script=f"{script}.py", heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    usage, loaded = done.stdout.rsplit("loaded:", 1)
    assert usage.startswith("usage:")
    assert loaded.strip() == "", f"{script}.py --help imported {loaded.strip()}"
