"""Metrics of property prediction: Kendall's tau (ranking) and R² (fit)."""

from __future__ import annotations

from typing import Any

import numpy as np

from hyper.errors import WeightspaceError

__all__ = ["kendall_tau", "r2_score"]


def kendall_tau(pred: Any, y: Any) -> float:
    """Kendall rank correlation (tau-b) between predictions and labels."""
    from scipy.stats import kendalltau

    pred, y = np.asarray(pred, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if pred.shape != y.shape or pred.size < 2:
        raise WeightspaceError(
            f"kendall_tau: need two equal-length vectors, got {pred.shape} {y.shape}"
        )
    tau = kendalltau(pred, y).statistic
    return float(tau) if np.isfinite(tau) else 0.0


def r2_score(pred: Any, y: Any) -> float:
    """Coefficient of determination ``1 - SS_res / SS_tot``."""
    pred, y = np.asarray(pred, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - pred) ** 2).sum()) / max(ss_tot, 1e-12)
