"""The train and valid lists a run used (``<run>/splits.csv``), read back so that a run is evaluated and
resumed on its own split, never on one re-made from whatever is on disk now.

    splits_csv(source)                    -> the text of splits.csv: split,path,label,size,mtime_ns
    restore_splits(source, run_dir)       -> Restored: train/valid from the saved lists, what changed, a note
    splits_for_resume(source, run_dir, accept_change) -> the same, refusing a changed data set unless accepted

The saved lists decide which image is train and which valid; the images and labels are read as they are
now. Images added since are left out (in valid they could be training images of a re-made split), images
removed since are dropped, and the change is said in one line: added, removed, modified (size or time),
relabelled. A run from before splits.csv re-splits as it always did, with a note, and its data
fingerprint (config.json "data_fingerprint") tells whether the data changed since.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import pandas as pd

from data.sources import DataError, DataSource, make_split

SPLITS_FILE = "splits.csv"
SAVED = ("train", "valid")
COLUMNS = ("split", "path", "label", "size", "mtime_ns")  # split,path,label: the contract; size/mtime: "modified"
ACCEPT_FLAG = "--accept-data-change"


@dataclass(frozen=True)
class DataChange:
    """How the data differs from what a run was trained on (counts over train + valid).

    ``counts`` is False for a run without splits.csv: its fingerprint only says *that* something changed.
    """

    added: int = 0
    removed: int = 0
    modified: int = 0
    relabelled: int = 0
    counts: bool = True

    def __bool__(self) -> bool:
        return not self.counts or any((self.added, self.removed, self.modified, self.relabelled))

    def line(self) -> str:
        """One line saying what changed."""
        if not self.counts:
            return "the data changed since training (its fingerprint differs; the run saved no lists to say how)"
        parts = [f"{self.added} added (left out)", f"{self.removed} removed", f"{self.modified} modified",
                 f"{self.relabelled} relabelled"]
        return "the data changed since training: " + ", ".join(parts)


@dataclass(frozen=True)
class Restored:
    """The data source with the run's own train/valid (its ``note`` says so), what changed since, and a line
    for the user ("" when the lists were used and nothing changed)."""

    source: DataSource
    change: DataChange
    note: str
    trained_on: dict[str, int] = field(default_factory=dict)  # per test list: its images the run(s) trained on


def splits_csv(source: DataSource) -> str:
    """splits.csv for ``source``'s train and valid lists: one row per image, with its size and mtime."""
    rows = []
    for name in SAVED:
        split = source.splits[name]
        for path, label in zip(split.paths, split.labels or ()):
            stat = path.stat()
            rows.append((name, str(path), label, stat.st_size, stat.st_mtime_ns))
    return pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(index=False)


def read_splits(run_dir: Path) -> pd.DataFrame | None:
    """A run's splits.csv, or None if it has none (trained before the lists were saved); DataError if damaged."""
    path = run_dir / SPLITS_FILE
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path, dtype={"split": str, "path": str}, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the run's train/valid lists ({exc.__class__.__name__})") from None
    missing = [c for c in COLUMNS[:3] if c not in table.columns]
    if missing or not set(SAVED) <= set(table["split"]):
        raise DataError(f"{path}: not a list of the run's images (needs columns split,path,label and rows "
                        f"for train and valid); the file is damaged")
    return table


def restore_splits(source: DataSource, run_dir: Path, others: Sequence[Path] = ()) -> Restored:
    """``source`` with the train and valid lists the run in ``run_dir`` used, and what changed since.

    ``others``: the runs of the other members of an ensemble; the note names any that used other lists
    (its training images may then be in this valid).
    """
    saved = read_splits(run_dir)
    restored = _restore(source, run_dir, saved)
    theirs = {other: read_splits(other) for other in others}
    differ = [other.name for other, table in theirs.items() if saved is not None and table is not None
              and _rows(table) != _rows(saved)]
    lines = [restored.note] if restored.note else []
    if differ:
        lines.append(f"{', '.join(differ)} used other train/valid lists than {run_dir.name}: valid may hold images "
                     f"{'it' if len(differ) == 1 else 'they'} trained on")
    leaks = count_trained_on(source, [t for t in (saved, *theirs.values()) if t is not None])
    lines += [f"WARNING: {n} of the {len(source.splits[name])} images of {name} are in the training list the "
              f"model{'s' if others else ''} learnt from ({SPLITS_FILE}): its scores are optimistic"
              for name, n in leaks.items()]
    return replace(restored, note="; ".join(lines), trained_on=leaks)


