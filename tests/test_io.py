"""maskformer.io: semantic PNGs, COCO panoptic PNG + JSON, COCO RLE (numpy, no pycocotools), errors, dtypes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from maskformer import io as fmt
from maskformer.inference import Instances
from maskformer.io import read_label, read_panoptic
from maskformer.structures import DatasetMeta


def test_rle_hand_computed_strings():
    """Column-major runs starting with 0s; COCO's 5-bit chars, differences from the third count on."""
    mask = np.array([[0, 1], [1, 1]], dtype=bool)  # column-major: 0, 1, 1, 1 -> counts [1, 3]
    assert fmt.rle_counts(mask).tolist() == [1, 3]
    assert fmt.rle_encode(mask) == {"size": [2, 2], "counts": "13"}
    counts = np.array([0, 100, 5, 7])  # 100 -> "T3"; 7 - 100 = -93 -> "SM"
    assert fmt._encode_counts(counts) == "0T35SM"
    assert fmt._decode_string("0T35SM") == [0, 100, 5, 7]


@pytest.mark.parametrize("kind", ["random", "empty", "full", "first_set", "wide"])
def test_rle_round_trip(kind):
    rng = np.random.default_rng(0)
    shape = (37, 500) if kind == "wide" else (13, 17)
    mask = {
        "random": rng.random(shape) > 0.6,
        "empty": np.zeros(shape, bool),
        "full": np.ones(shape, bool),
        "first_set": np.eye(*shape, dtype=bool),
        "wide": rng.random(shape) > 0.01,
    }[kind]
    rle = fmt.rle_encode(mask)
    assert rle["size"] == list(shape) and isinstance(rle["counts"], str)
    np.testing.assert_array_equal(fmt.rle_decode(rle), mask)
    counts = fmt.rle_counts(mask)
    assert counts.sum() == mask.size and (counts[1:] > 0).all()
    np.testing.assert_array_equal(fmt.rle_decode({"size": list(shape), "counts": counts.tolist()}), mask)


def test_rle_decode_rejects_wrong_size():
    with pytest.raises(ValueError, match="expected 3 x 3"):
        fmt.rle_decode({"size": [3, 3], "counts": [4, 1]})


META = DatasetMeta(name="t", class_names=["car", "person", "sky"], is_thing=[True, True, False], dataset_ids=[3, 1, 27])


def test_panoptic_png_and_json_follow_coco_rules(tmp_path):
    ids = np.zeros((6, 8), dtype=np.int32)
    ids[1:3, 2:5] = 1
    ids[4:, :] = 2
    ids[0, 7] = 300  # an id needing the G channel
    segments = [
        {"id": 1, "category_id": 0, "dataset_category_id": 3, "isthing": True},
        {"id": 2, "category_id": 2, "dataset_category_id": 27, "isthing": False},
        {"id": 300, "category_id": 1, "dataset_category_id": 1, "isthing": True},
    ]
    fmt.write_panoptic(tmp_path / "a.png", torch.from_numpy(ids))
    np.testing.assert_array_equal(read_panoptic(tmp_path / "a.png"), ids)
    ann = fmt.panoptic_annotation(ids, segments, image_id="a", file_name="a.png")
    fmt.write_panoptic_json(tmp_path / "p.json", [ann], META)
    import json

    doc = json.loads((tmp_path / "p.json").read_text())
    info = doc["annotations"][0]["segments_info"]
    assert [s["id"] for s in info] == [1, 2, 300]
    assert [s["category_id"] for s in info] == [3, 27, 1]
    assert [s["area"] for s in info] == [6, 16, 1]
    assert [s["bbox"] for s in info] == [[2, 1, 3, 2], [0, 4, 8, 2], [7, 0, 1, 1]]
    assert all(s["iscrowd"] == 0 for s in info)
    present = set(np.unique(ids)) - {0}
    assert present == {s["id"] for s in info}  # every painted id is described, every described id is painted
    cats = {c["id"]: c for c in doc["categories"]}
    assert {s["category_id"] for s in info} <= set(cats) and cats[27]["isthing"] == 0 and cats[3]["name"] == "car"


