"""Classification metrics computed in torch, equal to scikit-learn's definitions."""

from __future__ import annotations

import torch
from torch import Tensor


def accuracy(pred: Tensor, target: Tensor) -> float:
    """Fraction of correct predictions; ``pred`` holds class indices."""
    if target.numel() == 0:
        return float("nan")
    return float((pred == target).float().mean())


def macro_f1(pred: Tensor, target: Tensor) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``pred`` or ``target``,
    as ``sklearn.metrics.f1_score(average="macro")`` (0 where precision + recall is 0)."""
    if target.numel() == 0:
        return float("nan")
    num_classes = int(torch.maximum(pred.max(), target.max())) + 1
    tp = torch.bincount(target[pred == target], minlength=num_classes).double()
    predicted = torch.bincount(pred, minlength=num_classes).double()
    actual = torch.bincount(target, minlength=num_classes).double()
    present = (predicted + actual) > 0
    denom = predicted + actual
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))
    return float(f1[present].mean())


def classification_metrics(logits: Tensor, target: Tensor) -> dict[str, float]:
    pred = logits.argmax(dim=-1)
    return {"acc": accuracy(pred, target), "macro_f1": macro_f1(pred, target)}
