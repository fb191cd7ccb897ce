"""Know the data before training: leaks, duplicates, label conflicts, unreadable files, per-split facts.

``audit(source, facts)`` turns a scan (``data.scan``) of every split into audit.py's report;
``quick_audit`` makes the cheap checks on the pixel caches train.py already built. Both return
the same JSON shape::

    {"images": N, "unreadable": [{"path", "error"}],
     "duplicates": [{"kind": "exact" | "near", "items": [{"path", "split", "label"}], ...}],
     "label_conflicts": [...same entries as duplicates...], "patient_overlap": {"train/valid": [ids]},
     "splits": {"train": {"classes": {...}, "sizes": {...}, "modes": {...}, ...}}, "problems": N}

What fails (``problems``): an unreadable file, the same picture in two splits that must be
disjoint (train against every other, valid against every test list), one picture with two labels,
a patient in two such splits. Duplicates inside one split with one label are reported only.
"""
from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from data.patients import IMAGE_GROUP, split_patients
from data.phash import groups, near_pairs
from data.scan import Facts, pixel_digests
from data.sources import DataSource, Split

if TYPE_CHECKING:
    from data.cache import ImageDataset  # imports torch: only for the type


@dataclass(frozen=True)
class Entry:
    """One row of one list: the same file listed in two lists (or twice) is two entries."""

    path: str
    split: str
    label: str | None  # the class name; None in an unlabelled list

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "split": self.split, "label": self.label}


def distinct_splits(source: DataSource) -> tuple[dict[str, Split], dict[str, str]]:
    """The splits to audit, and {list: the earlier list with exactly the same images} for the others
    (the lab's resnet_18/50/152_test.csv list one test set three times: not a leak)."""
    kept: dict[str, Split] = {}
    same: dict[str, str] = {}
    contents: dict[str, set] = {}
    for name, split in source.splits.items():
        labels = split.labels if split.labels is not None else [None] * len(split)
        content = set(zip(split.paths, labels))  # in any order
        twin = next((k for k, c in contents.items() if c == content), None)
        if twin:
            same[name] = twin
        else:
            kept[name], contents[name] = split, content
    return kept, same


def must_be_disjoint(a: str, b: str) -> bool:
    """Training must share no image with any other list, validation none with a test list."""
    pair = {a, b}
    return a != b and ("train" in pair or "valid" in pair)


def entries_of(splits: dict[str, Split], classes: Sequence[str]) -> list[Entry]:
    entries = []
    for name, split in splits.items():
        labels = split.labels if split.labels is not None else [None] * len(split)
        entries += [Entry(str(p), name, None if y is None else classes[y]) for p, y in zip(split.paths, labels)]
    return entries


def describe_group(kind: str, members: list[Entry]) -> dict[str, Any]:
    """A duplicate group: its entries, the splits it spans, whether it leaks or its labels disagree."""
    names = sorted({e.split for e in members})
    labels = {e.label for e in members if e.label is not None}
    leaks = any(must_be_disjoint(a, b) for a in names for b in names)
    return {"kind": kind, "items": [e.to_dict() for e in members], "splits": names,
            "across_splits": leaks, "label_conflict": len(labels) > 1}


def exact_groups(entries: list[Entry], keys: list[str | None]) -> list[list[Entry]]:
    """Entries whose files hold the same pixels (``keys``: a digest per entry, None if unreadable)."""
    by_key: dict[str, list[Entry]] = {}
    for entry, key in zip(entries, keys):
        if key is not None:
            by_key.setdefault(key, []).append(entry)
    return [members for members in by_key.values() if len(members) > 1]


def patient_overlap(splits: dict[str, Split]) -> dict[str, list[str]]:
    """{"a/b": patients in both} for each pair of splits that must be disjoint and that both carry patient
    ids (in their file names, or listed like Kaggle's Patient_ID)."""
    ids = {}
    for name, split in splits.items():
        found = split_patients(split).ids  # an image whose name carries no id is its own group: not a patient
        ids[name] = None if found is None else {i for i in found.tolist() if not i.startswith(IMAGE_GROUP)}
    overlap = {}
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if must_be_disjoint(a, b) and ids[a] and ids[b]:
                overlap[f"{a}/{b}"] = sorted(ids[a] & ids[b])
    return overlap


def split_summary(split: Split, classes: Sequence[str], facts: Facts | None) -> dict[str, Any]:
    """Class counts, and (with ``facts``, rows in the split's order) sizes, modes, bit depths, EXIF orientations."""
    counts = Counter(classes[y] for y in split.labels) if split.labels is not None else {"unlabelled": len(split)}
    summary: dict[str, Any] = {"images": len(split), "classes": dict(counts)}
    if facts is not None:
        ok = facts.error == ""
        summary["sizes"] = dict(Counter(f"{w}x{h}" for w, h in zip(facts.width[ok], facts.height[ok])).most_common())
        summary["modes"] = dict(Counter(facts.mode[ok].tolist()).most_common())
        summary["bit_depths"] = {str(k): v for k, v in Counter(facts.bits[ok].tolist()).most_common()}
        tagged = facts.orientation[ok][facts.orientation[ok] > 0]
        summary["exif_orientations"] = {str(k): v for k, v in sorted(Counter(tagged.tolist()).items())}
        summary["unreadable"] = int((~ok).sum())
    return summary


def add_problem_counts(report: dict[str, Any]) -> dict[str, Any]:
    """Add the label conflicts and the count of problems (what makes audit.py exit 1)."""
    report["label_conflicts"] = [g for g in report["duplicates"] if g["label_conflict"]]
    leaks = sum(g["across_splits"] for g in report["duplicates"])
    patients = sum(bool(v) for v in report["patient_overlap"].values())
    report["problems"] = len(report["unreadable"]) + leaks + len(report["label_conflicts"]) + patients
    return report


