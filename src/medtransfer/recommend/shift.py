"""Signal 3, the representation shift S(u) = 1 - linear CKA between unit u's pooled validation features of the init
and of its copy after the short end-to-end fine-tuning of signal 2 (no extra training).

Linear CKA (Kornblith et al., "Similarity of Neural Network Representations Revisited", ICML 2019) is invariant to
rotations and isotropic scaling of the features, so S(u) measures how much the *structure* of unit u's
representation had to move for the task: units that move most are where adaptation happens (Neyshabur et al.,
"What is being transferred in transfer learning?", NeurIPS 2020, observe the same with CKA along depth).
"""

from __future__ import annotations

import numpy as np


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two (N, d) feature matrices of the same N inputs: ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)
    with column-centred Xc, Yc (Kornblith et al. 2019, eq. 5); 1 for identical features, 0 for orthogonal ones."""
    xc = x - x.mean(0, keepdims=True)
    yc = y - y.mean(0, keepdims=True)
    cross = np.linalg.norm(yc.T @ xc) ** 2
    norms = np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)
    return float(cross / norms) if norms > 0 else float("nan")  # a constant feature map has no structure to compare


def unit_shifts(before: list[np.ndarray], after: list[np.ndarray]) -> np.ndarray:
    """S(u) = 1 - CKA(before[u], after[u]) for every unit."""
    return np.array([1.0 - linear_cka(b, a) for b, a in zip(before, after)])
