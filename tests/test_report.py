"""report.py on run folders written by hand: the numbers come from the files, gaps say so, the HTML stands alone."""
from __future__ import annotations

import base64
import hashlib
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import report
import train as train_script
from conftest import ROOT
from common.errors import run_cli

CONFIG = {"arch": "resnet18", "model": "ResNet18", "epochs": 3, "batch_size": 8, "optimizer": "sgd",
          "learning_rate": 0.05, "momentum": 0.9, "weight_decay": 0.0005, "scheduler": "cosine",
          "warmup_epochs": 1.0, "label_smoothing": 0.1, "data": "new_dataset", "layout": "auto",
          "split": "patient", "image_size": 64, "head": "linear", "zero_init_residual": True, "seed": 3,
          "amp": None, "channels_last": False, "compile": False, "sync_bn": False, "cache": False,
          "out": "storage/demo", "name": None}
METRICS = {"images": 16, "accuracy": 0.8125, "weighted_f1": 0.7777, "macro_recall": 0.7, "roc_auc": 0.9123,
           "per_class": {}}


def make_run(folder: Path, name: str, valid_acc: list[float], config: dict | None = None,
             metrics: dict[str, dict] | None = None) -> Path:
    """A run folder as train.py (and eval.py, for each split in ``metrics``) would leave it."""
    run = folder / name
    (run / "eval").mkdir(parents=True)
    epochs = range(1, len(valid_acc) + 1)
    pd.DataFrame({"epoch": epochs, "train_loss": [1.0] * len(valid_acc), "train_acc": [0.5] * len(valid_acc),
                  "valid_loss": [1.0] * len(valid_acc), "valid_acc": valid_acc, "lr": [0.01] * len(valid_acc),
                  "seconds": [1.0] * len(valid_acc)}).to_csv(run / "history.csv", index=False)
    (run / "config.json").write_text(json.dumps(config if config is not None else CONFIG))
    for split, m in (metrics or {}).items():
        (run / "eval" / f"{split}_metrics.json").write_text(json.dumps(m))
        pd.DataFrame([[6, 2], [1, 7]], index=["true normal", "true blast"],
                     columns=["pred normal", "pred blast"]).to_csv(run / "eval" / f"{split}_confusion.csv")
    return run


def table_row(markdown: str, *first_cells: str) -> list[str]:
    """The cells of the markdown table row that starts with ``first_cells``."""
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[:len(first_cells)] == list(first_cells):
            return cells
    raise AssertionError(f"no row {first_cells} in the report")


def build(folder: Path, *extra: str) -> tuple[str, str]:
    assert report.main(["-f", str(folder), *extra]) == 0
    out = Path(extra[extra.index("--output") + 1]) if "--output" in extra else folder
    return (out / "report.md").read_text(), (out / "report.html").read_text()


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    """Run A (evaluated, 3 epochs, best 75% at epoch 2) and run B (never evaluated, no command recorded)."""
    folder = tmp_path / "storage"
    make_run(folder, "A", [0.5, 0.75, 0.625], {**CONFIG, "command": "python train.py -m ResNet18 -e 3 --name A"},
             metrics={"valid": METRICS, "resnet_18_test": {**METRICS, "accuracy": 0.5, "images": 8}})
    make_run(folder, "B", [0.8, 0.9], {**CONFIG, "arch": "resnet34", "model": "ResNet34", "epochs": 2,
                                       "optimizer": "adamw", "learning_rate": 0.001})
    return folder


def test_every_run_is_listed_with_its_best_valid_accuracy_and_epoch(storage: Path) -> None:
    markdown, page = build(storage)
    assert table_row(markdown, "A")[1:] == ["ResNet18", "no", "rotate", "3", "8", "sgd", "0.05", "75.00%", "2"]
    assert table_row(markdown, "B")[1:] == ["ResNet34", "no", "rotate", "2", "8", "adamw", "0.001", "90.00%", "2"]
    assert "75.00%" in page and "90.00%" in page


def test_eval_metrics_come_from_each_splits_json(storage: Path) -> None:
    markdown, _ = build(storage)
    assert table_row(markdown, "A", "valid")[2:7] == ["16", "81.25%", "0.7777", "0.7000", "0.9123 (AUC)"]
    assert table_row(markdown, "A", "resnet_18_test")[2:4] == ["8", "50.00%"]


