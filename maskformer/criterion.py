"""Training objectives (reference sections 4 and 3.5), separate from the network.

Both criteria return every weighted term by name plus "loss" = their sum, in float32 (or float64) even under autocast.
Target masks are zero-padded bottom/right to the padded input size (4 x the prediction size): padding and ignore
pixels are negatives of every mask (the official rule).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from maskformer.config import Config
from maskformer.mask_losses import full_res_mask_losses, point_sampled_mask_losses
from maskformer.matcher import HungarianMatcher, _fp32
from maskformer.structures import SegTarget

STRIDE = 4  # predictions are at 1/4 of the padded input
PER_PIXEL_ARCHS = ("per_pixel_baseline", "per_pixel_baseline_plus")


def prepare_targets(
    targets: list[SegTarget], size: tuple[int, int], num_classes: int, device: torch.device
) -> tuple[list[Tensor], Tensor]:
    """Validated targets -> (per-image labels [T_i] int64, all masks zero-padded to `size`, bool [sum T_i, H, W])."""
    labels, masks = [], []
    for i, tgt in enumerate(targets):
        lab, m = tgt.labels.reshape(-1), tgt.masks
        if m.ndim != 3 or m.shape[0] != lab.numel():
            raise ValueError(f"targets[{i}]: masks {tuple(m.shape)} do not match {lab.numel()} labels (want [T, h, w])")
        if m.shape[-2] > size[0] or m.shape[-1] > size[1]:
            raise ValueError(
                f"targets[{i}]: masks of size {tuple(m.shape[-2:])} exceed the padded input size {size} "
                f"(4 x the prediction size)"
            )
        if lab.numel() and (lab.min() < 0 or lab.max() >= num_classes):
            raise ValueError(f"targets[{i}]: labels {lab.tolist()} outside [0, {num_classes})")
        m = m.to(device=device, dtype=torch.bool)
        labels.append(lab.to(device=device, dtype=torch.long))
        masks.append(F.pad(m, (0, size[1] - m.shape[-1], 0, size[0] - m.shape[-2])))  # bottom/right zeros
    return labels, torch.cat(masks)


def _check_outputs(outputs: dict, keys: tuple[str, ...], where: str) -> None:
    for key in keys:
        if key not in outputs:
            raise KeyError(f"{where}: missing {key!r} in the model outputs (have {sorted(outputs)})")


class SetCriterion(nn.Module):
    """MaskFormer's loss: matching + CE (all queries, no-object weight 0.1) + focal and dice (matched pairs, summed
    / the average number of target masks per process); deep supervision repeats matching and losses per aux layer
    (terms suffixed _i). point_sampling=True: Mask2Former's point-sampled BCE + dice (`mask_losses`).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        matcher: HungarianMatcher,
        class_weight: float = 1.0,
        mask_weight: float = 20.0,
        dice_weight: float = 1.0,
        no_object_weight: float = 0.1,
        deep_supervision: bool = True,
        point_sampling: bool = False,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
        self.deep_supervision = deep_supervision
        self.point_sampling = point_sampling
        self.point_args = dict(
            num_points=num_points, oversample_ratio=oversample_ratio, importance_sample_ratio=importance_sample_ratio
        )
        self.register_buffer("empty_weight", torch.tensor([1.0] * num_classes + [no_object_weight]))  # CE class weights

    def forward(self, outputs: dict, targets: list[SegTarget]) -> dict[str, Tensor]:
        """outputs: {"pred_logits" [B,Q,K+1], "pred_masks" [B,Q,h,w], optional "aux_outputs": [such dicts]};
        targets: B SegTargets with masks at most (4h, 4w). Returns {term: weighted loss, "loss": total}."""
        _check_outputs(outputs, ("pred_logits", "pred_masks"), "SetCriterion")
        logits, masks = outputs["pred_logits"], outputs["pred_masks"]
        B, Q, h, w = masks.shape
        if logits.shape[:2] != (B, Q) or logits.shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"SetCriterion: pred_logits {tuple(logits.shape)} does not fit pred_masks {tuple(masks.shape)} "
                f"and {self.num_classes} classes (want [B, Q, {self.num_classes + 1}])"
            )
        if len(targets) != B:
            raise ValueError(f"SetCriterion: {len(targets)} targets for a batch of {B}")
        layers = [outputs] + (list(outputs.get("aux_outputs", [])) if self.deep_supervision else [])
        with torch.autocast(masks.device.type, enabled=False):
            labels, all_masks = prepare_targets(targets, (STRIDE * h, STRIDE * w), self.num_classes, masks.device)
            # the mask losses' normalizer: the number of target masks averaged over processes, at least 1
            n = torch.tensor([float(sum(len(lb) for lb in labels))], device=masks.device)
            world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
            if world > 1:
                dist.all_reduce(n)
            num_masks = max(n.item() / world, 1.0)
            losses = {}
            for i, layer in enumerate(layers):
                _check_outputs(layer, ("pred_logits", "pred_masks"), f"SetCriterion aux_outputs[{i - 1}]")
                suffix = "" if i == 0 else f"_{i - 1}"
                terms = self.layer_losses(layer["pred_logits"], layer["pred_masks"], labels, all_masks, num_masks)
                losses.update({f"{k}{suffix}": v * self.weight_dict[k] for k, v in terms.items()})
        losses["loss"] = sum(losses.values())
        return losses

    def layer_losses(
        self, logits: Tensor, masks: Tensor, labels: list[Tensor], all_masks: Tensor, num_masks: float
    ) -> dict[str, Tensor]:
        """Unweighted loss_ce, loss_mask, loss_dice of one decoder layer (matching redone for this layer)."""
        logits, masks = _fp32(logits), _fp32(masks)
        indices = self.matcher(logits, masks, labels, list(all_masks.split([len(lb) for lb in labels])))
        batch = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)]).to(masks.device)  # [M]
        src = torch.cat([s for s, _ in indices]).to(masks.device)  # [M] query index
        offsets = torch.tensor([0] + [len(lb) for lb in labels]).cumsum(0)[:-1]
        tgt = torch.cat([t + offsets[b] for b, (_, t) in enumerate(indices)]).to(masks.device)  # [M] into all targets
        loss_ce = self.loss_ce(logits, batch, src, torch.cat(labels)[tgt])
        if self.point_sampling:  # matched logits [M, h, w] vs bool targets [M, H, W]
            mask, dice = point_sampled_mask_losses(masks[batch, src], all_masks[tgt], **self.point_args)
        else:
            mask, dice = full_res_mask_losses(masks[batch, src], all_masks[tgt])
        return {"loss_ce": loss_ce, "loss_mask": mask.sum() / num_masks, "loss_dice": dice.sum() / num_masks}

    def loss_ce(self, logits: Tensor, batch: Tensor, src: Tensor, matched_labels: Tensor) -> Tensor:
        """Weighted-mean CE over all B*Q queries; unmatched queries target the no-object class K."""
        target = torch.full(logits.shape[:2], self.num_classes, dtype=torch.long, device=logits.device)  # [B, Q]
        target[batch, src] = matched_labels
        weight = self.empty_weight.to(logits.dtype)
        return F.cross_entropy(logits.transpose(1, 2), target, weight=weight)  # logits as [B, K+1, Q]


