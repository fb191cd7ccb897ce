"""k-fold cross-validation runs: one run per fold, the summary, resuming after a kill, ensembles, plots."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import core.training.cv
import core.training.trainer
import eval as evaluate
import plot
import report
import train
from core.runs import find_runs, write_history, write_json
from core.training.cvsummary import BEST_METRICS, write_summary

K = 3
TINY = ["-e", "2", "-b", "8", "--image-size", "32", "--device", "cpu", "--seed", "0"]


def fold_files(fold: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(fold.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def cv_run(lab_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 3-fold CV run killed after fold_1's first epoch, then resumed; what fit was asked to do each time."""
    out = tmp_path_factory.mktemp("cv") / "storage"
    calls: list[tuple[str, int]] = []
    real_fit, real_end_epoch = core.training.cv.fit, core.training.trainer.end_epoch

    def spy_fit(arch, cfg, source, device, dist, resume):  # noqa: ANN001, ANN202
        calls.append((Path(cfg.name).name, resume.ckpt["epoch"] if resume else 0))
        return real_fit(arch, cfg, source, device, dist, resume)

    def killed_in_fold_1(run, epoch, sums):  # noqa: ANN001, ANN202
        real_end_epoch(run, epoch, sums)
        if run.run_dir.name == "fold_1" and epoch == 0:
            raise SystemExit(137)  # as if killed right after fold_1 saved its first epoch

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(core.training.cv, "fit", spy_fit)
        mp.setattr(core.training.trainer, "end_epoch", killed_in_fold_1)
        with pytest.raises(SystemExit):
            train.main(["--data", str(lab_data), "--folds", str(K), "--out", str(out), "--name", "cv", *TINY])
        first = list(calls)
        cv_dir = out / "cv"
        before = fold_files(cv_dir / "fold_0")
        mp.setattr(core.training.trainer, "end_epoch", real_end_epoch)
        calls.clear()
        train.main(["--resume", "latest", "--out", str(out)])
    return {"dir": cv_dir, "out": out, "first": first, "resumed": list(calls), "fold_0_before": before,
            "data": lab_data}


def test_the_killed_run_stopped_in_fold_1(cv_run: dict) -> None:
    assert cv_run["first"] == [("fold_0", 0), ("fold_1", 0)]


def test_resuming_after_a_kill_in_fold_1_trains_folds_1_to_k_only(cv_run: dict) -> None:
    assert cv_run["resumed"] == [("fold_1", 1), ("fold_2", 0)]  # fold_1 continues at its saved epoch


def test_a_finished_fold_is_not_retrained(cv_run: dict) -> None:
    assert fold_files(cv_run["dir"] / "fold_0") == cv_run["fold_0_before"]


def test_every_fold_ran_all_epochs(cv_run: dict) -> None:
    for k in range(K):
        history = pd.read_csv(cv_run["dir"] / f"fold_{k}" / "history.csv")
        assert history["epoch"].tolist() == [1, 2]


def test_each_fold_validates_on_its_own_fold_of_the_pooled_images(cv_run: dict) -> None:
    folds = pd.read_csv(cv_run["dir"] / "folds.csv")
    assert len(folds) == 44 and folds["path"].is_unique  # 32 train + 12 valid pooled
    for k in range(K):
        sizes = json.loads((cv_run["dir"] / f"fold_{k}" / "config.json").read_text())["data_sizes"]
        assert sizes["valid"] == (folds["fold"] == k).sum()
        assert sizes["train"] == (folds["fold"] != k).sum()


def test_latest_points_at_the_cv_run(cv_run: dict) -> None:
    assert (cv_run["out"] / "latest").resolve() == cv_run["dir"].resolve()


def test_summary_rows_give_each_folds_best_and_last_valid_epoch(cv_run: dict) -> None:
    table = pd.read_csv(cv_run["dir"] / "cv_summary.csv")
    assert table["fold"].tolist() == [*map(str, range(K)), "mean", "std"]
    for k in range(K):
        history = pd.read_csv(cv_run["dir"] / f"fold_{k}" / "history.csv")
        best, last = history.loc[history["valid_acc"].idxmax()], history.iloc[-1]
        row = table.iloc[k]
        assert int(row["best_epoch"]) == best["epoch"]
        assert np.allclose([row[m] for m in BEST_METRICS], [best[m] for m in BEST_METRICS])
        assert np.allclose([row["last_valid_acc"], row["last_valid_loss"]], [last["valid_acc"], last["valid_loss"]])


def test_out_of_fold_predictions_score_every_image_once_by_the_model_that_did_not_train_on_it(cv_run: dict) -> None:
    cv_dir = cv_run["dir"]
    oof, folds = pd.read_csv(cv_dir / "oof_probs.csv"), pd.read_csv(cv_dir / "folds.csv")
    assert sorted(oof["path"]) == sorted(folds["path"]) and oof["path"].is_unique
    assert (oof.set_index("path")["fold"] == folds.set_index("path")["fold"]).all()
    for k in range(K):
        trained_on = pd.read_csv(cv_dir / f"fold_{k}" / "splits.csv").query("split == 'train'")["path"]
        assert set(trained_on).isdisjoint(oof.loc[oof["fold"] == k, "path"])
    metrics = json.loads((cv_dir / "oof_metrics.json").read_text())
    assert metrics["images"] == len(folds)
    assert metrics["accuracy"]["value"] == pytest.approx((oof["pred"] == oof["label"]).mean())
    assert metrics["accuracy"]["ci95"] is not None