def test_graded_tasks_show_quadratic_kappa(tmp_path: Path) -> None:
    make_run(tmp_path, "retina", [0.4], metrics={"valid": {**METRICS, "quadratic_kappa": 0.6543,
                                                           "roc_auc": None}})
    markdown, _ = build(tmp_path)
    assert table_row(markdown, "retina", "valid")[6] == "0.6543 (kappa)"


def test_intervals_patients_and_the_operating_point_are_shown(tmp_path: Path) -> None:
    with_ci = lambda v, lo, hi: {"value": v, "ci95": [lo, hi]}  # noqa: E731  (eval.py's metrics shape)
    m = {"images": 16, "accuracy": with_ci(0.8125, 0.6, 0.95), "weighted_f1": with_ci(0.7777, 0.6, 0.9),
         "macro_recall": with_ci(0.7, 0.5, 0.85), "roc_auc": with_ci(0.9123, 0.8, 0.99), "per_class": {},
         "bootstrap": {"resamples": 2000, "unit": "patients", "seed": 0},
         "operating_point": {"threshold": 0.3, "sensitivity": 0.9, "specificity": 0.75, "ppv": 0.8, "npv": 0.5},
         "calibration": {"ece": 0.0412},
         "patients": {"patients": 4, "accuracy": with_ci(0.75, 0.5, 1.0), "weighted_f1": with_ci(0.7, 0.4, 1.0),
                      "macro_recall": with_ci(0.75, 0.5, 1.0), "roc_auc": with_ci(1.0, 1.0, 1.0)}}
    make_run(tmp_path, "ci", [0.8], metrics={"valid": m})
    markdown, page = build(tmp_path)
    assert table_row(markdown, "ci", "valid")[2:5] == ["16", "81.25% [60.00, 95.00]", "0.7777 [0.6000, 0.9000]"]
    assert table_row(markdown, "ci", "valid (per patient)")[2:4] == ["4 patients", "75.00% [50.00, 100.00]"]
    assert ("valid: at threshold 0.3: sensitivity 90.00%, specificity 75.00%, PPV 80.00%, NPV 50.00%; "
            "expected calibration error 0.0412; 95% intervals from 2000 bootstrap resamples of patients") in markdown
    assert "sensitivity 90.00%" in page


def test_a_run_without_eval_outputs_is_reported_missing_not_zero(storage: Path) -> None:
    markdown, page = build(storage)
    row = table_row(markdown, "B", "valid")
    assert row[2] == f"missing (run: python eval.py -m {storage / 'B'})"
    assert not any(re.fullmatch(r"0(\.0+)?%?", cell) for cell in row)
    assert f"missing (run: python eval.py -m {storage / 'B'})" in page


def test_the_html_embeds_its_images_and_loads_nothing_from_outside(storage: Path) -> None:
    Image.new("RGB", (40, 30)).save(storage / "A" / "eval" / "valid_gradcam.png")
    _, page = build(storage)
    assert not re.search(r"https?://", page)
    assert not re.search(r"<(link|script|iframe)\b|@import|url\(", page)
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 3  # accuracy curves, valid confusion matrices, A's Grad-CAM grid
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_figures_are_drawn_by_plot_into_the_output_folder(storage: Path, tmp_path: Path) -> None:
    out = tmp_path / "reports"
    markdown, _ = build(storage, "--output", str(out))
    for name in ("accuracy.png", "confusion_matrices.png"):
        with Image.open(out / name) as png:
            assert png.width > 400
    for link in re.findall(r"!\[[^]]*\]\(([^)]+)\)", markdown):
        assert (out / link).is_file(), link


def test_recorded_commands_are_shown_as_they_were_run(storage: Path) -> None:
    markdown, page = build(storage)
    assert "python train.py -m ResNet18 -e 3 --name A" in markdown
    assert f"python eval.py -m {storage / 'A'}" in page


