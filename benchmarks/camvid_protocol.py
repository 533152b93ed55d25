"""CamVid's sequences and the held-out-sequence protocol used by benchmarks/camvid.py.

CamVid's 367 training frames come from three drives, named by the file-name prefix: 0001TP (62 frames), 0006R0
(101) and 0016E5 (204). Every one of the 101 val frames is from 0016E5, and they lie in a gap of the training frames
of that drive (train 0016E5_07920 and 0016E5_08190 bracket val 0016E5_07959..08159): the usual val number partly
measures memory of one road. Protocols:

- "val": the usual split, train on the 367 train frames, score on the 101 val frames.
- a sequence name S: train on the train frames of the two other drives, score on every frame of S (train and val
  splits; 62, 101 or 305 frames) -- scenes from a drive the model never saw.

The split is a filter on the datasets' record lists (no data is copied); each protocol is checked to share no frame
and, when held out, no drive between training and scoring.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from maskformer.data import SegDataset, build_dataset

SEQUENCES = ("0001TP", "0006R0", "0016E5")
PROTOCOLS = ("val", *SEQUENCES)


def sequence_of(path: str | Path) -> str:
    """The drive of a CamVid frame from its file name ("0006R0_f01230.jpg" -> "0006R0")."""
    seq = Path(path).name.split("_", 1)[0]
    if seq not in SEQUENCES:
        raise ValueError(f"{path}: file name does not start with one of the CamVid sequences {', '.join(SEQUENCES)}")
    return seq


def frame_counts(ds: SegDataset) -> dict[str, int]:
    """{sequence: number of frames} of a dataset, in SEQUENCES order (sequences without frames left out)."""
    counts = Counter(sequence_of(r.image) for r in ds.records)
    return {s: counts[s] for s in SEQUENCES if counts[s]}


def _keep(ds: SegDataset, sequences: set[str]) -> SegDataset:
    ds.records = [r for r in ds.records if sequence_of(r.image) in sequences]
    return ds


def protocol_datasets(cfg, protocol: str) -> tuple[SegDataset, SegDataset]:
    """(train_set with cfg's training recipe, val_set at the original resolution) for `protocol` (see PROTOCOLS)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"--holdout {protocol!r}: expected one of {', '.join(PROTOCOLS)} or all")
    data = cfg.data
    train = build_dataset(data, data.train_split, train=True)
    if protocol == "val":
        val = build_dataset(data, data.val_split, train=False)
    else:
        _keep(train, set(SEQUENCES) - {protocol})
        val = _keep(build_dataset(data, data.train_split, train=False), {protocol})
        val.records += _keep(build_dataset(data, data.val_split, train=False), {protocol}).records
    check_disjoint(train, val, protocol)
    return train, val


def check_disjoint(train: SegDataset, val: SegDataset, protocol: str) -> None:
    """No frame (by file name) in both sets; for a held-out drive, no frame of it in training and none else scored."""
    shared = {Path(r.image).name for r in train.records} & {Path(r.image).name for r in val.records}
    if shared:
        example = sorted(shared)[:3]
        raise ValueError(f"protocol {protocol}: {len(shared)} frames both trained on and scored, e.g. {example}")
    if protocol != "val":
        seen, scored = set(frame_counts(train)), set(frame_counts(val))
        if protocol in seen or scored != {protocol}:
            raise ValueError(f"protocol {protocol}: training drives {sorted(seen)}, scored drives {sorted(scored)}")
    if not train.records or not val.records:
        raise ValueError(f"protocol {protocol}: {len(train)} training and {len(val)} scored frames")


def expand(holdouts: list[str]) -> list[str]:
    """Command-line protocol names in order, "all" -> the three drives, duplicates dropped."""
    out: list[str] = []
    for h in holdouts:
        for p in SEQUENCES if h == "all" else (h,):
            if p not in out:
                out.append(p)
    return out
