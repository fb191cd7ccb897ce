"""export.py --format onnx: a faithful ONNX model with a free batch size, and the preprocessing to feed it."""
from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import eval as eval_script
import export as export_script
import predict as predict_script
import train as train_script
from conftest import ROOT, write_lab_dataset
from common.errors import run_cli

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 48 px images cropped and resized to 32 px: the example must reproduce the crop and the resize
    return write_lab_dataset(tmp_path_factory.mktemp("export"), n_train=16, n_valid=8, n_test=4, size=48)


@pytest.fixture(scope="module")
def exported(lab: Path) -> tuple[Path, str]:
    """(the run folder, export.py's output) after one export of a one-epoch ResNet18."""
    out = lab.parent / "storage"
    assert train_script.main(["--data", str(lab), "--out", str(out), "-m", "ResNet18", "--image-size", "32", "-b", "8",
                              "-e", "1", "--workers", "0", "--name", "r18"]) == 0
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert run_cli(export_script.main, ["-m", str(out / "r18"), "--format", "onnx"]) == 0
    return out / "r18", printed.getvalue()


def test_export_prints_the_difference_from_pytorch_within_1e_4(exported: tuple[Path, str]) -> None:
    _, printed = exported
    diff = float(re.search(r"max abs difference ([0-9.e+-]+)", printed)[1])
    assert 0 <= diff <= 1e-4


def test_the_onnx_model_takes_any_batch_size(exported: tuple[Path, str]) -> None:
    run, _ = exported
    session = ort.InferenceSession(str(run / "export" / "resnet18.onnx"), providers=["CPUExecutionProvider"])
    (batch, *shape), = [i.shape for i in session.get_inputs()]
    assert isinstance(batch, str) and shape == [3, 32, 32]
    for n in (1, 5):
        (logits,) = session.run(None, {"input": np.zeros((n, 3, 32, 32), np.float32)})
        assert logits.shape == (n, 2)


def test_the_json_holds_the_checkpoints_preprocessing(exported: tuple[Path, str]) -> None:
    import torch

    run, _ = exported
    info = json.loads((run / "export" / "resnet18.json").read_text())
    prep = torch.load(run / "best.pt", weights_only=True)["preprocess"]
    assert info["image_size"] == prep["image_size"] == 32 and info["crop"] == prep["crop"]
    assert info["mean"] == list(prep["mean"]) and info["std"] == list(prep["std"])
    assert info["classes"] == ["normal", "blast"] and info["input"] == "input"


def readme_example() -> str:
    """The onnxruntime example in README.md."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    (code,) = [b for b in blocks if "onnxruntime as ort" in b]
    return code


def test_the_readme_example_classifies_an_image_as_predict_py_does(exported: tuple[Path, str], lab: Path,
                                                                   tmp_path: Path) -> None:
    run, _ = exported
    image = lab / "valid" / "1.bmp"
    code = readme_example()
    assert len(code.strip().splitlines()) <= 14
    code = re.sub(r'model, image = .*', f'model, image = {str(run / "export" / "resnet18.onnx")!r}, {str(image)!r}',
                  code)
    scope: dict = {}
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        exec(compile(code, "README.md example", "exec"), scope)
    assert run_cli(predict_script.main, ["-m", str(run), str(image), "-o", str(tmp_path / "p.csv"),
                                         "--device", "cpu"]) == 0
    row = pd.read_csv(tmp_path / "p.csv").iloc[0]
    np.testing.assert_allclose(scope["p"], [row["prob_normal"], row["prob_blast"]], atol=1e-4)
    assert printed.getvalue().split()[0] == row["prediction"]


def test_a_missing_onnxruntime_is_one_line(exported: tuple[Path, str], monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    run, _ = exported
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    assert run_cli(export_script.main, ["-m", str(run), "-o", str(run / "none.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: export.py --format onnx needs the optional package 'onnxruntime'")
    assert "pip install -r requirements-extras.txt" in err and "\n" not in err
    assert not (run / "none.onnx").exists()


def test_onnx_with_the_exported_temperature_and_threshold_decides_as_eval_py(exported: tuple[Path, str], lab: Path,
                                                                            tmp_path: Path) -> None:
    import torch

    from core.deploy.export import preprocess_info
    from core.engine import Runtime
    from core.evaluation.ensemble import load_member

    run, _ = exported
    copy = tmp_path / "run"  # eval.py's settings land in copy/eval/, not in the run the other tests share
    copy.mkdir()
    for name in ("best.pt", "config.json"):
        shutil.copy(run / name, copy / name)
    assert eval_script.main(["-m", str(copy), "--data", str(lab), "--split", "valid", "test", "-c", "--bootstrap", "0",
                             "--calibrate", "--threshold", "youden"]) == 0
    # export.py's JSON for the copy, beside the model exported from the same weights (exporting again takes ~10 s)
    info = preprocess_info(load_member(copy, Runtime(torch.device("cpu"))), opset=0)
    (copy / "export").mkdir()
    shutil.copy(run / "export" / "resnet18.onnx", copy / "export" / "resnet18.onnx")
    (copy / "export" / "resnet18.json").write_text(json.dumps(info))
    temperature = json.loads((copy / "eval" / "temperature.json").read_text())["temperature"]
    cut = json.loads((copy / "eval" / "operating_point.json").read_text())["threshold"]
    assert info["temperature"] == temperature and abs(np.log(temperature)) > 0.05
    assert info["threshold"] == {"value": cut, "positive_index": 1, "positive_class": "blast"}
    evaluated = pd.concat([pd.read_csv(copy / "eval" / f) for f in ("valid_probs.csv", "resnet_18_test_probs.csv")])
    code = readme_example()
    compared = 0
    for image, prob_blast, pred in zip(evaluated["ID"], evaluated["prob_blast"], evaluated["pred"]):
        code_here = re.sub(r'model, image = .*', f'model, image = {str(copy / "export" / "resnet18.onnx")!r}, '
                                                  f'{str(lab.parent / image)!r}', code)
        scope: dict = {}
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(code_here, "README.md example", "exec"), scope)
        assert scope["p"][1] == pytest.approx(prob_blast, abs=1e-4)
        if abs(prob_blast - cut) > 1e-4:  # the image the threshold was chosen at sits on it: float rounding decides
            assert scope["k"] == pred
            compared += 1
    assert compared >= len(evaluated) - 1