def test_semantic_png_round_trip(tmp_path):
    labels = torch.randint(0, 3, (5, 7))
    fmt.write_semantic(tmp_path / "s.png", labels)
    np.testing.assert_array_equal(read_label(tmp_path / "s.png"), labels.numpy())
    fmt.write_semantic(tmp_path / "d.png", labels, META, dataset_ids=True)
    np.testing.assert_array_equal(read_label(tmp_path / "d.png"), np.array([3, 1, 27])[labels.numpy()])
    big = torch.full((2, 2), 700)  # more than 256 classes -> 16-bit PNG
    fmt.write_semantic(tmp_path / "b.png", big)
    np.testing.assert_array_equal(read_label(tmp_path / "b.png"), big.numpy())
    with pytest.raises(ValueError, match="DatasetMeta"):
        fmt.write_semantic(tmp_path / "x.png", labels, dataset_ids=True)


def test_instance_results_decode_to_the_masks():
    masks = torch.zeros(2, 6, 9, dtype=torch.bool)
    masks[0, 1:4, 2:6] = True
    masks[1, 5, 8] = True
    inst = Instances(masks, torch.tensor([0.9, 0.4]), torch.tensor([1, 0]))
    res = fmt.instance_results(inst, image_id=7, meta=META)
    assert [r["category_id"] for r in res] == [1, 3] and [r["image_id"] for r in res] == [7, 7]
    assert [r["bbox"] for r in res] == [[2, 1, 4, 3], [8, 5, 1, 1]] and [r["area"] for r in res] == [12, 1]
    assert res[0]["score"] == pytest.approx(0.9)
    for r, m in zip(res, masks):
        np.testing.assert_array_equal(fmt.rle_decode(r["segmentation"]), m.numpy())


def test_readers_follow_one_dtype_convention(tmp_path):
    """image uint8 [H, W, 3]; label map int32 [H, W] (8- and 16-bit files); panoptic ids int32 [H, W]."""
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    fmt.write_image(tmp_path / "i.png", rgb)
    fmt.write_label(tmp_path / "l8.png", np.full((5, 7), 200))
    fmt.write_label(tmp_path / "l16.png", np.full((5, 7), 300))
    fmt.write_panoptic(tmp_path / "p.png", np.full((5, 7), 70000))
    image = fmt.read_image(tmp_path / "i.png")
    assert image.dtype == np.uint8 and image.shape == (5, 7, 3) and np.array_equal(image, rgb)
    for name, value in (("l8.png", 200), ("l16.png", 300)):
        lab = read_label(tmp_path / name)
        assert lab.dtype == np.int32 and lab.shape == (5, 7) and (lab == value).all()
    ids = read_panoptic(tmp_path / "p.png")
    assert ids.dtype == np.int32 and (ids == 70000).all()
    assert np.array_equal(fmt.rgb2id(fmt.id2rgb(ids)), ids) and fmt.image_size(tmp_path / "i.png") == (5, 7)


def test_errors_are_one_type_naming_the_file(tmp_path):
    from maskformer.data import DatasetError

    assert fmt.FormatError is DatasetError and issubclass(fmt.FormatError, ValueError)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "gray.png")
    (tmp_path / "bad.json").write_text("{")
    cases = [
        (fmt.read_image, "missing.jpg", "image file not found"),
        (fmt.read_label, "bad.png", "cannot read the image .*corrupt or truncated"),
        (fmt.read_label, "rgb.png", "a label map must have one channel"),
        (fmt.read_panoptic, "gray.png", "panoptic PNG has mode L; expected RGB"),
        (fmt.load_json, "missing.json", "JSON file not found"),
        (fmt.load_json, "bad.json", "invalid JSON"),
        (fmt.image_size, "bad.png", "cannot read the image header"),
    ]
    for fn, name, match in cases:
        with pytest.raises(fmt.FormatError, match=match) as e:
            fn(tmp_path / name)
        assert str(tmp_path / name) in str(e.value)