class PerPixelCriterion(nn.Module):
    """PerPixelBaseline/+ loss: softmax CE of the [B, K, h, w] logits upsampled x4 (bilinear) to the padded input; with
    aux outputs (PerPixelBaseline+) the same loss on every aux layer (loss_sem_seg_i)."""

    def __init__(
        self, *, num_classes: int, ignore_label: int = 255, loss_weight: float = 1.0, deep_supervision: bool = True
    ):
        super().__init__()
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.loss_weight = loss_weight
        self.deep_supervision = deep_supervision

    def forward(self, outputs: dict, targets: list[SegTarget]) -> dict[str, Tensor]:
        """outputs: {"sem_seg": [B, K, h, w], optional "aux_outputs": [{"sem_seg"}]} -> weighted terms + "loss"."""
        _check_outputs(outputs, ("sem_seg",), "PerPixelCriterion")
        B, K, h, w = outputs["sem_seg"].shape
        if K != self.num_classes or len(targets) != B:
            raise ValueError(
                f"PerPixelCriterion: sem_seg {(B, K, h, w)} vs {len(targets)} targets and {self.num_classes} classes"
            )
        layers = [outputs] + (list(outputs.get("aux_outputs", [])) if self.deep_supervision else [])
        with torch.autocast(outputs["sem_seg"].device.type, enabled=False):
            labels = self.label_maps(targets, (STRIDE * h, STRIDE * w), outputs["sem_seg"].device)
            losses = {}
            for i, layer in enumerate(layers):
                _check_outputs(layer, ("sem_seg",), f"PerPixelCriterion aux_outputs[{i - 1}]")
                key = "loss_sem_seg" if i == 0 else f"loss_sem_seg_{i - 1}"
                losses[key] = self.loss_weight * self.cross_entropy(layer["sem_seg"], labels)
        losses["loss"] = sum(losses.values())
        return losses

    def cross_entropy(self, logits: Tensor, labels: Tensor) -> Tensor:
        """CE of logits [B, K, h, w] against labels [B, H, W], mean over non-ignored pixels (0 if there are none)."""
        up = F.interpolate(_fp32(logits), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        total = F.cross_entropy(up, labels, ignore_index=self.ignore_label, reduction="sum")
        return total / (labels != self.ignore_label).sum().clamp(min=1)

    def label_maps(self, targets: list[SegTarget], size: tuple[int, int], device: torch.device) -> Tensor:
        """[B, H, W] int64 label maps padded with the ignore value. A target without sem_seg is rebuilt from its
        masks (pixels in no mask are ignored)."""
        out = torch.full((len(targets), *size), self.ignore_label, dtype=torch.long, device=device)
        for i, tgt in enumerate(targets):
            sem = tgt.sem_seg
            if sem is None:
                sem = torch.full(tgt.masks.shape[-2:], self.ignore_label, dtype=torch.long, device=tgt.masks.device)
                for lab, m in zip(tgt.labels.tolist(), tgt.masks):
                    sem[m.bool()] = lab
            if sem.ndim != 2 or sem.shape[0] > size[0] or sem.shape[1] > size[1]:
                raise ValueError(f"targets[{i}].sem_seg {tuple(sem.shape)} does not fit the padded input size {size}")
            sem = sem.to(device=device, dtype=torch.long)
            bad = (sem != self.ignore_label) & ((sem < 0) | (sem >= self.num_classes))
            if bad.any():
                raise ValueError(
                    f"targets[{i}].sem_seg has labels {sem[bad].unique().tolist()[:10]} outside [0, {self.num_classes})"
                    f" that are not the ignore label {self.ignore_label}"
                )
            out[i, : sem.shape[0], : sem.shape[1]] = sem
        return out


def build_criterion(cfg: Config) -> nn.Module:
    """The criterion of cfg.model.arch; SetCriterion's keywords are the fields of `cfg.loss`. The matcher's class cost
    weight is 1 as in the official MaskFormer (which ignores CLASS_WEIGHT there); with point sampling it is
    cfg.loss.class_weight, as in Mask2Former."""
    m, lc = cfg.model, cfg.loss
    if m.arch in PER_PIXEL_ARCHS:
        return PerPixelCriterion(
            num_classes=m.num_classes,
            ignore_label=cfg.data.ignore_label,
            deep_supervision=m.arch == "per_pixel_baseline_plus",
        )
    if m.arch not in ("maskformer", "mask2former"):  # the same SetCriterion; Mask2Former presets set point_sampling
        raise ValueError(f"unknown model.arch {m.arch!r}; valid: maskformer, mask2former, {', '.join(PER_PIXEL_ARCHS)}")
    matcher = HungarianMatcher(
        cost_class=lc.class_weight if lc.point_sampling else 1.0,
        cost_mask=lc.mask_weight,
        cost_dice=lc.dice_weight,
        num_points=lc.num_points if lc.point_sampling else 0,
    )
    return SetCriterion(num_classes=m.num_classes, matcher=matcher, **dataclasses.asdict(lc))
