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


def member_metrics(pred: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Accuracy and macro F1 of many members at once, each on its own nodes: ``pred [N, M]``
    class indices, ``target [N]``, ``mask [M, N]``; two float64 ``[M]`` tensors equal to
    :func:`accuracy` and :func:`macro_f1` of each member's masked nodes (NaN for a member
    without nodes). A few counting passes instead of a dozen small operations per member,
    which on a GPU were each a kernel launch and a read-back."""
    members = pred.size(1)
    member, node = mask.nonzero(as_tuple=True)
    p, t = pred[node, member], target[node]
    classes = int(torch.maximum(pred.max(), target.max())) + 1 if len(node) else 1

    def counts(index: Tensor) -> Tensor:
        return torch.bincount(index, minlength=members * classes).view(members, classes)

    cell = member * classes
    predicted, actual = counts(cell + p).double(), counts(cell + t).double()
    hit = p == t
    tp = counts((cell + t)[hit]).double()
    denom = predicted + actual
    present = denom > 0
    f1 = torch.where(present, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))
    macro = (f1 * present).sum(1) / present.sum(1)  # 0/0 = NaN without nodes
    acc = torch.bincount(member[hit], minlength=members).double() \
        / torch.bincount(member, minlength=members).double()
    return acc, macro