def test_writes_are_atomic_and_json_is_strict(tmp_path):
    fmt.save_json(tmp_path / "sub" / "r.json", {"a": float("nan"), 3: np.float32(0.5), "t": (np.int64(2),)}, indent=1)
    assert fmt.load_json(tmp_path / "sub" / "r.json") == {"a": None, "3": 0.5, "t": [2]}
    fmt.write_label(tmp_path / "l.png", np.zeros((3, 3), np.int64))
    with pytest.raises(ValueError, match="0..65535"):
        fmt.write_label(tmp_path / "l.png", np.full((3, 3), -1))
    with pytest.raises(ZeroDivisionError):  # a write failing half-way leaves the old file and no temporary behind
        with fmt.atomic_file(tmp_path / "sub" / "r.json") as tmp:
            tmp.write_text("{half")
            raise ZeroDivisionError
    assert fmt.load_json(tmp_path / "sub" / "r.json")["3"] == 0.5
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["l.png", "r.json", "sub"]
    assert (read_label(tmp_path / "l.png") == 0).all()


def test_io_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, maskformer.io; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def _png_with_chunk(data: bytes, kind: bytes, body: bytes) -> bytes:
    """A PNG with one more chunk inserted right after IHDR (8-byte signature + 25-byte IHDR chunk)."""
    import struct
    import zlib

    chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return data[:33] + chunk + data[33:]


def use_decoder(monkeypatch, name: str | None) -> None:
    """Make `name` the only fast PNG decoder (None: Pillow alone); skip when its package is not installed."""
    if name is not None:
        pytest.importorskip(fmt.PNG_DECODER_PACKAGES[name])
    monkeypatch.setattr(fmt, "png_decoders", lambda: (name,) if name else ())