def test_a_rebuilt_command_gives_train_py_the_same_settings(storage: Path) -> None:
    markdown, _ = build(storage)
    command = next(line for line in markdown.splitlines() if line.startswith("python train.py -m ResNet34"))
    cfg = train_script.config_from_args(train_script.get_args_parser().parse_args(shlex.split(command)[2:]))
    expected = {**CONFIG, "arch": "resnet34", "epochs": 2, "optimizer": "adamw", "learning_rate": 0.001}
    assert cfg.models == ("resnet34",) and cfg.name == "B"
    for key in ("epochs", "batch_size", "optimizer", "learning_rate", "weight_decay", "data", "image_size",
                "zero_init_residual", "seed", "channels_last", "cache", "out", "amp"):
        assert getattr(cfg, key) == expected[key], key


def test_the_augmentation_policy_and_ema_are_shown_and_reproduced(tmp_path: Path) -> None:
    make_run(tmp_path, "U", [0.5], {**CONFIG, "augment": "upright", "ema": True, "ema_decay": 0.99})
    markdown, _ = build(tmp_path)
    assert table_row(markdown, "U")[3] == "upright + EMA"
    command = next(line for line in markdown.splitlines() if line.startswith("python train.py"))
    cfg = train_script.config_from_args(train_script.get_args_parser().parse_args(shlex.split(command)[2:]))
    assert (cfg.augment, cfg.ema, cfg.ema_decay) == ("upright", True, 0.99)


def test_the_eval_command_repeats_the_grad_cam_count(storage: Path) -> None:
    info = PngInfo()
    info.add_text("Description", "eval.py --cam 3")
    Image.new("RGB", (40, 30)).save(storage / "A" / "eval" / "valid_gradcam.png", pnginfo=info)
    markdown, _ = build(storage)
    assert f"python eval.py -m {storage / 'A'} --cam 3" in markdown


