"""Scoring of test predictions: MedMNIST v2 classification metrics and MONAI segmentation metrics."""

from medtransfer.evaluate.metrics import METRICS, TASKS, compute_metrics
from medtransfer.evaluate.segmentation import SEGMENTATION_METRICS

LOWER_IS_BETTER = frozenset({"loss", "mae", "hd95"})  # model selection and tables minimise these

__all__ = ["LOWER_IS_BETTER", "METRICS", "SEGMENTATION_METRICS", "TASKS", "compute_metrics"]
