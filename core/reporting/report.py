"""The experiment report of a folder of runs, as Markdown and as self-contained HTML."""
from __future__ import annotations

import base64
import html
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from common.errors import UserError
from core.evaluation.baseline import baseline_note
from core.reporting.evalfolder import EnsembleReport, run_evaluations
from core.reporting.plots import confusion_panels, plot_confusions, plot_curves
from core.runs import is_cv_run, read_config, read_history
from core.training.cvsummary import report_table as cv_table

# config.json key -> train.py flag, in the order a person would write them
TRAIN_FLAGS = (("epochs", "-e"), ("batch_size", "-b"), ("optimizer", "-o"), ("learning_rate", "-r"),
               ("momentum", "-mm"), ("weight_decay", "-wd"), ("scheduler", "--scheduler"),
               ("warmup_epochs", "--warmup-epochs"), ("label_smoothing", "--label-smoothing"),
               ("data", "--data"), ("layout", "--layout"), ("split", "--split"), ("image_size", "--image-size"),
               ("head", "--head"), ("pretrained", "--pretrained"), ("freeze_epochs", "--freeze-epochs"),
               ("backbone_lr_scale", "--backbone-lr-scale"), ("class_weights", "--class-weights"),
               ("augment", "--augment"), ("ema_decay", "--ema-decay"), ("seed", "--seed"), ("out", "--out"))
# (config.json key, value, flag) for the on/off settings
TRAIN_SWITCHES = (("zero_init_residual", True, "--zero-init-residual"),
                  ("balanced_sampler", True, "--balanced-sampler"), ("amp", True, "--amp"), ("amp", False, "--no-amp"),
                  ("channels_last", True, "--channels-last"), ("channels_last", False, "--no-channels-last"),
                  ("compile", True, "--compile"), ("sync_bn", True, "--sync-bn"), ("cache", False, "--no-cache"),
                  ("ema", True, "--ema"), ("deterministic", True, "--deterministic"))
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1f2328;
  line-height:1.5;max-width:1120px;margin:2rem auto;padding:0 1.5rem;background:#fff}