@pytest.mark.parametrize("case", ["no such folder", "no runs", "broken metrics"])
def test_user_errors_are_one_line_and_status_2(case: str, storage: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    folder = {"no such folder": tmp_path / "nowhere", "no runs": tmp_path / "empty", "broken metrics": storage}[case]
    (tmp_path / "empty").mkdir()
    (storage / "A" / "eval" / "valid_metrics.json").write_text("{not json")
    assert run_cli(report.main, ["-f", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_the_script_exits_2_on_a_bad_folder(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "report.py", "-f", str(tmp_path / "nowhere")], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1


def test_runs_without_grad_cam_get_one_neutral_note_not_a_warning_each(storage: Path) -> None:
    markdown, page = build(storage)
    assert markdown.count("Grad-CAM: not drawn") == 1 and page.count("Grad-CAM: not drawn") == 1
    assert "Grad-CAM: missing" not in markdown + page


def test_the_grad_cam_note_goes_once_any_run_has_a_grid(storage: Path) -> None:
    Image.new("RGB", (40, 30)).save(storage / "A" / "eval" / "valid_gradcam.png")
    markdown, _ = build(storage)
    assert "Grad-CAM: not drawn" not in markdown and "Grad-CAM - valid" in markdown


def evaluated(run: Path, weights: bytes, epoch: int) -> dict:
    """The "evaluated" record eval.py writes, for a best.pt that held ``weights``."""
    digest = hashlib.sha256(weights).hexdigest()[:16]  # as core.checkpoint.checkpoint_digest hashes a file
    return {"checkpoints": [{"path": str(run / "best.pt"), "epoch": epoch, "digest": digest}], "tta": None,
            "temperature": None, "split": "valid"}


def test_an_evaluation_of_an_older_best_checkpoint_is_marked_stale(tmp_path: Path) -> None:
    run = make_run(tmp_path, "A", [0.5, 0.75])  # evaluated at epoch 1, then resumed to a new best at epoch 2
    (run / "best.pt").write_bytes(b"the weights of epoch 2")
    (run / "eval" / "valid_metrics.json").write_text(json.dumps({**METRICS, "evaluated": evaluated(
        run, b"the weights of epoch 1", 1)}))
    markdown, page = build(tmp_path)
    row = table_row(markdown, "A", "valid")
    assert row[2] == (f"stale: evaluated the weights of epoch 1; best.pt changed since (best.pt is now epoch 2) "
                      f"(run: python eval.py -m {run} --split valid)")
    assert "81.25%" not in markdown and "class=missing" in page


def test_an_evaluation_of_the_current_best_checkpoint_is_shown(tmp_path: Path) -> None:
    run = make_run(tmp_path, "A", [0.5, 0.75])
    (run / "best.pt").write_bytes(b"the weights of epoch 2")
    (run / "eval" / "valid_metrics.json").write_text(json.dumps({**METRICS, "evaluated": evaluated(
        run, b"the weights of epoch 2", 2)}))
    markdown, _ = build(tmp_path)
    assert table_row(markdown, "A", "valid")[3] == "81.25%" and "stale" not in markdown


def test_an_evaluation_that_does_not_say_what_it_evaluated_is_stale(tmp_path: Path) -> None:
    run = make_run(tmp_path, "A", [0.5], metrics={"valid": METRICS})
    (run / "best.pt").write_bytes(b"weights")
    markdown, _ = build(tmp_path)
    assert table_row(markdown, "A", "valid")[2].startswith("stale: evaluated before eval.py recorded which checkpoint")


def test_a_model_not_better_than_the_majority_baseline_is_flagged_in_the_report(tmp_path: Path) -> None:
    make_run(tmp_path, "A", [0.5], metrics={"valid": {**METRICS, "baseline_accuracy": 0.8, "baseline_class": "blast",
                                                      "not_better_than_baseline": True}})
    markdown, _ = build(tmp_path)
    assert table_row(markdown, "A", "valid")[7] == "80.00% ('blast'): not better"
    assert "NOT BETTER than always answering 'blast' (80.00%)" in markdown


def test_an_ensemble_folder_is_reported_beside_the_runs(storage: Path) -> None:
    members = []
    for name in ("A", "B"):
        (storage / name / "best.pt").write_bytes(f"weights of {name}".encode())
        members.append({"checkpoint": str(storage / name / "best.pt"), "model": "ResNet18", "epoch": 2})
    ensemble = storage / "ensemble-A+B"
    ensemble.mkdir()
    (ensemble / "ensemble.json").write_text(json.dumps({"name": ensemble.name, "members": members}))
    record = {"checkpoints": [{"path": m["checkpoint"], "epoch": 2,
                               "digest": hashlib.sha256(f"weights of {n}".encode()).hexdigest()[:16]}
                              for n, m in zip("AB", members)], "tta": None, "temperature": None, "split": "test"}
    (ensemble / "resnet_18_test_metrics.json").write_text(json.dumps({**METRICS, "accuracy": 0.875,
                                                                       "evaluated": record}))
    markdown, page = build(storage)
    assert table_row(markdown, "ensemble-A+B", "resnet_18_test")[3] == "87.50%"
    assert "## ensemble-A+B" in markdown and f"ResNet18 ({storage / 'B' / 'best.pt'}, epoch 2)" in markdown
    assert "ensemble-A+B" in page
    (storage / "B" / "best.pt").write_bytes(b"retrained")
    markdown, _ = build(storage)
    assert table_row(markdown, "ensemble-A+B", "resnet_18_test")[2].startswith("stale: evaluated the weights of "
                                                                               "epoch 2; B/best.pt changed since")


def test_tta_and_last_checkpoint_evaluations_are_rows_of_their_own(tmp_path: Path) -> None:
    run = make_run(tmp_path, "A", [0.5, 0.75])
    (run / "best.pt").write_bytes(b"best")
    (run / "last.pt").write_bytes(b"last, one epoch later")
    for folder, weights, accuracy in (("eval-tta", b"best", 0.875), ("eval-last", b"last", 0.5)):
        (run / folder).mkdir()
        (run / folder / "valid_metrics.json").write_text(json.dumps({**METRICS, "accuracy": accuracy,
                                                                     "evaluated": evaluated(run, weights, 2)}))
    markdown, _ = build(tmp_path)
    assert table_row(markdown, "A", "valid (TTA)")[3] == "87.50%"
    assert table_row(markdown, "A", "valid (last.pt)")[2].endswith(
        f"last.pt changed since (run: python eval.py -m {run / 'last.pt'} --split valid)")
