"""Scoring of test predictions: MedMNIST v2 classification metrics and MONAI segmentation metrics.

The metric modules load on first use: tables and reports need only ``LOWER_IS_BETTER``, not scikit-learn or MONAI.
"""

from medtransfer.lazy import lazy_attributes

LOWER_IS_BETTER = frozenset({"loss", "mae", "hd95"})  # model selection and tables minimise these

__getattr__ = lazy_attributes(__name__, {"METRICS": "metrics", "TASKS": "metrics", "compute_metrics": "metrics",
                                         "SEGMENTATION_METRICS": "segmentation"})

__all__ = ["LOWER_IS_BETTER", "METRICS", "SEGMENTATION_METRICS", "TASKS", "compute_metrics"]
