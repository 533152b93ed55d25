"""Model references -> cached model directories, against a real HTTP server on 127.0.0.1 (tests/hub_server.py).

The server holds a hub-layout repository with a small transformers MaskFormer checkpoint and an official-format
detectron2 `.pkl` at a zoo-like URL, both written here. huggingface_hub itself talks to it (HF_ENDPOINT); nothing is
mocked and nothing reaches the internet. Each fault must give one clear error and leave no usable-looking entry.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from ckpt_utils import TINY_HEADS, build
from hub_server import LoopbackServer, free_port

from maskformer.config import PRESETS, get_preset
from maskformer.data.meta import BUILTIN_META, CITYSCAPES_NAMES
from maskformer.hub import ZOO, HubError, ZooEntry, load_model, parse_reference, resolve
from maskformer.hub import cache as hub_cache
from maskformer.hub.resolve import backbone_weights, convert_checkpoint
from maskformer.hub.zoo import BACKBONE_WEIGHTS, OFFICIAL_INIT, WeightsEntry

PKL_PATH = "/maskformer/semantic-cityscapes/maskformer_R18_test/model_final_abc123.pkl"
ZOO_NAME = "test_r18_cityscapes"
REPO = "tiny-org/maskformer-r18-tiny"
IMAGE = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(3)) * 255


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def forward(model) -> dict:
    with torch.no_grad():
        return {k: v for k, v in model(IMAGE).items() if torch.is_tensor(v)}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def official():
    """(pickle bytes in the released v1 layout, the original model): R18 with tiny heads and K = 19."""
    torch.manual_seed(0)
    model = build(get_preset("maskformer_r18_synth", [*TINY_HEADS, "model.num_classes=19"]))
    sd = model.state_dict()
    v1 = {k.replace("sem_seg_head.pixel_decoder.", "sem_seg_head."): v.numpy().copy() for k, v in sd.items()}
    v1["criterion.empty_weight"] = np.ones(20, np.float32)
    data = pickle.dumps({"model": v1, "__author__": "test", "matching_heuristics": False})
    return data, model


@pytest.fixture(scope="module")
def transformers_ckpt(tmp_path_factory):
    """(files of a transformers MaskFormer checkpoint, its folder, the transformers model): ResNet-18, tiny heads."""
    tr = pytest.importorskip("transformers", reason="transformers (dev extra) writes the hub checkpoint")
    from transformers.models.maskformer.configuration_maskformer import MaskFormerDetrConfig

    stages = ["stage1", "stage2", "stage3", "stage4"]
    bb = tr.ResNetConfig(
        embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], layer_type="basic",
        out_features=stages,
    )  # fmt: skip
    dec = MaskFormerDetrConfig(
        d_model=32, decoder_layers=2, decoder_attention_heads=4, decoder_ffn_dim=64, dropout=0.0, num_queries=6
    )
    config = tr.MaskFormerConfig(
        backbone_config=bb, decoder_config=dec, num_labels=5, fpn_feature_size=32, mask_feature_size=32,
        id2label={i: f"thing{i}" for i in range(5)}, label2id={f"thing{i}": i for i in range(5)},
    )  # fmt: skip
    torch.manual_seed(0)
    hf = tr.MaskFormerForInstanceSegmentation(config).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # re-draw constants (norms, biases) so that every tensor matters
        for name, t in hf.state_dict().items():
            noise = torch.randn(t.shape, generator=g) if t.is_floating_point() else None
            if noise is not None:
                t.copy_(noise.abs() + 0.5 if "running_var" in name else t + 0.05 * noise)
    folder = tmp_path_factory.mktemp("hf")
    hf.save_pretrained(folder)
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.name in ("config.json", "model.safetensors")}
    return files, folder, hf


# ------------------------------------------------------------------------------------------------ environment
@pytest.fixture
def server():
    with LoopbackServer(max_requests=300, max_seconds=120) as s:
        yield s


@pytest.fixture
def env(tmp_path, monkeypatch, server):
    """Caches in tmp dirs, HF_ENDPOINT at the loopback server, online."""
    monkeypatch.setenv("MASKFORMER_HOME", str(tmp_path / "mf"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", server.url(""))
    return tmp_path


def zoo_entry(monkeypatch, server, data: bytes, path: str = PKL_PATH, name: str = ZOO_NAME, **kw) -> ZooEntry:
    """Register a test-only zoo entry for `data` served at `path` (cityscapes meta: the K=19 label space)."""
    url = server.add(path, data) if path not in server.routes else server.url(path)
    entry = ZooEntry(name, url, "maskformer_r18_synth", "cityscapes", "semantic", "mIoU 0.0", **kw)
    monkeypatch.setitem(ZOO, name, entry)
    return entry


def usable_entries() -> list:
    return [e for e in hub_cache.list_entries() if e.state == "ready"]


# ------------------------------------------------------------------------------------------------ the table
def test_zoo_entries_name_presets_metas_and_official_urls():
    assert len([n for n in ZOO if not n.startswith("mask2former")]) == 30  # every official MaskFormer checkpoint
    for e in ZOO.values():
        cfg = get_preset(e.preset)
        assert e.preset in PRESETS and cfg.data.format == e.dataset
        assert BUILTIN_META[e.dataset]().num_classes == cfg.model.num_classes
        assert e.source.startswith("https://dl.fbaipublicfiles.com/maskformer/") and e.source.endswith(".pkl")
        assert e.sha256 is None  # the 6-hex suffix is a job id, not a checksum: nothing is claimed
    assert ZOO["maskformer_r50_coco_panoptic"].preset == "maskformer_r50_6enc_coco_panoptic"
    assert ZOO["maskformer_swin_t_ade20k"].source.endswith(
        "/semantic-ade20k/maskformer_swin_tiny_bs16_160k/model_final_8657a5.pkl"
    )


def test_backbone_weights_table_matches_the_file_names():
    for e in BACKBONE_WEIGHTS.values():
        assert e.url.startswith("https://")
        if e.sha256_prefix:  # torchvision: <name>-<sha256 prefix>.pth
            assert e.url.endswith(f"-{e.sha256_prefix}.pth")
    assert set(OFFICIAL_INIT.values()) <= set(BACKBONE_WEIGHTS)
    assert OFFICIAL_INIT["resnet50"] == "R-50" and OFFICIAL_INIT["resnet101c"] == "R-103"


def test_references_are_classified(tmp_path):
    (tmp_path / "model.pkl").write_bytes(b"x")
    assert parse_reference(tmp_path).kind == "dir"
    assert parse_reference(tmp_path / "model.pkl").kind == "file"
    assert parse_reference("maskformer_swin_t_ade20k").kind == "zoo"
    ref = parse_reference("facebook/maskformer-swin-base-ade@refs/pr/1")
    assert (ref.kind, ref.value, ref.revision) == ("hub", "facebook/maskformer-swin-base-ade", "refs/pr/1")
    assert parse_reference("facebook/maskformer-swin-base-ade").revision is None
    assert parse_reference("https://example.org/a/model_final_1.pkl").kind == "url"
    for bad in ("no_such_name", "a/b/c", "./missing/x"):
        with pytest.raises(HubError, match="not a model directory, checkpoint file, model-zoo name"):
            parse_reference(bad)


# ------------------------------------------------------------------------------------------------ loading
def test_hub_id_loads_like_a_direct_conversion_then_from_the_cache(env, server, transformers_ckpt, monkeypatch):
    files, folder, hf = transformers_ckpt
    commit = server.add_hub_repo(REPO, files)
    direct, _, _ = convert_checkpoint(folder)
    path = resolve(f"{REPO}@main")
    model, cfg, meta = load_model(f"{REPO}@main")
    assert meta.class_names == [f"thing{i}" for i in range(5)] and cfg.model.num_queries == 6
    out = forward(model)
    assert_same(out, forward(direct))
    with torch.no_grad():  # and close to transformers itself (the independent oracle)
        ref = hf(pixel_values=(IMAGE - model.pixel_mean) / model.pixel_std)
    assert torch.allclose(out["pred_logits"], ref.class_queries_logits, rtol=1e-4, atol=1e-4)
    assert server.count("/resolve/main/model.safetensors", "GET") == 1
    n = len(server.requests)
    assert load_model(f"{REPO}@main")[2].class_names == meta.class_names and len(server.requests) == n  # no request
    assert resolve(f"{REPO}@main") == path and len(server.requests) == n

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline, converted copy gone: huggingface_hub's cache suffices
    hub_cache.remove(next(e for e in hub_cache.list_entries() if e.kind == "model"))
    assert_same(forward(load_model(REPO)[0]), out)
    assert len(server.requests) == n
    assert resolve(f"{REPO}@{commit}")  # a pinned commit is served from the same snapshot, offline


def test_zoo_name_and_url_load_the_original_weights_then_from_the_cache(env, server, official, monkeypatch):
    data, original = official
    entry = zoo_entry(monkeypatch, server, data)
    model, cfg, meta = load_model(ZOO_NAME)
    assert_same(forward(model), forward(original))
    assert meta.class_names == CITYSCAPES_NAMES and meta.thing_ids == list(range(11, 19))  # the zoo's dataset meta
    assert cfg.model.backbone == "resnet18" and cfg.model.num_classes == 19
    assert server.count(PKL_PATH, "GET") == 1
    n = len(server.requests)
    assert_same(forward(load_model(ZOO_NAME)[0]), forward(original))
    assert_same(forward(load_model(entry.source)[0]), forward(original))  # the URL reuses the cached download
    assert len(server.requests) == n
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_same(forward(load_model(ZOO_NAME)[0]), forward(original))
    assert len(server.requests) == n
    kinds = sorted((e.kind, e.state) for e in hub_cache.list_entries())
    assert kinds == [("download", "ready"), ("model", "ready"), ("model", "ready")]


def test_a_url_outside_the_zoo_loads_like_a_direct_conversion(env, server, official):
    data, original = official
    file = env / "model_final_abc123.pkl"
    file.write_bytes(data)
    direct, cfg, _ = convert_checkpoint(file)  # no preset matches K=19 on R18: defaults fill what weights can't show
    model, cfg2, meta = load_model(server.add("/elsewhere/model_final_abc123.pkl", data))
    assert_same(forward(model), forward(direct))
    assert cfg2.to_dict() == cfg.to_dict() and meta.num_classes == 19


def test_local_checkpoint_file_is_converted_once(env, official):
    data = official[0]
    file = env / "model_final_abc123.pkl"
    file.write_bytes(data)
    path = resolve(file)
    assert path.parent == hub_cache.models_dir() and resolve(file) == path
    assert_same(forward(load_model(file)[0]), forward(convert_checkpoint(file)[0]))
    assert resolve(path) == path  # a model directory is used as it is


def test_offline_without_the_files_is_one_error_saying_what_to_download(env, server, official, monkeypatch):
    entry = zoo_entry(monkeypatch, server, official[0])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="offline") as e:
        resolve(ZOO_NAME)
    dest = hub_cache.downloads_dir() / hub_cache.url_key(entry.source) / "model_final_abc123.pkl"
    assert f"Download {entry.source} and save it as {dest}" in str(e.value)
    with pytest.raises(HubError, match=f"hf download {REPO} config.json model.safetensors --revision main"):
        resolve(REPO)
    assert len(server.requests) == 0 and usable_entries() == []
    dest.parent.mkdir(parents=True)  # doing what the message says makes it work, still offline
    dest.write_bytes(official[0])
    assert_same(forward(load_model(ZOO_NAME)[0]), forward(official[1]))


# ------------------------------------------------------------------------------------------------ faults
def test_connection_refused_404_and_500_are_clear_errors_with_nothing_cached(env, server):
    dead = f"http://127.0.0.1:{free_port()}/x/model_final_000000.pkl"
    with pytest.raises(HubError, match=r"cannot connect .*save it as"):
        resolve(dead)
    with pytest.raises(HubError, match="HTTP 404"):
        resolve(server.url("/nothing/here.pkl"))
    server.add("/broken/model.pkl", status=500)
    with pytest.raises(HubError, match="HTTP 500"):
        resolve(server.url("/broken/model.pkl"))
    with pytest.raises(HubError, match="no such repository"):
        resolve("tiny-org/missing")
    server.add_hub_repo("tiny-org/empty", {"README.md": b"hello"})
    with pytest.raises(HubError, match="no config.json"):
        resolve("tiny-org/empty")
    # (an unreachable HF_ENDPOINT is huggingface_hub's to retry: ~23 s of back-off, so not timed here)
    assert hub_cache.list_entries() == []


def test_a_cut_download_is_kept_and_resumed(env, server, official, monkeypatch):
    data, original = official
    cut = 1 << 20
    zoo_entry(monkeypatch, server, data)
    server.routes[PKL_PATH].cut_after, server.routes[PKL_PATH].cut_times = cut, 3
    with pytest.raises(HubError, match="interrupted .* next try resumes"):
        resolve(ZOO_NAME)  # three connections, each cut after 1 MB
    assert [(e.kind, e.state) for e in hub_cache.list_entries()] == [("download", "partial")]
    assert [r.headers.get("Range") for r in server.requests] == [None, f"bytes={cut}-", f"bytes={2 * cut}-"]
    assert_same(forward(load_model(ZOO_NAME)[0]), forward(original))
    assert server.requests[-1].headers.get("Range") == f"bytes={3 * cut}-"  # resumed, not restarted


def test_size_and_sha256_mismatches_delete_the_file(env, server, official, monkeypatch):
    data = official[0]
    zoo_entry(monkeypatch, server, data, size=len(data) + 1)
    with pytest.raises(HubError, match=f"announces {len(data)} bytes, expected {len(data) + 1}"):
        resolve(ZOO_NAME)
    zoo_entry(monkeypatch, server, data, sha256="0" * 64)
    with pytest.raises(HubError, match="does not match .*SHA-256"):
        resolve(ZOO_NAME)
    assert hub_cache.list_entries() == []
    zoo_entry(monkeypatch, server, data, size=len(data), sha256=hashlib.sha256(data).hexdigest())
    assert resolve(ZOO_NAME).is_dir()  # the right numbers pass


def test_backbone_weights_by_name_are_checked_against_their_sha256_prefix(env, server, monkeypatch):
    buf = io.BytesIO()
    torch.save({"conv1.weight": torch.ones(2, 3, 7, 7)}, buf)
    data = buf.getvalue()
    prefix = hashlib.sha256(data).hexdigest()[:8]
    url = server.add(f"/models/resnet-tiny-{prefix}.pth", data)
    monkeypatch.setitem(BACKBONE_WEIGHTS, "resnet-tiny", WeightsEntry("resnet-tiny", url, "resnet18", prefix))
    monkeypatch.setitem(BACKBONE_WEIGHTS, "resnet-bad", WeightsEntry("resnet-bad", url + "?b", "resnet18", "00000000"))
    assert backbone_weights("resnet-tiny").read_bytes() == data
    with pytest.raises(HubError, match="does not match"):
        backbone_weights("resnet-bad")
    with pytest.raises(HubError, match="known ImageNet weights name"):
        backbone_weights("resnet-unknown")


def test_a_corrupt_file_is_a_clear_error_and_is_not_kept(env, server, official):
    data = official[0]
    for path, body in (("/c/model_final_trunc.pkl", data[: len(data) // 2]), ("/c/model_final_junk.pkl", b"junk" * 99)):
        with pytest.raises(HubError, match="cannot convert"):
            resolve(server.add(path, body))
    assert hub_cache.list_entries() == []


CHILD_FETCH = """
import sys
from maskformer.hub import HubError
from maskformer.hub.resolve import fetch_url
try:
    fetch_url(sys.argv[1], progress=False)
