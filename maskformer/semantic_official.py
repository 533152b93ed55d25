"""placeholder"""
import torch
import torch.nn.functional as F


def official_labels(probs, masks, low, pad, img, out, before_inference):
    from maskformer.inference import _official_semantic
    return _official_semantic(probs, masks, pad, img, out, before_inference).argmax(0)