def count_trained_on(source: DataSource, tables: Sequence[pd.DataFrame]) -> dict[str, int]:
    """Per test list of ``source`` (not train/valid), how many of its images (by real path) are in the train
    rows of ``tables`` (runs' splits.csv); lists with none are left out."""
    train = {str(Path(p).resolve()) for table in tables for p in table.loc[table["split"] == "train", "path"]}
    counts = {name: sum(str(p.resolve()) in train for p in split.paths)
              for name, split in source.splits.items() if name not in SAVED}
    return {name: n for name, n in counts.items() if n}


def _rows(table: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(table["split"], table["path"]))


def _restore(source: DataSource, run_dir: Path, saved: pd.DataFrame | None) -> Restored:
    if saved is None:
        return _without_lists(source, run_dir)
    now = {str(p): (name, i) for name in SAVED for i, p in enumerate(source.splits[name].paths)}
    kept = saved[saved["path"].isin(now.keys())]
    if not len(kept):
        note = (f"none of the {len(saved)} images in {run_dir / SPLITS_FILE} is in {source.root} now (moved?); "
                f"train/valid re-made from the data as it is now")
        return Restored(replace(source, note=f"{source.note}; {note}"), DataChange(len(now), len(saved)), note)
    splits = dict(source.splits)
    relabelled = modified = 0
    for name in SAVED:
        rows = kept[kept["split"] == name]
        where = [now[p] for p in rows["path"]]
        labels = [source.splits[s].labels[i] for s, i in where]
        relabelled += sum(int(a) != b for a, b in zip(rows["label"], labels))
        modified += _modified(rows)
        splits[name] = make_split(name, [Path(p) for p in rows["path"]], labels,
                                  [source.splits[s].ids[i] for s, i in where], f"{run_dir / SPLITS_FILE}")
    change = DataChange(added=len(now) - len(kept), removed=len(saved) - len(kept), modified=modified,
                        relabelled=relabelled)
    used = f"train/valid: the lists this run used ({run_dir / SPLITS_FILE})"
    note = f"{change.line()}; {used}" if change else ""
    return Restored(replace(source, splits=splits, note=note or used), change, note)


def splits_for_resume(source: DataSource, run_dir: Path, accept_change: bool) -> Restored:
    """``restore_splits`` for train.py --resume: a changed data set is refused unless ``accept_change``."""
    restored = restore_splits(source, run_dir)
    if restored.change and not accept_change:
        raise DataError(f"{run_dir}: {restored.change.line()}; resume with {ACCEPT_FLAG} to continue on the "
                        f"run's own lists as they are now, or start a new run")
    return restored


def _modified(rows: pd.DataFrame) -> int:
    """How many of the saved rows' files differ in size or modification time from when they were saved."""
    if not {"size", "mtime_ns"} <= set(rows.columns):
        return 0
    count = 0
    for path, size, mtime in zip(rows["path"], rows["size"], rows["mtime_ns"]):
        stat = Path(path).stat()
        count += (stat.st_size, stat.st_mtime_ns) != (int(size), int(mtime))
    return count


def _without_lists(source: DataSource, run_dir: Path) -> Restored:
    """A run from before splits.csv: the re-made split, and whether its fingerprint still matches config.json."""
    saved = _fingerprints(run_dir)
    changed = any(name in saved and saved[name] != source.splits[name].fingerprint() for name in SAVED)
    change = DataChange(counts=False) if changed else DataChange()
    note = (f"{run_dir} has no {SPLITS_FILE} (a run from before it was saved, or a checkpoint outside its run "
            f"folder): train/valid re-made from the data now")
    if changed:
        note += f"; {change.line()}, so valid may hold images the run trained on"
    return Restored(replace(source, note=f"{source.note}; {note}" if source.note else note), change, note)


def _fingerprints(run_dir: Path) -> dict[str, str]:
    """config.json's "data_fingerprint" per split ({} if absent or unreadable: then nothing can be compared)."""
    try:
        saved = json.loads((run_dir / "config.json").read_text()).get("data_fingerprint")
    except (OSError, ValueError, AttributeError):
        return {}
    return saved if isinstance(saved, dict) else {}

