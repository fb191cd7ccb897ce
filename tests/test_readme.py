"""The README's commands after the demo work as written (on a small demo made here).

`make readme-check` runs only this file.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT

MARKER = "<!-- readme-check"


def readme_commands() -> list[list[str]]:
    """The commands of the fenced block after the readme-check marker, comments dropped."""
    text = (ROOT / "README.md").read_text()
    block = re.search(re.escape(MARKER) + r".*?```bash\n(.*?)```", text, re.S)
    assert block, "README.md lost its readme-check block"
    lines = [line.split("#", 1)[0].strip() for line in block[1].splitlines()]
    return [shlex.split(line) for line in lines if line]


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python X.py ...`` as a user would type it in a checkout, with the data and storage in ``cwd``."""
    assert args[0] == "python" and args[1].endswith(".py"), args
    done = subprocess.run([sys.executable, str(ROOT / args[1]), *args[2:]], cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"{shlex.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


@pytest.fixture(scope="module")
def after_small_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What scripts/demo.sh leaves, in miniature: demo data, runs in storage/demo/, evaluated."""
    home = tmp_path_factory.mktemp("checkout")
    run(["python", "demo_data.py", "--train", "24", "--valid", "12", "--test", "8", "--image-size", "32",
         "--workers", "1"], home)
    tiny = ["-e", "1", "--image-size", "32", "-b", "8", "--workers", "0", "--out", "storage/demo"]
    for name in ("first", "second"):
        run(["python", "train.py", "-m", "ResNet18", "--name", name, *tiny], home)
    return home


def test_the_readme_commands_after_the_demo_all_succeed(after_small_demo: Path) -> None:
    commands = readme_commands()
    assert [c[1] for c in commands][:1] == ["eval.py"]
    outputs = [run(c, after_small_demo).stdout for c in commands]
    demo = after_small_demo / "storage" / "demo"
    assert "demo/second" in outputs[0]  # latest = the run written last, and the choice is said
    assert json.loads((demo / "second" / "eval" / "valid_metrics.json").read_text())["images"] == 12
    assert (after_small_demo / "storage" / "accuracy.png").is_file()
    assert (demo / "report.html").is_file()
    resumed = [c for c in commands if c[1] == "train.py" and "--resume" in c]
    if resumed:
        epochs = int(resumed[0][resumed[0].index("-e") + 1])
        assert pd.read_csv(demo / "second" / "history.csv")["epoch"].max() == epochs
