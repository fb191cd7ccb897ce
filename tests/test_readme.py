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


def demo_files() -> list[str]:
    """The paths the README's table of demo outputs names (``storage/demo/...``)."""
    text = (ROOT / "README.md").read_text()
    return re.findall(r"^\| `(storage/demo/[^`]*)` \|", text, re.M)


@pytest.fixture(scope="module")
def after_small_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What scripts/demo.sh leaves, in miniature: demo data, the runs ResNet18, ResNet50 and ResNet152 in
    storage/demo/ (all three ResNet18s here, to stay fast: their paths are what the README names), the
    figures of plot.py -f storage/demo."""
    home = tmp_path_factory.mktemp("checkout")
    run(["python", "demo_data.py", "--train", "24", "--valid", "12", "--test", "8", "--image-size", "32",
         "--workers", "1"], home)
    tiny = ["-e", "1", "--image-size", "32", "-b", "8", "--workers", "0", "--out", "storage/demo"]
    for name in ("ResNet18", "ResNet50", "ResNet152"):  # in the demo's order: ResNet152 is the latest
        run(["python", "train.py", "-m", "ResNet18", "--name", name, *tiny], home)
    run(["python", "plot.py", "-f", "storage/demo"], home)
    return home


@pytest.fixture(scope="module")
def outputs(after_small_demo: Path) -> list[str]:
    """The standard output of each command of the readme-check block, run in order after the small demo."""
    return [run(c, after_small_demo).stdout for c in readme_commands()]


def test_the_readme_commands_after_the_demo_all_succeed(after_small_demo: Path, outputs: list[str]) -> None:
    commands = readme_commands()
    assert [c[1] for c in commands][:1] == ["eval.py"]
    demo = after_small_demo / "storage" / "demo"
    assert "demo/ResNet152" in outputs[0]  # latest = the run written last, and the choice is said
    assert json.loads((demo / "ResNet152" / "eval" / "valid_metrics.json").read_text())["images"] == 12
    assert (after_small_demo / "storage" / "accuracy.png").is_file()
    assert (demo / "report.html").is_file()
    resumed = [c for c in commands if c[1] == "train.py" and "--resume" in c]
    if resumed:
        epochs = int(resumed[0][resumed[0].index("-e") + 1])
        assert pd.read_csv(demo / "ResNet152" / "history.csv")["epoch"].max() == epochs


def test_the_readme_ensemble_example_runs_and_the_report_includes_it(after_small_demo: Path,
                                                                    outputs: list[str]) -> None:
    ensembles = [c for c in readme_commands() if c[1] == "eval.py" and sum(a.startswith("storage/") for a in c) == 3]
    assert ensembles, "the readme-check block lost its ensemble example"
    folder = after_small_demo / "storage" / "demo" / "ensemble-ResNet18+ResNet50+ResNet152"
    assert (folder / "valid_metrics.json").is_file()
    report = (after_small_demo / "storage" / "demo" / "report.md").read_text()
    assert "## ensemble-ResNet18+ResNet50+ResNet152" in report


def test_every_demo_output_the_readme_names_exists(after_small_demo: Path, outputs: list[str]) -> None:
    paths = demo_files()
    assert len(paths) >= 5
    for path in paths:
        assert (after_small_demo / path.replace("<model>", "ResNet152")).exists(), path
