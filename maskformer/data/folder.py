"""Users' own semantic data (layout in the README, "Your own data"; also CamVid's): ROOT/images/{split}/ and
ROOT/labels/{split}/ (split may be "") + ROOT/classes.txt (one name a line) or ROOT/meta.json {"classes", ...}.
Label conventions are checked on a few label files: a map whose values run 1..K for K classes, or binary masks saved
as 0/255 with 255 as the ignore value, is ambiguous and stops with an explanation of the two possible fixes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import DatasetError, load_json, read_label, read_names
from ..structures import DatasetMeta
from .dataset import SegDataset
from .semantic import find_dir, pair_by_name, zero_label_reducer

SCAN_FILES = 16


def read_class_spec(root: Path) -> dict:
    """{"classes", "ignore_label"?, "reduce_zero_label"?, "name"?} from ROOT/meta.json or ROOT/classes.txt."""
    if (root / "meta.json").is_file():
        spec = load_json(root / "meta.json")
        if not isinstance(spec.get("classes"), list) or not spec["classes"]:
            raise DatasetError(f"{root / 'meta.json'}: needs a non-empty list 'classes'")
        return spec
    if (root / "classes.txt").is_file():
        names = read_names(root / "classes.txt")
        if not names:
            raise DatasetError(f"{root / 'classes.txt'}: no class names (expected one per line)")
        return {"classes": names}
    raise DatasetError(
        f"{root}: no class-names file; write classes.txt (one class name per line, line i = label value i) or "
        'meta.json ({"classes": [...], "ignore_label": 255})'
    )


def _scan_values(label_files: list[str]) -> np.ndarray:
    """Distinct values over up to SCAN_FILES evenly spaced label files."""
    idx = np.unique(np.linspace(0, len(label_files) - 1, min(SCAN_FILES, len(label_files))).astype(int))
    return np.unique(np.concatenate([np.unique(read_label(label_files[i])) for i in idx]))


def detect_reduce_zero_label(values: np.ndarray, num_classes: int, ignore_label: int, source: str) -> bool:
    """Decide the label convention from the values seen; raise with an explanation when it is ambiguous."""
    vals = values[values != ignore_label]
    top = int(vals.max()) if len(vals) else -1
    if num_classes == 2 and set(values.tolist()) <= {0, 255} and 255 in values and ignore_label == 255:
        raise DatasetError(
            f"{source}: the label maps hold only 0 and 255, and 255 is the ignore value, so class 1 would never be "
            "learned. If 255 marks the foreground, re-save the masks with value 1 (mask // 255); if 255 really means "
            "'not annotated', add a third class or set the ignore value explicitly in meta.json."
        )
    if top == num_classes:
        raise DatasetError(
            f"{source}: label values run up to {top} but there are {num_classes} classes (0..{num_classes - 1}). "
            "If 0 means 'unlabeled' and the classes are 1..K, set reduce_zero_label (\"reduce_zero_label\": true in "
            "meta.json, or data.reduce_zero_label=true): 0 -> ignore, c -> c-1. If 0 is a real class, the class "
            "list is missing one name."
        )
    return False


def folder(
    root: str | Path,
    split: str,
    *,
    ignore_label: int | None = None,
    default_ignore_label: int = 255,
    reduce_zero_label: bool | None = None,
    **kw,
) -> SegDataset:
    """A folder dataset (see the module docstring).

    ignore_label / reduce_zero_label override meta.json; None = meta.json, else default_ignore_label / detection.
    """
    root = Path(root)
    spec = read_class_spec(root)
    image_dir = find_dir([root / "images" / split, root / split / "images"], f"images of split {split!r}")
    label_dir = find_dir(
        [root / "labels" / split, root / "annotations" / split, root / split / "labels"], f"labels of split {split!r}"
    )
    records = pair_by_name(image_dir, label_dir)
    ignore = int(spec.get("ignore_label", default_ignore_label) if ignore_label is None else ignore_label)
    meta = DatasetMeta(str(spec.get("name", root.name)), [str(c) for c in spec["classes"]], ignore_label=ignore)
    reduce = spec.get("reduce_zero_label") if reduce_zero_label is None else reduce_zero_label
    if reduce is None:
        values = _scan_values([r.sem_seg for r in records])
        reduce = detect_reduce_zero_label(values, meta.num_classes, ignore, str(label_dir))
    label_fn = zero_label_reducer(ignore) if reduce else None
    return SegDataset(records, meta, source=str(root), label_fn=label_fn, **kw)