@pytest.mark.parametrize("decoder", ["wuffs", "libspng"])
def test_fast_png_decoder_gives_pillows_pixels(decoder, tmp_path, monkeypatch):
    """Each fast decoder (the fast-png extra) and Pillow decode every PNG kind the readers take to the same arrays;
    kinds a decoder is not used for (wuffs: RGBA; all: 1-bit and 16-bit grey, TIFF) and corrupt files (cut short, one
    byte of the compressed pixels flipped: the zlib checksum) behave as with Pillow."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    panoptic = {
        "rgb.png": Image.fromarray(rgb),
        "rgba.png": Image.fromarray(np.dstack([rgb, grey])),
        "p8.png": Image.fromarray(grey).convert("P", palette=Image.Palette.ADAPTIVE, colors=256),
        "p4.png": Image.fromarray(grey // 16).convert("P", palette=Image.Palette.ADAPTIVE, colors=16),
    }
    for name, img in panoptic.items():
        img.save(tmp_path / name, **({"bits": 4} if name == "p4.png" else {}))
    labels = {"l8.png": grey, "l16.png": (grey.astype(np.uint16) * 251), "l.tif": grey}
    for name, arr in labels.items():
        fmt.write_label(tmp_path / name, arr)
    Image.fromarray(grey > 127).save(tmp_path / "l1.png")  # mode "1": Pillow only
    (tmp_path / "gamma.png").write_bytes(_png_with_chunk((tmp_path / "rgb.png").read_bytes(), b"gAMA", b"\0\0\xaf\xc8"))
    for src in ("rgb.png", "l8.png"):
        good = (tmp_path / src).read_bytes()
        (tmp_path / f"cut_{src}").write_bytes(good[: len(good) // 2])
        flipped = bytearray(good)
        flipped[len(good) // 2] ^= 0xFF  # inside the IDAT data of these incompressible images
        (tmp_path / f"flipped_{src}").write_bytes(bytes(flipped))
    readers = [(read_panoptic, n) for n in [*panoptic, "gamma.png"]] + [(read_label, n) for n in [*labels, "l1.png"]]

    def decode_all():
        out = {}
        for fn, name in readers:
            out[name] = fn(tmp_path / name)
        for fn, src in ((read_panoptic, "rgb.png"), (read_label, "l8.png")):
            for bad in (f"cut_{src}", f"flipped_{src}"):
                with pytest.raises(fmt.FormatError, match=f"{bad}: cannot read the image .*corrupt or truncated"):
                    fn(tmp_path / bad)
        return out

    use_decoder(monkeypatch, decoder)
    fast = decode_all()
    use_decoder(monkeypatch, None)
    slow = decode_all()
    for name in fast:
        assert fast[name].dtype == slow[name].dtype == np.int32 and np.array_equal(fast[name], slow[name]), name
    assert np.array_equal(slow["rgb.png"], fmt.rgb2id(rgb)) and np.array_equal(slow["l16.png"], labels["l16.png"])
    assert np.array_equal(slow["rgba.png"], fmt.rgb2id(rgb)) and np.array_equal(slow["l8.png"], grey)


def test_the_fastest_installed_decoder_is_used_and_rgba_skips_wuffs(tmp_path, monkeypatch):
    """wuffs first, libspng for what wuffs does not take (RGBA: wuffs would composite over black), Pillow last."""
    pytest.importorskip("pywuffs")
    pytest.importorskip("imagecodecs")
    assert fmt.png_decoders() == ("wuffs", "libspng")
    rgba = np.random.default_rng(2).integers(0, 256, (9, 11, 4), dtype=np.uint8)
    rgba[..., 3] = 100  # translucent: composited RGB would differ
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(rgba[..., :3]).save(tmp_path / "rgb.png")
    used = []
    monkeypatch.setattr(fmt, "_wuffs_decode", lambda data, grey: used.append("wuffs") or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        read_panoptic(tmp_path / "rgb.png")
    assert np.array_equal(read_panoptic(tmp_path / "rgba.png"), fmt.rgb2id(rgba[..., :3])) and used == ["wuffs"]


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (3, 4)])
def test_panoptic_ids_of_tiny_images_including_the_last_pixel(shape, tmp_path, monkeypatch):
    """The id pass reads each pixel's 3 bytes as part of a 4-byte word; the last pixel (no byte after it) is
    assembled on its own: ids equal R + 256 G + 65536 B (float64 formula) with every decoder, RGB and RGBA."""
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (*shape, 4), dtype=np.uint8)
    expected = rgba[..., 0] + 256.0 * rgba[..., 1] + 65536.0 * rgba[..., 2]
    Image.fromarray(rgba[..., :3]).save(tmp_path / "rgb.png")
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    for decoder in [*fmt.png_decoders(), None]:
        use_decoder(monkeypatch, decoder)
        for name in ("rgb.png", "rgba.png"):
            assert np.array_equal(read_panoptic(tmp_path / name), expected), (name, decoder)


@pytest.mark.parametrize("decoder", ["wuffs", "libspng"])
def test_fast_png_decoder_equals_pillow_on_real_pngs(decoder, shared_data, monkeypatch):
    """Real COCO panoptic PNGs, ADE20K and CamVid label maps decode to Pillow's arrays with each fast decoder."""
    panoptic = sorted((shared_data / "coco-panoptic-sample").rglob("*.png"))[:12]
    labels = sorted((shared_data / "ade20k-sample").rglob("annotations/**/*.png"))[:6]
    labels += sorted(p for p in (shared_data / "camvid").rglob("*.png") if "label" in str(p).lower())[:6]
    files = [(read_panoptic, p) for p in panoptic] + [(read_label, p) for p in labels]
    assert len(panoptic) >= 2 and len(labels) >= 6
    use_decoder(monkeypatch, decoder)
    fast = [fn(p) for fn, p in files]
    use_decoder(monkeypatch, None)
    for (fn, p), got in zip(files, fast):
        expected = fn(p)
        assert got.dtype == expected.dtype == np.int32 and np.array_equal(got, expected), p
