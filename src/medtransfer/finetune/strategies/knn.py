"""k-nearest-neighbour classification on frozen features, the SSL literature's training-free probe (Wu et al. 2018,
"Unsupervised feature learning via non-parametric instance discrimination"; DINO, Caron et al. 2021).

Features are L2-normalised; a query's ``k`` most cosine-similar labelled images vote with weight
``exp(similarity / temperature)``, and the class scores are the normalised vote totals. Multi-label tasks vote per
label: a label's score is the weighted share of neighbours carrying it, among those whose label is known (CheXpert's
ignored uncertain labels do not vote). With fewer labelled images than ``k``, all of them vote.
"""

from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from medtransfer.finetune.strategies.base import Strategy, freeze_units_except

QUERY_CHUNK = 1024  # queries per similarity block: bounds memory at QUERY_CHUNK x n_train similarities


class KNN(Strategy):
    name: Literal["knn"] = "knn"
    k: int = Field(20, ge=1)
    temperature: float = Field(0.07, gt=0)
    frozen_backbone: ClassVar[bool] = True

    def label(self) -> str:
        return f"knn k={self.k} T={self.temperature:g}"

    def prepare(self, backbone, view):
        freeze_units_except(backbone, view, keep_trainable=[])

    def scores(self, reference: np.ndarray, targets: np.ndarray, queries: np.ndarray, task: str,
               num_classes: int) -> np.ndarray:
        """(n_queries, num_classes) scores from the votes of ``reference`` features labelled ``targets``.

        ``targets`` are class indices, or for multi-label tasks (N, L) 0/1 values (soft values count as such,
        NaN = unknown).
        """
        device = "cuda" if torch.cuda.is_available() else "cpu"
        ref = F.normalize(torch.as_tensor(reference, dtype=torch.float32, device=device), dim=1)
        if task == "multilabel":
            votes = torch.as_tensor(np.asarray(targets, dtype=np.float32), device=device)
            known = ~torch.isnan(votes)
            votes = torch.nan_to_num(votes, nan=0.0)
        else:
            votes = F.one_hot(torch.as_tensor(targets, device=device).long(), num_classes).float()
            known = torch.ones_like(votes, dtype=torch.bool)
        k = min(self.k, len(ref))
        out = []
        for block in torch.as_tensor(queries, dtype=torch.float32, device=device).split(QUERY_CHUNK):
            sim, neighbours = (F.normalize(block, dim=1) @ ref.T).topk(k, dim=1)
            # exp((s - s_max) / T): the common factor exp(s_max / T) cancels in the normalisation, overflow cannot
            weights = torch.exp((sim - sim[:, :1]) / self.temperature).unsqueeze(2)
            total = (weights * known[neighbours]).sum(1)
            share = (weights * votes[neighbours]).sum(1) / total.clamp_min(torch.finfo(total.dtype).tiny)
            out.append(torch.where(total > 0, share, torch.full_like(share, 0.5)))  # no known neighbour: undecided
        return torch.cat(out).cpu().numpy()
