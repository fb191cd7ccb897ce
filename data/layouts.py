"""open_data: detect which layout a folder holds and read it into a DataSource."""
from __future__ import annotations

from pathlib import Path

from common.choices import LAYOUTS, SPLIT_METHODS
from data.cells import kaggle_base, open_kaggle, open_lab
from data.generic import find_label_csv, open_csv, open_folders
from data.retina import open_retina_kaggle, open_retina_lab
from data.sources import LAYOUT_NEEDS, DataError, DataSource, class_folders


def open_data(root: str | Path, layout: str = "auto", split: str = "patient",
              valid_fraction: float = 0.2, seed: int = 0) -> DataSource:
    """Find and read a data set under ``root`` (layout auto-detected unless named).

    ``split`` says how a layout without a fixed validation list is divided: "patient"
    (Kaggle and retina: no patient on both sides, stratified; elsewhere stratified by image),
    "fold" (Kaggle: the last fold validates) or "random" (stratified, image level).
    Every image path is checked here; pixels are read later, by ``load_image``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist or is not a folder")
    if layout != "auto" and layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r}; choices: auto, {', '.join(LAYOUTS)}")
    if split not in SPLIT_METHODS:
        raise DataError(f"unknown split method {split!r}; choices: {', '.join(SPLIT_METHODS)}")
    if not 0.0 < valid_fraction < 1.0:
        raise DataError(f"valid_fraction must be between 0 and 1, got {valid_fraction}")
    found = layout if layout != "auto" else detect_layout(root)
    if found is None:
        looked = "; ".join(f"{name}: {needs}" for name, needs in LAYOUT_NEEDS.items())
        inside = [child.name for child in sorted(root.iterdir()) if child.is_dir() and detect_layout(child)]
        hint = f" (a data set is in {', '.join(inside)}/: pass that folder)" if inside else ""
        raise DataError(f"no recognised data layout in {root}{hint}; looked for {looked}")
    if split == "fold" and found != "kaggle":
        raise DataError(f"split='fold' needs the kaggle layout, but {root} has the {found} layout")
    if found == "lab":
        return open_lab(root)
    if found == "kaggle":
        return open_kaggle(root, split, valid_fraction, seed)
    if found == "retina-lab":
        return open_retina_lab(root, split, valid_fraction, seed)
    if found == "retina-kaggle":
        return open_retina_kaggle(root, split, valid_fraction, seed)
    if found == "csv":
        return open_csv(root, split, valid_fraction, seed)
    return open_folders(root, split, valid_fraction, seed)


def detect_layout(root: Path) -> str | None:
    if (root / "train.csv").is_file() and (root / "valid.csv").is_file():
        return "lab"
    if kaggle_base(root) is not None:
        return "kaggle"
    if (root / "train_img.csv").is_file() and (root / "train_label.csv").is_file():
        return "retina-lab"
    if (root / "trainLabels.csv").is_file():
        return "retina-kaggle"
    if find_label_csv(root) is not None:
        return "csv"
    if class_folders(root / "train") or (not (root / "train").exists() and len(class_folders(root)) >= 2):
        return "folders"
    return None
