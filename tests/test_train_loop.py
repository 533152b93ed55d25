"""The training loop end to end on tiny models: exact resume, NaN guard, bf16 autocast with an fp32 criterion,
checkpoints and outputs."""

from __future__ import annotations

import pytest
import torch
from train_helpers import tiny_config, tiny_model, write_tiny_synth

from maskformer.engine import state as S
from maskformer.engine.loop import Trainer, micro_batch_size
from maskformer.engine.metrics import read_jsonl
from maskformer.engine.step import NonFiniteLossError


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a shared, oversubscribed CPU two OpenMP threads are ~10x slower for tiny ops."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_tiny_synth(tmp_path_factory.mktemp("synth"))


def _trainer(cfg, out, **kw) -> Trainer:
    return Trainer(cfg, out, model=tiny_model(cfg), progress=False, **kw)


def test_resume_after_k_of_n_equals_uninterrupted_run(synth, tmp_path):
    cfg = tiny_config(synth, "train.max_iter=5", "train.checkpoint_period=2", "data.recipe=panoptic")
    full = _trainer(cfg, tmp_path / "full")
    full.run()
    first = _trainer(cfg, tmp_path / "cut")
    first.run(stop_at=3)  # stops like a killed run would after its checkpoint at 3
    assert first.iteration == 3 and (tmp_path / "cut/checkpoints/iter_0000003").is_dir()
    torch.manual_seed(1234)  # a fresh process would start from other RNG states
    resumed = _trainer(cfg, tmp_path / "cut")
    assert resumed.resume() == tmp_path / "cut/checkpoints/iter_0000003"
    resumed.run()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa, sb = full.step.optimizer.state_dict()["state"], resumed.step.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    assert resumed.loader.state_dict() == full.loader.state_dict()
    assert (tmp_path / "cut/model/model.safetensors").is_file() and (tmp_path / "cut/curves.png").is_file()
    iters = [r["iter"] for r in read_jsonl(tmp_path / "cut/metrics.jsonl")]
    assert iters == [1, 2, 3, 4, 5]  # records past the checkpoint were not duplicated by the resumed run


def test_keep_last_and_latest(synth, tmp_path):
    cfg = tiny_config(synth, "train.max_iter=4", "train.checkpoint_period=1", "train.keep_last=2")
    _trainer(cfg, tmp_path).run()
    assert [i for i, _ in S.list_checkpoints(tmp_path / "checkpoints")] == [3, 4]
    assert S.latest_checkpoint(tmp_path / "checkpoints").name == "iter_0000004"


class _PoisonAt:
    """Wraps a criterion; its total loss is NaN from call `at` on (1-based)."""

    def __init__(self, criterion, at: int):
        self.criterion, self.at, self.calls = criterion, at, 0

    def to(self, device):
        self.criterion.to(device)
        return self

    def __call__(self, outputs, targets):
        self.calls += 1
        losses = self.criterion(outputs, targets)
        if self.calls >= self.at:
            losses["loss"] = losses["loss"] * float("nan")
        return losses


def test_nan_loss_stops_naming_iteration_and_keeps_last_good_checkpoint(synth, tmp_path):
    from maskformer.criterion import build_criterion

    cfg = tiny_config(synth, "train.max_iter=10", "train.checkpoint_period=2")
    tr = _trainer(cfg, tmp_path, criterion=_PoisonAt(build_criterion(cfg), at=4))
    with pytest.raises(NonFiniteLossError, match=r"iteration 4\b.*iter_0000002"):
        tr.run()
    assert tr.iteration == 3
    assert S.latest_checkpoint(tmp_path / "checkpoints").name == "iter_0000002"
    assert not (tmp_path / "checkpoints" / "iter_0000004").exists()
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())


class _DtypeSpy:
    def __init__(self, criterion):
        self.criterion, self.dtypes, self.autocast = criterion, set(), set()

    def to(self, device):
        self.criterion.to(device)
        return self

    def __call__(self, outputs, targets):
        self.dtypes |= {outputs["pred_logits"].dtype, outputs["pred_masks"].dtype}
        self.autocast.add(torch.is_autocast_enabled("cpu"))
        return self.criterion(outputs, targets)


def test_bf16_autocast_forward_and_fp32_criterion(synth, tmp_path):
    from maskformer.criterion import build_criterion

    cfg = tiny_config(synth, "train.max_iter=2", "train.amp=bf16", "train.checkpoint_period=0")
    spy = _DtypeSpy(build_criterion(cfg))
    tr = _trainer(cfg, tmp_path, criterion=spy)
    seen = []
    tr.model.sem_seg_head.register_forward_hook(lambda m, i, o: seen.append(o["pred_masks"].dtype))
    tr.run()
    assert seen and seen[0] == torch.bfloat16  # the network ran under bf16 autocast
    assert spy.dtypes == {torch.float32} and spy.autocast == {False}
    assert all(p.dtype == torch.float32 for p in tr.model.parameters())


@pytest.mark.parametrize("flags, expected", [({"avx2", "amx_bf16"}, torch.bfloat16), ({"avx2"}, torch.float32)])
def test_amp_auto_trains_in_bf16_only_on_a_cpu_with_native_bf16(synth, tmp_path, monkeypatch, flags, expected):
    """train.amp=auto: bf16 autocast where the CPU reports native bf16, fp32 elsewhere (flags mocked where read)."""
    import maskformer.precision as prec

    monkeypatch.setattr(prec, "cpu_flags", lambda path=None: frozenset(flags))
    cfg = tiny_config(synth, "train.max_iter=1", "train.amp=auto", "train.checkpoint_period=0")
    tr = _trainer(cfg, tmp_path)
    seen = []
    tr.model.sem_seg_head.register_forward_hook(lambda m, i, o: seen.append(o["pred_masks"].dtype))
    tr.run()
    assert tr.step.amp == ("bf16" if expected == torch.bfloat16 else "none")
    assert seen == [expected]
    assert not tr.step.scaler.is_enabled()


def test_grad_accumulation_splits_the_total_batch(synth, tmp_path):
    cfg = tiny_config(synth, "train.max_iter=1", "train.grad_accum=2", "train.checkpoint_period=0")
    tr = _trainer(cfg, tmp_path)
    assert tr.micro_batch == 1
    tr.run()
    assert tr.loader.state_dict() == {"epoch": 0, "offset": 2}  # two micro-batches of one image
    with pytest.raises(ValueError, match="batch_size=6 is not divisible"):
        micro_batch_size(tiny_config(synth, "train.batch_size=6", "train.grad_accum=4").train, 1)


def test_fp16_on_cpu_is_a_clear_error(synth, tmp_path):
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        _trainer(tiny_config(synth, "train.amp=fp16"), tmp_path, device="cpu")


def test_threads_apply_while_running_and_are_restored(synth, tmp_path):
    """threads=N holds during run() only: no process-wide setting outlives the library call."""
    seen = []
    tr = _trainer(tiny_config(synth, "train.max_iter=1", "train.eval_period=1"), tmp_path, threads=2,
                  evaluate_fn=lambda model, data: seen.append(torch.get_num_threads()) or {})
    tr.run()
    assert seen == [2] and torch.get_num_threads() == 1
