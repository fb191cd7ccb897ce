"""audit.py's output: a short text summary and a PNG montage of the duplicate pairs it found."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from data.audit import label_name

SHOWN = 5  # findings listed per kind; the JSON holds all of them
MONTAGE_GROUPS = 12


def _item(item: dict[str, Any]) -> str:
    label = f" [{item['label']}]" if item["label"] is not None else ""
    return f"{item['split']}:{label_name(item['path'])}{label}"


def _group_line(group: dict[str, Any]) -> str:
    items = group["items"]
    more = f" (+{len(items) - 4} more)" if len(items) > 4 else ""
    return "    " + " = ".join(_item(i) for i in items[:4]) + more


def _section(title: str, lines: list[str], count: int) -> list[str]:
    if not count:
        return [f"  {title}: none"]
    shown = lines[:SHOWN]
    rest = [f"    ... and {count - len(shown)} more (all in --json)"] if count > len(shown) else []
    return [f"  {title}: {count}", *shown, *rest]


def _split_line(name: str, summary: dict[str, Any]) -> str:
    def top(counts: dict[str, int], limit: int = 3) -> str:
        items = list(counts.items())
        text = ", ".join(f"{k} {v}" for k, v in items[:limit])
        return text + (f", +{len(items) - limit} more" if len(items) > limit else "")

    parts = [f"{summary['images']} images", top(summary["classes"], 6)]
    if "sizes" in summary:
        parts += [f"sizes {top(summary['sizes'])}", f"modes {top(summary['modes'])}",
                  f"bits {top(summary['bit_depths'])}"]
        if summary["exif_orientations"]:
            parts.append(f"EXIF orientations {top(summary['exif_orientations'])} (applied)")
    return f"    {name}: " + "; ".join(parts)


def summary_text(report: dict[str, Any], montage: Path | None) -> str:
    """What audit.py prints: each kind of finding with its first few paths, the counts, the verdict."""
    groups = report["duplicates"]
    leaks = [g for g in groups if g["across_splits"]]
    inside = [g for g in groups if not g["across_splits"] and not g["label_conflict"]]
    conflicts = report["label_conflicts"]
    lines = [f"audit of {report['data']} ({report['layout']} layout): {report['images']} files in "
             f"{len(report['splits'])} lists" + "".join(f"; {a} = {b}" for a, b in report["same_lists"].items())]
    lines += _section("unreadable", [f"    {u['path']}: {u['error']}" for u in report["unreadable"]],
                      len(report["unreadable"]))
    for kind in ("exact", "near"):
        if kind == "near" and not report["near_duplicates_searched"]:
            lines.append("  near copies across splits: not searched (--no-near)")
            continue
        found = [g for g in leaks if g["kind"] == kind]
        lines += _section(f"{kind} copies across splits", [_group_line(g) for g in found], len(found))
    lines += _section("label conflicts (one picture, two labels)", [_group_line(g) for g in conflicts],
                      len(conflicts))
    overlap = report["patient_overlap"]
    if not overlap:
        lines.append("  patients in two splits: not checked (the file names carry no patient ids)")
    else:
        shared = [f"    {pair}: {', '.join(ids[:10])}{' ...' if len(ids) > 10 else ''} ({len(ids)})"
                  for pair, ids in overlap.items() if ids]
        lines += _section("patients in two splits", shared, len(shared))
    lines += _section("other duplicates (inside one split or between test lists; not an error)",
                      [_group_line(g) for g in inside], len(inside))
    lines.append("  per split:")
    lines += [_split_line(name, s) for name, s in report["splits"].items()]
    if montage is not None:
        lines.append(f"  duplicate pairs drawn in {montage}")
    problems = report["problems"]
    if problems == 1:
        lines.append("1 problem that breaks training or inflates results")
    else:
        lines.append(f"{problems} problems that break training or inflate results" if problems else "no problems found")
    return "\n".join(lines)


def draw_montage(report: dict[str, Any], out: Path, groups: int = MONTAGE_GROUPS) -> Path | None:
    """A PNG with one row per duplicate group (problems first): two of its pictures side by side,
    each titled with its list, label and file. None if there are no duplicates."""
    chosen = report["duplicates"][:groups]
    if not chosen:
        out.unlink(missing_ok=True)  # an earlier audit's pairs must not be taken for this one's
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from data.preprocess import decode
    from data.sources import DataError

    fig, axes = plt.subplots(len(chosen), 2, figsize=(6.4, 3.2 * len(chosen)), squeeze=False)
    for row, group in enumerate(chosen):
        items = _two_sides(group)
        verdict = ("label conflict" if group["label_conflict"] else "across splits" if group["across_splits"]
                   else "no leak")
        for col, item in enumerate(items):
            ax = axes[row, col]
            ax.set_axis_off()
            try:
                ax.imshow(decode(Path(item["path"]), draft_side=256).rgb)
            except DataError:
                ax.text(0.5, 0.5, "unreadable", ha="center", va="center")
            ax.set_title(f"{group['kind']} copy, {verdict}\n{_item(item)}" if col == 0 else f"\n{_item(item)}",
                         fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _two_sides(group: dict[str, Any]) -> list[dict[str, Any]]:
    """The first item and the first that differs from it: in label for a conflict, else in split (else the second)."""
    items = group["items"]
    field = "label" if group["label_conflict"] else "split"
    other = next((i for i in items[1:] if i[field] != items[0][field]), items[1])
    return [items[0], other]
