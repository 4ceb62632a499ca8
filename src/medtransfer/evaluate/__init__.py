"""Scoring of test predictions with the MedMNIST v2 metric definitions."""

from medtransfer.evaluate.metrics import METRICS, TASKS, compute_metrics

__all__ = ["METRICS", "TASKS", "compute_metrics"]
