"""`maskformer serve` against a real uvicorn server on 127.0.0.1 (random port) with httpx: every endpoint, every
output format checked against `maskformer predict` / Predictor (RLE decoded by pycocotools), bad input, a full queue."""

from __future__ import annotations

import base64
import io
import json
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install -e '.[serve]')")
pytest.importorskip("uvicorn", reason="the serve extra is not installed (pip install -e '.[serve]')")
httpx = pytest.importorskip("httpx", reason="httpx is not installed (dev extra)")
mask_utils = pytest.importorskip("pycocotools.mask", reason="pycocotools is not installed (dev extra)")

from serve_utils import META, start_server, write_model, write_photo  # noqa: E402

from maskformer.cli import main  # noqa: E402
from maskformer.io import load_json, read_label, read_panoptic  # noqa: E402
from maskformer.predict import Predictor  # noqa: E402

MAX_BODY, MAX_PIXELS = 400_000, 1_000_000
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools + numpy 2


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    return {"root": root, "model": write_model(root / "model"), "photo": write_photo(root / "photo.png")}


@pytest.fixture(scope="module")
def server(files):
    server = start_server(files["model"], max_batch=4, max_pixels=MAX_PIXELS, max_body_bytes=MAX_BODY)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def cli_outputs(files):
    """`maskformer predict` on the photo: {"semantic": label map, "panoptic": (ids, json), "instance": json}."""
    out = {}
    for task in ("semantic", "panoptic", "instance"):
        folder = files["root"] / f"cli_{task}"
        args = ["predict", str(files["photo"]), "--model", str(files["model"]), "--task", task, "--out", str(folder)]
        assert main([*args, "--no-overlay"]) == 0
        if task == "semantic":
            out[task] = read_label(folder / "semantic" / "photo.png")
        elif task == "panoptic":
            out[task] = (read_panoptic(folder / "panoptic" / "photo.png"), load_json(folder / "panoptic.json"))
        else:
            out[task] = load_json(folder / "instances.json")
    return out


def predict(client, photo, **params):
    return client.post("/predict", params=params, content=photo.read_bytes())


def decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def png_array(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


# ---------------------------------------------------------------------------------------------------- endpoints
def test_health_and_model(client, files):
    assert client.get("/health").json()["status"] == "ok"
    info = client.get("/model").json()
    assert [c["name"] for c in info["classes"]] == META.class_names
    assert [tuple(c["color"]) for c in info["classes"]] == META.palette
    assert [c["is_thing"] for c in info["classes"]] == META.is_thing
    assert info["input_size"] == {"min_size_test": 64, "max_size_test": 128}
    assert info["tasks"] == ["semantic", "panoptic", "instance"] and info["default_task"] == "semantic"
    assert info["model"] == str(files["model"]) and info["backbone"] == "resnet18" and info["num_queries"] == 12


def test_page_static_and_examples(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/static/app.js" in page.text and "http" not in page.text.replace("http-equiv", "")  # nothing external
    for asset in ("app.js", "style.css"):
        text = client.get(f"/static/{asset}").text
        assert len(text) > 1000 and "://" not in text and "@import" not in text  # nothing from other hosts
    examples = client.get("/examples").json()
    assert len(examples) == 3
    image = png_array(client.get(examples[0]["url"]).content)
    assert image.shape == (240, 320, 3) and image.dtype == np.uint8
    assert client.get("/examples/7.png").status_code == 404


def test_semantic_segments_equal_cli(client, files, cli_outputs):
    labels = cli_outputs["semantic"]
    body = predict(client, files["photo"], task="semantic").json()
    assert (body["task"], body["height"], body["width"]) == ("semantic", *labels.shape)
    assert [s["label_id"] for s in body["segments"]] == sorted(np.unique(labels).tolist())
    assert len(body["segments"]) >= 2  # the test model must predict several classes for this to mean much
    for s in body["segments"]:
        mask = decode(s["rle"])
        np.testing.assert_array_equal(mask, labels == s["label_id"])
        assert s["id"] == s["label_id"] and s["label"] == META.class_names[s["label_id"]] and s["score"] is None
        assert s["area"] == mask.sum() == mask_utils.area(mask_utils.encode(np.asfortranarray(mask, np.uint8)))
        assert s["bbox"] == mask_utils.toBbox({"size": s["rle"]["size"], "counts": s["rle"]["counts"]}).tolist()


def test_panoptic_segments_equal_cli(client, files, cli_outputs):
    ids, pan_json = cli_outputs["panoptic"]
    (ann,) = pan_json["annotations"]
    body = predict(client, files["photo"], task="panoptic").json()
    assert [s["id"] for s in body["segments"]] == [s["id"] for s in ann["segments_info"]]
    assert len(body["segments"]) >= 1
    for s, info in zip(body["segments"], ann["segments_info"]):
        np.testing.assert_array_equal(decode(s["rle"]), ids == s["id"])
        assert META.dataset_ids[s["label_id"]] == info["category_id"]
        assert s["area"] == info["area"] and s["bbox"] == info["bbox"] and 0 <= s["score"] <= 1


def test_instance_segments_equal_cli(client, files, cli_outputs):
    expected = cli_outputs["instance"]
    body = predict(client, files["photo"], task="instance", threshold=0).json()
    assert len(body["segments"]) == len(expected) > 0
    for rank, (s, e) in enumerate(zip(body["segments"], expected)):
        np.testing.assert_array_equal(decode(s["rle"]), decode(e["segmentation"]))
        assert META.dataset_ids[s["label_id"]] == e["category_id"] and s["bbox"] == e["bbox"]
        assert s["score"] == pytest.approx(e["score"], abs=1e-6) and s["id"] == rank + 1
    kept = predict(client, files["photo"], task="instance", threshold=0.3).json()["segments"]
    assert [s["score"] for s in kept] == [s["score"] for s in body["segments"] if s["score"] >= 0.3]


@pytest.mark.parametrize("task", ["semantic", "panoptic", "instance"])
def test_pipeline_format_equals_predictor(client, files, task):
    expected = Predictor(str(files["model"]), task=task).pipeline_output(str(files["photo"]), threshold=0.2)
    answer = client.post(
        "/predict", params={"task": task, "format": "pipeline", "masks": "true", "threshold": 0.2},
        files={"image": ("photo.png", files["photo"].read_bytes(), "image/png")},
    )  # fmt: skip
    entries = answer.json()
    assert [(e["label"], e["score"] is None) for e in entries] == [(x["label"], x["score"] is None) for x in expected]
    for e, x in zip(entries, expected):
        assert e["score"] == pytest.approx(x["score"], abs=1e-6) if x["score"] is not None else e["score"] is None
        np.testing.assert_array_equal(png_array(base64.b64decode(e["mask"])), np.asarray(x["mask"]))
    plain = client.post("/predict", params={"task": task, "format": "pipeline", "threshold": 0.2},
                        content=files["photo"].read_bytes()).json()  # fmt: skip
    assert [set(e) for e in plain] == [{"label", "score"}] * len(entries)  # masks only on request


def test_png_format(client, files, cli_outputs):
    semantic = predict(client, files["photo"], task="semantic", format="png")
    assert semantic.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(png_array(semantic.content), cli_outputs["semantic"])
    panoptic = predict(client, files["photo"], task="panoptic", format="png")
    path = files["root"] / "served_panoptic.png"
    path.write_bytes(panoptic.content)
    ids, pan_json = cli_outputs["panoptic"]
    np.testing.assert_array_equal(read_panoptic(path), ids)
    listed = json.loads(panoptic.headers["x-segments"])
    assert [s["id"] for s in listed] == [s["id"] for s in pan_json["annotations"][0]["segments_info"]]
    instance = predict(client, files["photo"], task="instance", format="png", threshold=0)
    inst_ids, segments = png_array(instance.content), json.loads(instance.headers["x-segments"])
    by_rank = [decode(e["segmentation"]) for e in cli_outputs["instance"]]
    for rank, mask in enumerate(by_rank):  # pixel = best instance covering it (rank + 1)
        assert (inst_ids[mask] <= rank + 1).all() and segments[rank]["id"] == rank + 1
    np.testing.assert_array_equal(inst_ids > 0, np.any(by_rank, axis=0))


def test_multipart_and_form_fields_equal_raw_body(client, files):
    raw = predict(client, files["photo"], task="panoptic").json()
    upload = client.post("/predict", data={"task": "panoptic"}, files={"file": files["photo"].read_bytes()}).json()
    assert upload == raw


def test_thresholds_change_panoptic(client, files):
    loose = predict(client, files["photo"], task="panoptic", object_mask_threshold=0.0).json()["segments"]
    strict = predict(client, files["photo"], task="panoptic", object_mask_threshold=0.99).json()["segments"]
    assert len(loose) > 0 and strict == []


# ---------------------------------------------------------------------------------------------------- bad input
def png_claiming(width: int, height: int) -> bytes:
    """A 1 x 1 PNG whose header (with a correct CRC) claims width x height: a decompression bomb's header."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    start = data.index(b"IHDR")
    data[start + 4 : start + 12] = struct.pack(">II", width, height)
    data[start + 17 : start + 21] = struct.pack(">I", zlib.crc32(bytes(data[start : start + 17])))
    return bytes(data)


def test_bad_input_answers_4xx_and_server_survives(client, files):
    photo = files["photo"].read_bytes()
    cases = [
        (b"this is not an image", {}, 400, "not an image"),
        (photo[: len(photo) // 2], {}, 400, "truncated"),
        (b"", {}, 400, "empty"),
        (png_claiming(1500, 1500), {}, 413, "pixels"),  # over this server's max_pixels, refused before decoding
        (png_claiming(100_000, 100_000), {}, 413, "too large"),  # Pillow's own bomb guard
        (photo + b"\0" * MAX_BODY, {}, 413, "limit"),
        (photo, {"task": "depth"}, 422, "task"),
        (photo, {"format": "xml"}, 422, "format"),
        (photo, {"colour": "red"}, 422, "unknown parameter"),
        (photo, {"threshold": "high"}, 422, "threshold"),
        (photo, {"threshold": "1.5"}, 422, "threshold"),
        (photo, {"masks": "maybe"}, 422, "masks"),
    ]
    for body, params, status, words in cases:
        answer = client.post("/predict", params=params, content=body)
        assert answer.status_code == status, (params, answer.text)
        assert words in answer.json()["error"].lower(), answer.text
    no_file = client.post("/predict", data={"task": "semantic"}, files={"note": ("a.txt", b"", "text/plain")})
    assert no_file.status_code == 400  # an empty file part is still a file: an empty image
    form_only = client.post("/predict", data={"task": "semantic"}, headers={"content-type": "multipart/form-data; b=x"})
    assert form_only.status_code == 400
    assert client.get("/health").json()["status"] == "ok"
    assert predict(client, files["photo"]).status_code == 200


def test_metrics(client, files):
    before = client.get("/metrics").text
    predict(client, files["photo"])
    client.post("/predict", content=b"junk")
    text = client.get("/metrics").text
    values = parse_metrics(text)

    def delta(key):
        return values.get(key, 0) - parse_metrics(before).get(key, 0)

    assert delta('maskformer_requests_total{path="/predict",code="200"}') == 1
    assert delta('maskformer_errors_total{path="/predict",code="400"}') == 1
    assert values["maskformer_queue_length"] == 0 and values["maskformer_queue_capacity"] == 64
    latency = "maskformer_request_latency_seconds"
    buckets = [v for k, v in values.items() if k.startswith(f'{latency}_bucket{{path="/predict"')]
    assert buckets == sorted(buckets) and buckets[-1] == values[f'{latency}_count{{path="/predict"}}']
    assert "# TYPE maskformer_request_latency_seconds histogram" in text


def parse_metrics(text: str) -> dict[str, float]:
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))}


# ---------------------------------------------------------------------------------------------------- concurrency
def test_micro_batches_equal_single_requests(files):
    """Four requests sent together run as one batch and answer what each gets alone."""
    server = start_server(files["model"], max_batch=4, max_wait_s=0.5)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            alone = predict(c, files["photo"], task="panoptic").json()
            batches = server.service.batcher.batches
            answers = run_concurrently(lambda: predict(c, files["photo"], task="panoptic"), 4)
        assert server.service.batcher.batches == batches + 1
        for answer in answers:
            assert [s["id"] for s in answer.json()["segments"]] == [s["id"] for s in alone["segments"]]
            for s, a in zip(answer.json()["segments"], alone["segments"]):
                assert np.mean(decode(s["rle"]) != decode(a["rle"])) < 1e-3  # batched convolutions round differently
    finally:
        server.stop()


def test_full_queue_answers_503_then_recovers(files):
    server = start_server(files["model"], max_batch=1, max_queue=2)
    batcher, release = server.service.batcher, threading.Event()
    run_batch = batcher.run_batch
    batcher.run_batch = lambda jobs: (release.wait(30), run_batch(jobs))
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            first = threading.Thread(target=lambda: predict(c, files["photo"]))
            first.start()
            wait_for(lambda: batcher.busy)  # the worker holds request 1; 2 more fill the queue, 2 are refused
            pending = []
            for n in (1, 2):
                pending.append(run_in_thread(lambda: predict(c, files["photo"])))
                wait_for(lambda n=n: len(batcher) == n)
            refused = [predict(c, files["photo"]) for _ in range(2)]
            assert [r.status_code for r in refused] == [503, 503]
            assert all(r.headers["retry-after"] == "1" and "busy" in r.json()["error"] for r in refused)
            assert parse_metrics(c.get("/metrics").text)["maskformer_queue_length"] == 2
            release.set()
            first.join(30)
            assert [t.result().status_code for t in pending] == [200, 200]
            assert c.get("/health").json()["status"] == "ok"
            assert predict(c, files["photo"]).status_code == 200
    finally:
        release.set()
        server.stop()


class run_in_thread(threading.Thread):
    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn, self.value = fn, None
        self.start()

    def run(self):
        self.value = self.fn()

    def result(self):
        self.join(30)
        return self.value


def run_concurrently(fn, n: int) -> list:
    threads = [run_in_thread(fn) for _ in range(n)]
    return [t.result() for t in threads]


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


# ---------------------------------------------------------------------------------------------------- precision
def test_int8_server_answers_as_an_int8_predictor(files, client):
    assert (client.get("/model").json()["precision"], client.get("/model").json()["backend"]) == ("fp32", "torch")
    server = start_server(files["model"], precision="int8")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            info = c.get("/model").json()
            answer = predict(c, files["photo"], task="semantic", format="png")
        assert (info["precision"], info["backend"]) == ("int8", "torch")
        runner = server.service.predictor.runner  # the quantized copy runs, not the float model
        assert any("quantized" in type(m).__module__ for m in runner.modules())
        expected = Predictor(str(files["model"]), task="semantic", precision="int8")(str(files["photo"])).semantic
        assert answer.status_code == 200
        np.testing.assert_array_equal(png_array(answer.content), expected.numpy())
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------------- command line
def test_serve_command_refuses_bad_options(capsys, tmp_path):
    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["serve", "--model", "x", "--max-batch", "0"]) == 2
    assert "--max-batch must be positive" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path / "missing"), "--backend", "onnxruntime", "--precision", "bf16"]) == 2
    assert "backend 'onnxruntime' runs precision fp32 or int8" in capsys.readouterr().err  # before loading the model


def test_missing_extra_is_one_clear_line(monkeypatch):
    import maskformer.serve as serve

    monkeypatch.setitem(serve.EXTRA_MODULES, "no_such_module_xyz", "no-such-package")
    with pytest.raises(ImportError, match=r"pip install 'maskformer\[serve\]'.*no-such-package"):
        serve.require_extra()
