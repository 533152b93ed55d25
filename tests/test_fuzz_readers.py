"""Property-based checks of every reader and parser: random and mutated input ends in the project's own named error
(FormatError/DatasetError, ConfigError, CheckpointError, UnsafePickleError) or in a valid result, never in another
exception type. Bounded here (a few examples each, a deadline per example); `benchmarks/fuzz.py` runs the same tests
with many examples (MASKFORMER_FUZZ_EXAMPLES)."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from _eval_data import write_panoptic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from maskformer import io as fmt
from maskformer.checkpoint import CheckpointError, load_safetensors, save_safetensors
from maskformer.config import Config, ConfigError, apply_overrides, get_preset
from maskformer.convert.safe_pickle import UnsafePickleError, load_weights_pickle
from maskformer.evaluation.files import score_panoptic

pytestmark = pytest.mark.fuzz
EXAMPLES = int(os.environ.get("MASKFORMER_FUZZ_EXAMPLES", "12"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=5),
    database=None,  # nothing written into the repository
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def mutate(data: bytes, draw) -> bytes:
    """Truncate, overwrite a few bytes, or insert some, at positions drawn by hypothesis."""
    kind = draw(st.sampled_from(["truncate", "flip", "insert"]))
    if not data:
        return data
    pos = draw(st.integers(0, len(data) - 1))
    if kind == "truncate":
        return data[:pos]
    if kind == "flip":
        new = draw(st.binary(min_size=1, max_size=4))
        return data[:pos] + new + data[pos + len(new) :]
    return data[:pos] + draw(st.binary(min_size=1, max_size=16)) + data[pos:]


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)
    img.save(buf, format="PNG")
    return buf.getvalue()


def valid_pngs() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 4, (9, 13, 3), dtype=np.uint8) * 60
    grey = rng.integers(0, 5, (9, 13), dtype=np.uint8)
    return {
        "rgb": png_bytes(rgb),
        "rgba": png_bytes(rgb, "RGBA"),
        "p": png_bytes(rgb, "P"),
        "l": png_bytes(grey),
        "i16": png_bytes(grey.astype(np.uint16) * 300),
        "1": png_bytes(grey > 2),
        "la": png_bytes(grey, "LA"),
    }


@pytest.fixture(params=["wuffs", "libspng", "pillow"])
def decoder(request, monkeypatch):
    """Each PNG decoding path (wuffs through pywuffs, libspng through imagecodecs, when installed; Pillow alone)."""
    if request.param != "pillow":
        pytest.importorskip(fmt.PNG_DECODER_PACKAGES[request.param])
    monkeypatch.setattr(fmt, "png_decoders", lambda: () if request.param == "pillow" else (request.param,))
    return request.param


def read_all(path: Path) -> None:
    """Every image reader on one file: a valid result or a FormatError."""
    for reader in (fmt.read_label, fmt.read_panoptic, fmt.read_image, fmt.image_size):
        try:
            out = reader(path)
        except fmt.FormatError as e:
            assert str(path) in str(e)
            continue
        if reader is fmt.image_size:
            assert len(out) == 2
        elif reader is fmt.read_image:
            assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
        else:
            assert out.dtype == np.int32 and out.ndim == 2


# ------------------------------------------------------------------------------------------------ images
@FUZZ
@given(data=st.binary(max_size=300) | st.binary(max_size=40).map(lambda b: b"\x89PNG\r\n\x1a\n" + b))
def test_random_bytes_as_images(tmp_path, decoder, data):
    path = tmp_path / "x.png"
    path.write_bytes(data)
    read_all(path)


@FUZZ
@given(st.data())
def test_mutated_pngs(tmp_path, decoder, data):
    name = data.draw(st.sampled_from(sorted(valid_pngs())))
    path = tmp_path / f"{name}.png"
    path.write_bytes(mutate(valid_pngs()[name], data.draw))
    read_all(path)


@FUZZ
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    mode=st.sampled_from(["RGB", "RGBA", "P", "L", "LA", "1", "I;16", "I", "F"]),
)
def test_odd_modes_and_sizes(tmp_path, decoder, h, w, mode):
    arr = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode) if mode not in ("I;16",) else Image.fromarray(arr[..., 0].astype("<u2"))
    ext = ".tif" if mode in ("F", "I") else ".png"
    img.save(tmp_path / f"x{ext}")
    read_all(tmp_path / f"x{ext}")


# ------------------------------------------------------------------------------------------------ COCO panoptic JSON
@pytest.fixture(scope="module")
def panoptic_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("pan")
    cats = [{"id": 1, "isthing": 1, "name": "a"}, {"id": 2, "isthing": 0, "name": "b"}]
    g = np.array([[1, 1, 2, 2, 0], [1, 1, 2, 2, 2]])
    p = np.array([[3, 3, 3, 4, 4], [3, 3, 4, 4, 4]])
    gs = [{"id": 1, "category_id": 1, "iscrowd": 0, "area": 4}, {"id": 2, "category_id": 2, "iscrowd": 0, "area": 5}]
    ps = [{"id": 3, "category_id": 1}, {"id": 4, "category_id": 2}]
    gt = write_panoptic(root, "gt", [(5, g, gs), (6, g, gs)], cats)
    pred = write_panoptic(root, "pred", [(5, p, ps), (6, p, ps)], cats)
    return gt, pred


def mutate_json(doc, draw):
    """Replace or delete one value somewhere in a JSON document, or replace the document."""
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)
    node, path = doc, []
    while isinstance(node, dict | list) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        path.append((node, key))
        node = node[key]
    if not path:
        return draw(JSON)
    parent, key = path[-1]
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[key]
    else:
        parent[key] = draw(JSON | st.integers(-3, 10) | st.sampled_from(["a.png", "5", "", "../gt"]))
    return doc


@FUZZ
@given(st.data())
def test_mutated_coco_panoptic_json(panoptic_files, tmp_path, data):
    gt, pred = panoptic_files
    which = data.draw(st.sampled_from(["gt", "pred"]))
    src = gt if which == "gt" else pred
    bad = tmp_path / f"{which}.json"
    bad.write_text(json.dumps(mutate_json(json.loads(src.read_text()), data.draw)))
    folders = {"gt_folder": gt.with_suffix(""), "pred_folder": pred.with_suffix("")}
    args = (bad, pred) if which == "gt" else (gt, bad)
    try:
        out = score_panoptic(*args, workers=0, **folders)
    except fmt.FormatError:
        return
    assert 0 <= out["num_images"] <= 2


@FUZZ
@given(text=st.text(max_size=60) | st.binary(max_size=60).map(lambda b: b.decode("latin1")))
def test_random_json_text(panoptic_files, tmp_path, text):
    gt, pred = panoptic_files
    bad = tmp_path / "bad.json"
    bad.write_bytes(text.encode("utf-8", "surrogatepass"))
    with pytest.raises(fmt.FormatError):
        score_panoptic(gt, bad, workers=0, gt_folder=gt.with_suffix(""), pred_folder=pred.with_suffix(""))


# ------------------------------------------------------------------------------------------------ folder datasets
@FUZZ
@given(
    spec=st.sampled_from(["classes.txt", "meta.json", None]),
    spec_text=st.text(max_size=40),
    layout=st.sampled_from(["images/train", "train/images", "none"]),
    n_images=st.integers(0, 2),
    n_labels=st.integers(0, 2),
    label_kind=st.sampled_from(["grey", "rgb", "garbage", "big"]),
)
def test_folder_layouts(tmp_path_factory, spec, spec_text, layout, n_images, n_labels, label_kind):
    from maskformer.data.semantic import folder

    root = tmp_path_factory.mktemp("folder")
    if spec:
        (root / spec).write_text(spec_text)
    if layout != "none":
        img_dir = root / layout
        lab_dir = root / layout.replace("images", "labels")
        img_dir.mkdir(parents=True)
        lab_dir.mkdir(parents=True)
        for i in range(n_images):
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img_dir / f"im{i}.png")
        for i in range(n_labels):
            arr = {"grey": np.ones((8, 8), np.uint8), "rgb": np.zeros((8, 8, 3), np.uint8)}.get(label_kind)
            if arr is None and label_kind == "big":
                arr = np.full((8, 8), 40000, np.uint16)
            if arr is None:
                (lab_dir / f"im{i}.png").write_bytes(b"\x89PNG garbage")
            else:
                Image.fromarray(arr).save(lab_dir / f"im{i}.png")
    try:
        ds = folder(root, "train")
    except fmt.DatasetError:
        return
    assert len(ds) >= 1


# ------------------------------------------------------------------------------------------------ config, --opts
@FUZZ
@given(st.data())
def test_config_from_mutated_dict(data):
    doc = json.loads(json.dumps(get_preset("maskformer_r18_synth").to_dict()))  # JSON types, as config.json has
    try:
        Config.from_dict(mutate_json(doc, data.draw))
    except (ConfigError, KeyError):  # KeyError: unknown keys (tests/test_config.py asserts that type)
        pass


KEYS = ["model.num_queries", "model.backbone", "data.crop_size", "train.base_lr", "inference.task", "train.amp"]


@FUZZ
@given(
    items=st.lists(
        st.tuples(st.sampled_from([*KEYS, "model", "nope.x", "model.nope", "", "a.b.c"]), st.text(max_size=12)).map(
            lambda kv: f"{kv[0]}={kv[1]}"
        )
        | st.text(max_size=20),
        max_size=3,
    )
)
def test_opts_overrides(items):
    try:
        apply_overrides(Config(), items)
    except (ConfigError, KeyError):  # KeyError: unknown section or key (tests/test_config.py asserts that type)
        pass


# ------------------------------------------------------------------------------------------------ weight files
@pytest.fixture(scope="module")
def safetensors_bytes(tmp_path_factory):
    import torch

    path = tmp_path_factory.mktemp("st") / "w.safetensors"
    save_safetensors({"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2, dtype=torch.int64)}, path)
    return path.read_bytes()


@FUZZ
@given(st.data())
def test_mutated_safetensors(tmp_path, safetensors_bytes, data):
    header_len = struct.unpack("<Q", safetensors_bytes[:8])[0]
    blob = safetensors_bytes
    if data.draw(st.booleans()):  # a new (random or mutated) JSON header, data section kept
        header = json.loads(blob[8 : 8 + header_len])
        text = json.dumps(mutate_json(header, data.draw)).encode()
        blob = struct.pack("<Q", len(text)) + text + blob[8 + header_len :]
    else:
        blob = mutate(blob, data.draw)
    path = tmp_path / "w.safetensors"
    path.write_bytes(blob)
    try:
        load_safetensors(path)
    except CheckpointError as e:
        assert str(path) in str(e)


@FUZZ
@given(st.data())
def test_mutated_and_random_pickles(tmp_path, data):
    obj = {"model": {"w": np.arange(4, dtype=np.float32), "n": [1, 2.5, "x", (3, None)]}, "__author__": "x"}
    base = pickle.dumps(obj, protocol=data.draw(st.integers(0, 5)))
    blob = data.draw(st.binary(max_size=80)) if data.draw(st.integers(0, 3)) == 0 else mutate(base, data.draw)
    path = tmp_path / "w.pkl"
    path.write_bytes(blob)
    try:
        load_weights_pickle(path)
    except (UnsafePickleError, CheckpointError) as e:
        assert str(path) in str(e)
