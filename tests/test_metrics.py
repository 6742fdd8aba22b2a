"""Metrics agree with scikit-learn."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, f1_score

from gnn.metrics import accuracy, classification_metrics, macro_f1

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
