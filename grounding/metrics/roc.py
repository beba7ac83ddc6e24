"""Area under the ROC curve of a score against binary labels (benchmarks/diagnostics/stvg_when_probe.py: how well
frozen features tell a frame inside the referred span from one outside)."""
from __future__ import annotations

import numpy as np


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve: the chance a positive scores above a negative (ties count a half)."""
    label = label.astype(bool)
    pos, neg = int(label.sum()), int((~label).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(score)   # ties share their mean rank
    return float((ranks[label].sum() - pos * (pos + 1) / 2) / (pos * neg))
