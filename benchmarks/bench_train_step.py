"""Training step time (forward + loss + backward + clipping + AdamW step) of the R50 and Swin-T ADE20K presets at
batch 2, 512x512, fp32 and bf16, against transformers' MaskFormer with its own loss on the same inputs, in one run.

Ours runs `maskformer.engine.step.TrainStep` (exactly the training loop's step: deep supervision over 6 decoder
layers, full-resolution mask losses, global grad-norm clipping, AdamW with the official groups). transformers runs
`MaskFormerForInstanceSegmentation(pixel_values, mask_labels, class_labels)` with its defaults (loss on the last
decoder layer only, BatchNorm ResNet), then the same clipping and AdamW; "ours, last-layer loss" is ours with
`loss.deep_supervision=false`, the like-for-like row. Variants are interleaved, median of repeats.

  .venv/bin/python benchmarks/bench_train_step.py [--repeats 5] [--size 512] [--models r50 swin_t] [--no-bf16] [--aux]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from maskformer.config import get_preset
from maskformer.cpu_tuning import keep_freed_memory
from maskformer.engine.optim import clip_grad_norm
from maskformer.engine.step import TrainStep
from maskformer.structures import SegTarget

PRESETS = {"r50": "maskformer_r50_ade20k", "swin_t": "maskformer_swin_t_ade20k"}


def make_inputs(batch: int, size: int, num_classes: int, masks_per_image: int = 5, seed: int = 0):
    """Random images [B,3,S,S] in 0..255 and targets of `masks_per_image` disjoint vertical bands each."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=g) * 255
    targets = []
    for _ in range(batch):
        cuts = torch.linspace(0, size, masks_per_image + 1).long()
        masks = torch.zeros(masks_per_image, size, size, dtype=torch.bool)
        for i in range(masks_per_image):
            masks[i, :, cuts[i] : cuts[i + 1]] = True
        labels = torch.randperm(num_classes, generator=g)[:masks_per_image]
        targets.append(SegTarget(labels=labels, masks=masks))
    return images, targets


def ours(preset: str, amp: str, deep_supervision: bool = True):
    """A step closure for our model + criterion through TrainStep."""
    from maskformer.criterion import build_criterion
    from maskformer.modeling import build_model

    cfg = get_preset(preset, [f"train.amp={amp}", f"loss.deep_supervision={deep_supervision}"])
    torch.manual_seed(0)
    model, criterion = build_model(cfg), build_criterion(cfg)
    step = TrainStep(model, criterion, cfg.train, torch.device("cpu"))
    return lambda images, targets: step([(images, targets)])["loss"]


def hf_model(kind: str, aux_loss: bool = False):
    """transformers' MaskFormer for the ADE20K R50 / Swin-T configs (transformers-oracle.md section 2)."""
    from transformers import MaskFormerConfig, MaskFormerForInstanceSegmentation, ResNetConfig, SwinConfig
    from transformers.models.maskformer.configuration_maskformer import MaskFormerDetrConfig

    s4 = ["stage1", "stage2", "stage3", "stage4"]
    if kind == "swin_t":
        bb = SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, drop_path_rate=0.3,
                        out_features=s4)  # fmt: skip
    else:
        bb = ResNetConfig(embedding_size=64, depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048],
                          layer_type="bottleneck", out_features=s4)  # fmt: skip
    dec = MaskFormerDetrConfig(d_model=256, decoder_layers=6, decoder_attention_heads=8, decoder_ffn_dim=2048,
                               dropout=0.1, num_queries=100)  # fmt: skip
    cfg = MaskFormerConfig(backbone_config=bb, decoder_config=dec, num_labels=150, fpn_feature_size=256,
                           mask_feature_size=256, use_auxiliary_loss=aux_loss)  # fmt: skip
    torch.manual_seed(0)
    return MaskFormerForInstanceSegmentation(cfg)


def hf(kind: str, preset: str, aux_loss: bool = False):
    """A step closure for transformers' model + loss, then the same clipping and AdamW (one group)."""
    t = get_preset(preset).train
    model = hf_model(kind, aux_loss).train()
    opt = torch.optim.AdamW(model.parameters(), lr=t.base_lr, weight_decay=t.weight_decay)
    mean = torch.tensor([123.675, 116.280, 103.530]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.120, 57.375]).view(1, 3, 1, 1)

    def step(images, targets):
        opt.zero_grad(set_to_none=True)
        out = model(
            pixel_values=(images - mean) / std,
            output_hidden_states=aux_loss,  # its auxiliary loss reads the decoder layers from the hidden states
            mask_labels=[t.masks.float() for t in targets],
            class_labels=[t.labels for t in targets],
        )
        out.loss.backward()
        clip_grad_norm(model.parameters(), t.clip_grad_norm)
        opt.step()
        return out.loss.item()

    return step


def time_interleaved(variants: dict, inputs, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(warmup + repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            loss = fn(*inputs)
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[name].append(dt)
            print(f"  round {r} {name}: {dt * 1000:.0f} ms (loss {loss:.3f})", flush=True)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast variant")
    p.add_argument("--aux", action="store_true", help="also time transformers with use_auxiliary_loss=True")
    p.add_argument("--models", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--malloc", choices=("keep", "default"), default="keep", help="keep: keep_freed_memory()")
    args = p.parse_args()
    if args.malloc == "keep":
        keep_freed_memory()  # as the maskformer command: no page faults on re-allocated tensors
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {args.size}x{args.size}")
    rows = []
    for kind in args.models:
        preset = PRESETS[kind]
        inputs = make_inputs(args.batch, args.size, 150)
        variants = {
            "ours fp32": ours(preset, "none"),
            "ours fp32, last-layer loss": ours(preset, "none", deep_supervision=False),  # transformers' default
            "transformers fp32": hf(kind, preset),
        }
        if not args.no_bf16:
            variants["ours bf16"] = ours(preset, "bf16")
        if args.aux:  # the paper's recipe on both sides: loss on all 6 decoder layers
            variants["transformers fp32, aux loss"] = hf(kind, preset, aux_loss=True)
        times = time_interleaved(variants, inputs, args.repeats)
        med = {k: statistics.median(v) for k, v in times.items()}
        ref = med["transformers fp32"]
        for name, m in med.items():
            rows.append(f"| {kind} | {name} | {m * 1000:.0f} | {ref / m:.2f}x |")
    print("\n| model | variant | step ms (median) | speed vs transformers fp32 |\n|---|---|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
