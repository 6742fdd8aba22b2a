"""Metrics agree with scikit-learn."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, f1_score

from gnn.metrics import accuracy, classification_metrics, macro_f1, member_metrics

labels = st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=200)


@given(labels)
def test_macro_f1_matches_sklearn(pairs: list[tuple[int, int]]) -> None:
    pred = torch.tensor([p for p, _ in pairs])
    target = torch.tensor([t for _, t in pairs])
    expected = f1_score(target.numpy(), pred.numpy(), average="macro", zero_division=0)
    assert macro_f1(pred, target) == pytest.approx(expected, abs=1e-12)


@given(labels)
def test_accuracy_matches_sklearn(pairs: list[tuple[int, int]]) -> None:
    pred = torch.tensor([p for p, _ in pairs])
    target = torch.tensor([t for _, t in pairs])
    assert accuracy(pred, target) == pytest.approx(accuracy_score(target, pred))


def test_classification_metrics_uses_argmax() -> None:
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    out = classification_metrics(logits, torch.tensor([1, 0, 0]))
    assert out["acc"] == pytest.approx(2 / 3)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_member_metrics_equal_each_members_own(data: st.DataObject) -> None:
    """The many-member counts give each member exactly what the per-call metrics give it on
    its own masked nodes (NaN for a member without nodes)."""
    nodes = data.draw(st.integers(1, 30))
    members = data.draw(st.integers(1, 5))
    classes = data.draw(st.integers(1, 6))
    ints = st.lists(st.integers(0, classes - 1), min_size=nodes * members,
                    max_size=nodes * members)
    pred = torch.tensor(data.draw(ints)).view(nodes, members)
    target = torch.tensor(data.draw(ints)[:nodes])
    mask = torch.tensor(data.draw(st.lists(st.booleans(), min_size=nodes * members,
                                           max_size=nodes * members))).view(members, nodes)
    acc, f1 = member_metrics(pred, target, mask)
    for m in range(members):
        own = pred[:, m][mask[m]], target[mask[m]]
        for ours, theirs in ((acc[m], accuracy(*own)), (f1[m], macro_f1(*own))):
            if math.isnan(theirs):
                assert math.isnan(float(ours))
            else:
                assert float(ours) == pytest.approx(theirs, abs=1e-6)  # float32 mean