except HubError as e:
    print(e)
    sys.exit(3)
"""


def _file_size_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed

    return apply


def test_a_full_disk_is_a_clear_error_and_leaves_nothing(env, server):
    url = server.add("/big/model_final_big.pkl", os.urandom(3 << 20))
    run = subprocess.run(
        [sys.executable, "-c", CHILD_FETCH, url], env=dict(os.environ), capture_output=True, text=True, timeout=120,
        preexec_fn=_file_size_limit(1 << 20),
    )  # fmt: skip
    assert run.returncode == 3, run.stderr[-2000:]
    assert "file size limit was reached" in run.stdout and "partial file was deleted" in run.stdout
    assert hub_cache.list_entries() == []


CHILD_RESOLVE_ERR = """
import sys
from maskformer.hub import HubError, resolve
try:
    resolve(sys.argv[1], progress=False)
except HubError as e:
    print(e)
    sys.exit(3)
"""


def test_a_full_disk_while_writing_the_converted_model_leaves_only_the_download(env, server, official):
    data = official[0]
    url = server.url("/offline/model_final_abc123.pkl")  # never requested: the file is placed in the cache
    dest = hub_cache.downloads_dir() / hub_cache.url_key(url) / "model_final_abc123.pkl"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(data)
    run = subprocess.run(
        [sys.executable, "-c", CHILD_RESOLVE_ERR, url], env=dict(os.environ), capture_output=True, text=True,
        timeout=120, preexec_fn=_file_size_limit(1 << 20),
    )  # fmt: skip
    assert run.returncode == 3, run.stderr[-2000:]
    assert "writing the converted model" in run.stdout and "File too large" in run.stdout
    assert [(e.kind, e.state) for e in hub_cache.list_entries()] == [("download", "ready")]
    assert list(hub_cache.models_dir().iterdir()) == [] and len(server.requests) == 0
    assert resolve(url).is_dir()  # with room, the same cached file converts


CHILD_RESOLVE = "import sys; from maskformer.hub import resolve; print(resolve(sys.argv[1], progress=False))"


def test_two_processes_resolving_one_model_end_with_one_intact_copy(env, server, official, monkeypatch):
    import threading

    data = official[0]
    url = server.add(PKL_PATH, data, gate=threading.Event())
    logs = [env / "a.err", env / "b.err"]
    procs = [
        subprocess.Popen([sys.executable, "-c", CHILD_RESOLVE, url], stdout=subprocess.PIPE, stderr=open(log, "w"),
                         env=dict(os.environ), text=True)
        for log in logs
    ]  # fmt: skip
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # one holds the body of the only GET, the other waits for the lock
        if server.count(PKL_PATH, "GET") == 1 and any("waiting for another process" in p.read_text() for p in logs):
            break
        time.sleep(0.1)
    server.routes[PKL_PATH].gate.set()
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [log.read_text()[-2000:] for log in logs]
    assert outs[0] == outs[1] and server.count(PKL_PATH, "GET") == 1
    assert any("waiting for another process" in log.read_text() for log in logs)
    assert [(e.kind, e.state) for e in hub_cache.list_entries()] == [("model", "ready"), ("download", "ready")]
    file = env / "model_final_abc123.pkl"
    file.write_bytes(data)
    assert_same(forward(load_model(outs[0])[0]), forward(convert_checkpoint(file)[0]))


# ------------------------------------------------------------------------------------------------ command line
def test_cache_ls_rm_and_models_zoo(env, server, official, monkeypatch, capsys):
    from maskformer.cli import main

    zoo_entry(monkeypatch, server, official[0])
    assert main(["models", "--zoo"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(ZOO_NAME))
    assert "cityscapes" in line and "mIoU 0.0" in line and "yes" not in line
    resolve(ZOO_NAME)
    assert main(["models", "--zoo"]) == 0
    assert "yes" in next(x for x in capsys.readouterr().out.splitlines() if x.startswith(ZOO_NAME))
    assert main(["cache", "ls"]) == 0
    listing = capsys.readouterr().out
    assert f"zoo--{ZOO_NAME}" in listing and "model_final_abc123" in listing
    assert main(["cache", "rm", ZOO_NAME]) == 0  # the model and its download
    assert hub_cache.list_entries() == []
    assert main(["cache", "rm", "nothing-like-this"]) == 1


def test_predict_with_a_zoo_name_end_to_end(env, server, official, monkeypatch, tmp_path):
    from PIL import Image

    from maskformer.cli import main

    zoo_entry(monkeypatch, server, official[0])
    photo = tmp_path / "photo.jpg"
    Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)).save(photo)
    assert main(["predict", "--model", ZOO_NAME, str(photo), "--out", str(tmp_path / "out")]) == 0
    label = np.array(Image.open(tmp_path / "out" / "semantic" / "photo.png"))
    assert label.shape == (48, 64) and label.max() < 19


def test_train_init_weights_take_a_zoo_name_and_an_imagenet_weights_name(env, server, official, monkeypatch):
    """`train --init-weights REF`: a zoo name loads the whole model; an ImageNet name (kind backbone) only the
    backbone, through the same verified download."""
    from maskformer.engine.loop import load_init_weights

    data, original = official
    zoo_entry(monkeypatch, server, data)
    torch.manual_seed(1)
    model = build(get_preset("maskformer_r18_synth", [*TINY_HEADS, "model.num_classes=19"]))
    load_init_weights(model, ZOO_NAME)
    for k, v in original.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k

    prefix = hashlib.sha256(data).hexdigest()[:8]
    url = server.add(f"/models/r18-test-{prefix}.pkl", data)
    monkeypatch.setitem(BACKBONE_WEIGHTS, "r18-test", WeightsEntry("r18-test", url, "resnet18", prefix))
    torch.manual_seed(2)
    fresh = build(get_preset("maskformer_r18_synth", [*TINY_HEADS, "model.num_classes=19"]))
    heads = {k: v.clone() for k, v in fresh.state_dict().items() if k.startswith("sem_seg_head.")}
    load_init_weights(fresh, "r18-test", "backbone")
    state = fresh.state_dict()
    for k, v in original.state_dict().items():
        if k.startswith("backbone.") and not k.endswith("num_batches_tracked"):
            assert torch.equal(state[k], v), k
    assert all(torch.equal(state[k], v) for k, v in heads.items())  # the heads keep their initialisation