def audit(source: DataSource, facts: Facts, near: bool = True) -> dict[str, Any]:
    """The full report; ``facts`` holds a row for every distinct file of ``source`` (any order)."""
    splits, same = distinct_splits(source)
    entries = entries_of(splits, source.classes)
    row = {p: i for i, p in enumerate(facts.path.tolist())}
    rows = [row[e.path] for e in entries]
    readable = facts.error == ""
    keys = [facts.digest[r] if readable[r] else None for r in rows]
    found = [describe_group("exact", m) for m in exact_groups(entries, keys)]
    if near:
        found += near_duplicates(entries, keys, facts, rows)
    found.sort(key=lambda g: (not g["across_splits"], not g["label_conflict"], g["kind"], g["items"][0]["path"]))
    unreadable = [{"path": p, "error": e} for p, e in zip(facts.path.tolist(), facts.error.tolist()) if e]
    report = {"data": str(source.root), "layout": source.layout, "images": len(facts), "entries": len(entries),
              "unreadable": unreadable, "duplicates": found, "patient_overlap": patient_overlap(splits),
              "same_lists": same, "near_duplicates_searched": near,
              "splits": {name: split_summary(split, source.classes, facts.take([row[str(p)] for p in split.paths]))
                         for name, split in splits.items()}}
    return add_problem_counts(report)


def near_duplicates(entries: list[Entry], keys: list[str | None], facts: Facts, rows: list[int]) -> list[dict]:
    """Groups of different pictures that are near copies (data.phash), one representative per exact group."""
    first_row: dict[str, int] = {}
    for key, r in zip(keys, rows):
        if key is not None:
            first_row.setdefault(key, r)
    reps = list(first_row.values())
    digests = list(first_row)
    pairs = near_pairs(facts.hash[reps], facts.weak[reps], facts.detail[reps])
    members_of: dict[str, list[Entry]] = {}
    for entry, key in zip(entries, keys):
        if key is not None:
            members_of.setdefault(key, []).append(entry)
    return [describe_group("near", [e for i in group for e in members_of[digests[i]]])
            for group in groups(len(reps), pairs)]


def quick_audit(splits: dict[str, Split], pixels: dict[str, np.ndarray | None], classes: Sequence[str],
                unreadable: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """The cheap checks train.py makes on every start, from the decoded caches (N x H x W x 3 uint8
    per split; None without a cache: then only a file listed twice counts as a copy): exact copies
    at the cached size, label conflicts, patient overlap."""
    entries = entries_of(splits, classes)
    keys: list[str | None] = []
    for name, split in splits.items():
        keys += row_digests(pixels[name]) if pixels.get(name) is not None else [str(p) for p in split.paths]
    found = [describe_group("exact", m) for m in exact_groups(entries, keys)]
    cached = all(pixels.get(name) is not None for name in splits)
    report = {"images": len(entries), "checked": ("exact copies at the training size" if cached else
                                                  "files listed twice (--no-cache: no pixels compared)")
              + ", label conflicts, patient overlap (python audit.py adds near copies, test lists, file facts)",
              "unreadable": [{"path": p, "error": e} for p, e in unreadable], "duplicates": found,
              "patient_overlap": patient_overlap(splits),
              "splits": {name: split_summary(split, classes, None) for name, split in splits.items()}}
    return add_problem_counts(report)


def audit_training(run_dir: Path, source: DataSource, datasets: Sequence["ImageDataset"]) -> str:
    """train.py's audit: ``quick_audit`` of its datasets into <run>/audit.json (the report shows its
    summary), the images left out into <run>/unreadable.csv; returns the line to print."""
    from data.cache import write_atomically

    splits = {d.split.name: d.split for d in datasets}
    report = quick_audit(splits, {d.split.name: d.pixels for d in datasets}, source.classes, source.unreadable)
    report["summary"] = quick_line(report)
    write_atomically(Path(run_dir) / "audit.json", (json.dumps(report, indent=1) + "\n").encode())
    if source.unreadable:
        table = io.StringIO()
        writer = csv.writer(table, lineterminator="\n")
        writer.writerows([("path", "error"), *source.unreadable])
        write_atomically(Path(run_dir) / "unreadable.csv", table.getvalue().encode())
    return report["summary"]


def row_digests(array: np.ndarray, chunk: int = 64) -> list[str]:
    """A digest of each image of an N x H x W x C array, read in chunks (a memory map stays on disk)."""
    return [key for start in range(0, len(array), chunk) for key in pixel_digests(array[start:start + chunk])]


def quick_line(report: dict[str, Any]) -> str:
    """train.py's one line about its audit."""
    leaks = sum(g["across_splits"] for g in report["duplicates"])
    inside = len(report["duplicates"]) - leaks
    overlap = {k: v for k, v in report["patient_overlap"].items() if v}
    parts = [f"{leaks} exact copies across splits", f"{len(report['label_conflicts'])} label conflicts",
             "patients: " + (", ".join(f"{len(v)} in {k}" for k, v in overlap.items()) if overlap
                             else "no overlap" if report["patient_overlap"] else "no ids in the names")]
    if inside:
        parts.append(f"{inside} duplicate groups inside one split")
    if report["unreadable"]:
        parts.append(f"{len(report['unreadable'])} unreadable files skipped")
    verdict = "check your data (python audit.py)" if report["problems"] else "ok"
    return f"audit: {'; '.join(parts)} -> {verdict}"


def label_name(path: Path | str) -> str:
    """A short name for a file in messages and figures: its folder and name."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name