def test_summary_mean_and_std_match_the_fold_rows(tmp_path: Path) -> None:
    accs = {0: [0.5, 0.8, 0.7], 1: [0.6, 0.65, 0.9], 2: [0.9, 0.4, 0.3], 3: [0.2, 0.3, 0.75]}
    for k, values in accs.items():
        (tmp_path / f"fold_{k}").mkdir()
        write_history(tmp_path / f"fold_{k}", [
            {"epoch": e + 1, "train_loss": 1.0 - a / 2, "train_acc": a / 2, "valid_loss": 1.0 - a, "valid_acc": a,
             "lr": 0.1, "seconds": 1.0} for e, a in enumerate(values)])
    write_summary(tmp_path, 4)
    table = pd.read_csv(tmp_path / "cv_summary.csv").set_index("fold")
    best = np.array([0.8, 0.9, 0.9, 0.75])
    assert np.allclose(table.loc[["0", "1", "2", "3"], "valid_acc"].astype(float), best)
    assert table.loc["mean", "valid_acc"] == pytest.approx(best.mean())
    assert table.loc["std", "valid_acc"] == pytest.approx(best.std(ddof=1))
    assert table.loc["mean", "valid_loss"] == pytest.approx((1 - best).mean())
    summary = json.loads((tmp_path / "cv_summary.json").read_text())
    assert [f["valid_acc"] for f in summary["folds"]] == pytest.approx(best.tolist())
    assert summary["mean"]["valid_acc"] == pytest.approx(best.mean())
    assert summary["std"]["valid_acc"] == pytest.approx(best.std(ddof=1))


def test_plot_and_report_treat_the_cv_run_as_one_run(cv_run: dict, tmp_path: Path) -> None:
    assert find_runs([cv_run["out"]]) == [cv_run["dir"]]
    assert plot.main(["-f", str(cv_run["dir"]), "--output", str(tmp_path)]) == 0
    assert (tmp_path / "accuracy.png").stat().st_size > 1000
    assert report.main(["-f", str(cv_run["dir"]), "--output", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "Cross-validation" in text and "mean" in text


def test_folds_below_2_are_refused(lab_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = train.run_cli(train.main, ["--data", str(lab_data), "--folds", "1", "--out", str(tmp_path), *TINY])
    assert code == 2
    assert "--folds must be at least 2 (got 1)" in capsys.readouterr().err


@pytest.fixture(scope="module")
def evaluated(cv_run: dict) -> Path:
    """eval.py on the CV run: the ensemble, then each fold alone."""
    cv_dir = cv_run["dir"]
    assert evaluate.main(["-m", str(cv_dir), "-c"]) == 0
    assert evaluate.main(["-m", str(cv_dir), "-c", "--folds-separately"]) == 0
    return cv_dir


def test_eval_writes_the_ensembles_kaggle_csv_in_the_test_lists_order(evaluated: Path, cv_run: dict) -> None:
    submission = pd.read_csv(evaluated / "eval" / f"resnet_18_test_{evaluated.name}_submission.csv")
    listed = pd.read_csv(cv_run["data"] / "resnet_18_test.csv")
    assert list(submission.columns) == ["ID", "label"]
    assert submission["ID"].tolist() == listed["Path"].tolist()


def test_the_ensemble_averages_the_fold_models_probabilities(evaluated: Path) -> None:
    ensemble = pd.read_csv(evaluated / "eval" / "resnet_18_test_probs.csv")
    folds = [pd.read_csv(evaluated / f"fold_{k}" / "eval" / "resnet_18_test_probs.csv") for k in range(K)]
    columns = [c for c in ensemble.columns if c.startswith("prob_")]
    mean = np.mean([f[columns].to_numpy() for f in folds], axis=0)
    assert np.allclose(ensemble[columns].to_numpy(), mean, atol=1e-6)
    assert (ensemble["pred"].to_numpy() == mean.argmax(1)).all()


def test_each_fold_alone_is_validated_on_its_own_fold(evaluated: Path) -> None:
    folds = pd.read_csv(evaluated / "folds.csv")
    for k in range(K):
        metrics = json.loads((evaluated / f"fold_{k}" / "eval" / "valid_metrics.json").read_text())
        assert metrics["images"] == (folds["fold"] == k).sum()
        probs = pd.read_csv(evaluated / f"fold_{k}" / "eval" / "valid_probs.csv")
        assert set(probs["ID"]) == set(folds.loc[folds["fold"] == k, "id"])


def test_naming_a_fold_or_its_checkpoint_resumes_the_whole_cv_run(cv_run: dict) -> None:
    cv_dir = cv_run["dir"]
    for named in (cv_dir, cv_dir / "fold_1", cv_dir / "fold_1" / "last.pt"):
        assert core.training.cv.cv_folder(named, folds_too=True).resolve() == cv_dir.resolve()
    assert core.training.cv.cv_folder(cv_dir / "fold_1") is None  # eval.py -m <fold> evaluates that fold alone