h1{font-size:1.9rem;margin:0 0 .2rem}h2{font-size:1.35rem;border-bottom:1px solid #d0d7de;padding-bottom:.3rem;
  margin-top:2.4rem}h3{font-size:1.05rem;margin:1.4rem 0 .4rem}.meta{color:#57606a;margin:0 0 1.5rem}
table{border-collapse:collapse;width:100%;font-size:.9rem;margin:.8rem 0 1.2rem}
th,td{border:1px solid #d0d7de;padding:.35rem .6rem;text-align:left;vertical-align:top}
th{background:#f6f8fa;font-weight:600}tbody tr:nth-child(even) td{background:#fafbfc}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.missing,p.missing{color:#7d4e00;font-style:italic}td.missing{background:#fff8c5!important}
figure{margin:1rem 0 1.6rem}figure img{max-width:100%;height:auto;border:1px solid #d0d7de;border-radius:6px}
figcaption{color:#57606a;font-size:.88rem;margin-top:.3rem}
pre{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:.7rem .9rem;white-space:pre-wrap;
  word-break:break-word;font-size:.84rem}code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.note{color:#57606a;font-size:.88rem;font-weight:400}
"""
NUMBER = re.compile(r"^[\d.,%e+-]+( \[.*\])?( \(.*\))?( patients)?$")


@dataclass(frozen=True)
class RunReport:
    """What the report says about one run, read from its folder."""

    path: Path
    model: str
    pretrained: str  # "no", "imagenet" or a weights file
    epochs_run: int
    epochs_planned: int | None
    batch_size: Any
    optimizer: Any
    learning_rate: Any
    best_acc: float | None
    best_epoch: int | None
    metrics: dict[str, dict[str, Any]]  # "valid", "test (TTA)", ... -> eval*/<split>_metrics.json (current ones)
    figures: list[tuple[str, Path]]  # (caption, PNG): Grad-CAM grids and non-valid confusion matrices
    train_command: str
    command_rebuilt: bool  # True when config.json had no "command"
    eval_command: str
    augment: str = "rotate"  # the augmentation policy (runs from before --augment all rotated)
    stale: dict[str, str] = field(default_factory=dict)  # split -> why its evaluation is not current (run: command)


def describe_run(run: Path) -> RunReport:
    """Settings from config.json, best valid accuracy from history.csv, metrics and figures from eval/."""
    cfg = read_config(run)
    history = read_history(run)
    best = history["valid_acc"].idxmax() if len(history) else None
    command = cfg.get("command")
    evaluations = run_evaluations(run)
    return RunReport(
        path=run, model=cfg.get("model") or cfg.get("arch") or run.name.split("-")[0],
        pretrained=str(cfg.get("pretrained") or "no"),
        epochs_run=len(history), epochs_planned=cfg.get("epochs"), batch_size=cfg.get("batch_size"),
        optimizer=cfg.get("optimizer"), learning_rate=cfg.get("learning_rate"),
        best_acc=float(history["valid_acc"][best]) if best is not None else None,
        best_epoch=int(history["epoch"][best]) if best is not None else None,
        metrics=evaluations.metrics, figures=evaluations.figures,
        train_command=command or train_command(cfg, run), command_rebuilt=not command,
        eval_command=eval_command(run),
        augment=str(cfg.get("augment") or "rotate") + (" + EMA" if cfg.get("ema") else ""),
        stale=evaluations.stale)


def train_command(cfg: dict[str, Any], run: Path) -> str:
    """The train.py command line that config.json describes (for runs whose config has no "command")."""
    words = ["python", "train.py", "-m", str(cfg.get("model") or cfg.get("arch") or run.name.split("-")[0])]
    for key, flag in TRAIN_FLAGS:
        if cfg.get(key) is not None:
            words += [flag, str(cfg[key])]
    words += [flag for key, value, flag in TRAIN_SWITCHES if key in cfg and cfg[key] is value]
    words += ["--folds", str(cfg["folds"])] if cfg.get("folds") else []
    words += ["--name", run.name]
    return shlex.join(words)


def eval_command(run: Path) -> str:
    """eval.py on the run, with the --cam N its Grad-CAM grids were drawn with (stored in the PNG)."""
    words = ["python", "eval.py", "-m", str(run)]
    for grid in sorted((run / "eval").glob("*_gradcam.png")):
        try:
            with Image.open(grid) as png:
                cam = re.fullmatch(r"eval\.py --cam (\d+)", png.info.get("Description", ""))
        except OSError:
            continue
        if cam:
            words += ["--cam", cam[1]]
            break
    return shlex.join(words)


def draw_figures(runs: list[Path], out: Path) -> dict[str, Path]:
    """plot.py's accuracy curves and valid confusion matrices, drawn into ``out``."""
    figures = {}
    with_epochs = [run for run in runs if len(read_history(run))]
    try:
        if with_epochs:
            figures["accuracy"] = out / "accuracy.png"
            plot_curves(with_epochs, "accuracy", None, figures["accuracy"])
        if panels := confusion_panels(runs):
            figures["confusion"] = out / "confusion_matrices.png"
            plot_confusions(panels, figures["confusion"])
    except OSError as exc:
        raise UserError(f"cannot write the figures into {out} ({exc.strerror or exc}); choose another --output") \
            from None
    return figures


def missing_eval(run: Path) -> str:
    return f"missing (run: python eval.py -m {run})"


def run_table(reports: list[RunReport]) -> tuple[list[str], list[list[str]]]:
    headers = ["Run", "Model", "Pretrained", "Augment", "Epochs", "Batch", "Optimizer", "Learning rate",
               "Best valid acc", "at epoch"]
    rows = []
    for r in reports:
        planned = f" of {r.epochs_planned}" if r.epochs_planned not in (None, r.epochs_run) else ""
        rows.append([r.path.name, r.model, r.pretrained, r.augment, f"{r.epochs_run}{planned}", cell(r.batch_size),
                     cell(r.optimizer), cell(r.learning_rate),
                     f"{r.best_acc:.2%}" if r.best_acc is not None else "no finished epoch",
                     str(r.best_epoch) if r.best_epoch is not None else "-"])
    return headers, rows


def eval_table(reports: list[RunReport], ensembles: list[EnsembleReport] = ()) -> tuple[list[str], list[list[str]]]:
    """One row per evaluated split of each run, then of each ensemble; a run without valid metrics gets a
    'missing' row (never zeros), a stale evaluation a 'stale' row with the command that refreshes it."""
    headers = ["Run", "Split", "Images", "Accuracy", "Weighted F1", "Macro recall", "ROC-AUC / QW kappa",
               "Majority baseline"]
    rows = []
    for r in reports:
        if "valid" not in r.metrics and "valid" not in r.stale and not is_cv_run(r.path):  # CV: see cv_table
            rows.append([r.path.name, "valid", missing_eval(r.path)])
        rows += [[r.path.name, split, f"stale: {reason}"] for split, reason in r.stale.items()]
        rows += metric_rows(r.path.name, r.metrics)
    for e in ensembles:
        rows += [[e.path.name, split, f"stale: {reason}"] for split, reason in e.stale.items()]
        rows += metric_rows(e.path.name, e.metrics)
    return headers, rows


def metric_rows(name: str, metrics: dict[str, dict[str, Any]]) -> list[list[str]]:
    """The table rows of one evaluation folder: a row per split, and one per split per patient."""
    rows = []
    for split, m in metrics.items():
        rows.append([name, split, cell(m.get("images")), percent(m.get("accuracy")),
                     number(m.get("weighted_f1")), number(m.get("macro_recall")), ranking(m), baseline(m)])
        p = m.get("patients")
        if isinstance(p, dict):
            rows.append([name, f"{split} (per patient)", f"{cell(p.get('patients'))} patients",
                         percent(p.get("accuracy")), number(p.get("weighted_f1")), number(p.get("macro_recall")),
                         ranking(p)])
    return rows


def baseline(m: dict[str, Any]) -> str:
    """The majority-class accuracy, flagged when the model's accuracy interval does not clear it."""
    if not isinstance(m.get("baseline_accuracy"), (int, float)):
        return "-"
    flag = ": not better" if m.get("not_better_than_baseline") else ""
    return f"{m['baseline_accuracy']:.2%} ('{m.get('baseline_class', '?')}'){flag}"


def interval(entry: Any) -> tuple[Any, list[float] | None]:
    """(value, 95% interval or None) of a metric written as a number or as {"value": x, "ci95": [lo, hi]}."""
    if isinstance(entry, dict):
        return entry.get("value"), entry.get("ci95")
    return entry, None


def clinical_lines(r: RunReport | EnsembleReport) -> list[str]:
    """train.py's data audit, and per split: the operating point and the calibration error, where eval.py wrote them."""
    lines = audit_line(r.path)
    for split, m in r.metrics.items():
        op, cal = m.get("operating_point"), m.get("calibration")
        parts = []
        if isinstance(op, dict):
            rate = lambda k: "n/a" if op.get(k) is None else f"{op[k]:.2%}"  # noqa: E731
            parts.append(f"at threshold {op.get('threshold', 0.5):.4g}: sensitivity {rate('sensitivity')}, "
                         f"specificity {rate('specificity')}, PPV {rate('ppv')}, NPV {rate('npv')}")
        if isinstance(cal, dict) and cal.get("ece") is not None:
            parts.append(f"expected calibration error {cal['ece']:.4f}")
        if isinstance(m.get("bootstrap"), dict) and m["bootstrap"].get("resamples"):
            parts.append(f"95% intervals from {m['bootstrap']['resamples']} bootstrap resamples of "
                         f"{m['bootstrap'].get('unit', 'images')}" + (f" ({m['bootstrap']['note']})"
                                                                      if m["bootstrap"].get("note") else ""))
        if m.get("not_better_than_baseline"):
            parts.append(baseline_note(m))
        if parts:
            lines.append(f"{split}: " + "; ".join(parts))
    return lines


def audit_line(run: Path) -> list[str]:
    try:
        return [f"data {json.loads((run / 'audit.json').read_text())['summary']}"]  # written by data.audit
    except (OSError, ValueError, KeyError, TypeError):
        return []


def cell(value: Any) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def percent(entry: Any) -> str:
    value, ci = interval(entry)
    if not isinstance(value, (int, float)):
        return "not in the metrics file"
    return f"{value:.2%}" + (f" [{ci[0] * 100:.2f}, {ci[1] * 100:.2f}]" if ci else "")


def number(entry: Any) -> str:
    value, ci = interval(entry)
    if not isinstance(value, (int, float)):
        return "not in the metrics file"
    return f"{value:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")


def ranking(m: dict[str, Any]) -> str:
    """ROC-AUC for two classes, quadratic weighted kappa for graded classes."""
    if "quadratic_kappa" in m:
        return f"{number(m['quadratic_kappa'])} (kappa)"
    if "roc_auc" in m:
        value = interval(m["roc_auc"])[0]
        return f"{number(m['roc_auc'])} (AUC)" if value is not None else "n/a (one class only)"
    return "not in the metrics file"


def to_markdown(title: str, date: str, reports: list[RunReport], figures: dict[str, Path], out: Path,
                ensembles: list[EnsembleReport] = ()) -> str:
    """report.md: the tables, the figures as relative links, the commands."""
    link = lambda p: Path(os.path.relpath(p.resolve(), out.resolve())).as_posix()  # noqa: E731
    lines = [f"# {title}", "", f"Generated {date} from {len(reports)} run(s){ensemble_count(ensembles)}.", "",
             "## Runs", "", *md_table(*run_table(reports)), "", "## Evaluation", "",
             *md_table(*eval_table(reports, ensembles)), ""]
    for r in (r for r in reports if is_cv_run(r.path)):
        lines += [f"## Cross-validation: {r.path.name}", "", *md_table(*cv_table(r.path)), ""]
    lines += ["## Accuracy per epoch", ""]
    lines += [f"![accuracy per epoch]({link(figures['accuracy'])})" if "accuracy" in figures else
              "No run has a finished epoch yet.", ""]
    lines += ["## Confusion matrices (valid)", ""]
    lines += [f"![valid confusion matrices]({link(figures['confusion'])})" if "confusion" in figures else
              "None: no run has been evaluated (python eval.py -m <run>).", ""]
    if note := cam_note(reports):
        lines += [note, ""]
    for r in reports:
        lines += [f"## {r.path.name}", ""]
        notes = clinical_lines(r)
        lines += [f"- {text}" for text in notes] + ([""] if notes else [])
        lines += [line for caption, png in r.figures for line in (f"![{caption}]({link(png)})", "")]
        lines += [f"Reproduce ({command_note(r)}):", "", "```bash", r.train_command, r.eval_command, "```", ""]
    for e in ensembles:
        lines += [f"## {e.path.name}", "", f"The average of {e.describe_members()}.", ""]
        lines += [f"- {text}" for text in clinical_lines(e)] + ([""] if clinical_lines(e) else [])
        lines += [line for caption, png in e.figures for line in (f"![{caption}]({link(png)})", "")]
    return "\n".join(lines)


def ensemble_count(ensembles: list[EnsembleReport]) -> str:
    return f" and {len(ensembles)} ensemble(s)" if ensembles else ""


def has_cam(r: RunReport) -> bool:
    return any(caption.startswith("Grad-CAM") for caption, _ in r.figures)


def cam_note(reports: list[RunReport]) -> str:
    """One neutral line when no run has Grad-CAM grids: an optional section, not an error."""
    if any(has_cam(r) for r in reports):
        return ""
    return "Grad-CAM: not drawn for these runs (optional: `python eval.py -m <run> --cam 4`)."


def command_note(r: RunReport) -> str:
    if r.command_rebuilt:
        return "train.py command rebuilt from config.json, which has none recorded"
    return "train.py command as recorded in config.json; paths are relative to the folder it ran in"


def md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    cell = lambda text: text.replace("|", "\\|")  # noqa: E731
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(cell(c) for c in row + [""] * (len(headers) - len(row))) + " |" for row in rows)]


def to_html(title: str, date: str, reports: list[RunReport], figures: dict[str, Path],
            ensembles: list[EnsembleReport] = ()) -> str:
    """report.html: the same content with inline CSS and every image as a data: URI (works offline)."""
    e = html.escape
    parts = [f"<h1>{e(title)}</h1>",
             f'<p class="meta">Generated {e(date)} from {len(reports)} run(s){ensemble_count(ensembles)}.</p>',
             "<h2>Runs</h2>", html_table(*run_table(reports)), "<h2>Evaluation</h2>",
             html_table(*eval_table(reports, ensembles)),
             *(f"<h2>Cross-validation: {e(r.path.name)}</h2>" + html_table(*cv_table(r.path))
               for r in reports if is_cv_run(r.path)),
             "<h2>Accuracy per epoch</h2>",
             figure(figures["accuracy"], "Solid: train, dashed: valid; best valid accuracy in the legend.")
             if "accuracy" in figures else '<p class="missing">No run has a finished epoch yet.</p>',
             "<h2>Confusion matrices (valid)</h2>",
             figure(figures["confusion"], "Rows: true class; colours: share of the row; counts in brackets.")
             if "confusion" in figures else
             '<p class="missing">None: no run has been evaluated (python eval.py -m &lt;run&gt;).</p>']
    if cam_note(reports):
        parts.append('<p class="note">Grad-CAM: not drawn for these runs (optional: '
                     '<code>python eval.py -m &lt;run&gt; --cam 4</code>).</p>')
    for r in reports:
        parts.append(f"<h2>{e(r.path.name)}</h2>")
        if clinical_lines(r):
            parts.append("<ul>" + "".join(f"<li>{e(text)}</li>" for text in clinical_lines(r)) + "</ul>")
        parts += [figure(png, caption) for caption, png in r.figures]
        parts.append(f'<h3>Reproduce <span class="note">({e(command_note(r))})</span></h3>'
                     f"<pre><code>{e(r.train_command)}\n{e(r.eval_command)}</code></pre>")
    for ens in ensembles:
        parts += [f"<h2>{e(ens.path.name)}</h2>", f"<p>The average of {e(ens.describe_members())}.</p>"]
        if clinical_lines(ens):
            parts.append("<ul>" + "".join(f"<li>{e(text)}</li>" for text in clinical_lines(ens)) + "</ul>")
        parts += [figure(png, caption) for caption, png in ens.figures]
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{e(title)}</title>\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<style>{CSS}</style>\n</head>\n'
            f"<body>\n" + "\n".join(parts) + "\n</body>\n</html>\n")


def html_table(headers: list[str], rows: list[list[str]]) -> str:
    """A table; a short row's last cell spans the rest, cells that start with 'missing' are highlighted."""
    e = html.escape
    body = []
    for row in rows:
        cells = []
        for i, text in enumerate(row):
            span = len(headers) - len(row) + 1 if i == len(row) - 1 and len(row) < len(headers) else 1
            kind = "missing" if text.startswith(("missing", "stale")) else "num" if i > 0 and NUMBER.match(text) else ""
            cells.append(f"<td{f' class={kind}' if kind else ''}{f' colspan={span}' if span > 1 else ''}>"
                         f"{e(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"


def figure(png: Path, caption: str) -> str:
    """An <img> carrying the PNG itself as a data: URI."""
    try:
        encoded = base64.b64encode(png.read_bytes()).decode("ascii")
    except OSError as exc:
        raise UserError(f"cannot read {png} ({exc.strerror or exc})") from None
    return (f'<figure><img src="data:image/png;base64,{encoded}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")
