"""The published MedMNIST v2 baselines that medtransfer's protocol runs are compared with.

Test AUC / ACC from Yang et al., "MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image
classification", Scientific Data 10:41 (2023), Tables 3 (2D) and 4 (3D). Only the datasets whose cells were
transcribed are listed; a cell marked ``verified=False`` was not checked against a second copy of the table and is
shown with a dagger wherever it is printed. The "(224)" rows are the 28 px images upsampled to 224 px, not the
MedMNIST+ 224 px files.
"""

from __future__ import annotations

from dataclasses import dataclass

CITATION = "Yang et al., MedMNIST v2, Scientific Data 10:41 (2023), Tables 3-4"


@dataclass(frozen=True)
class Published:
    auc: float
    acc: float | None  # None: the table's ACC was not transcribed (ChestMNIST)
    verified: bool = True  # read from two independent copies of the table


def _row(model: str, cells: dict[str, tuple[float, float | None, bool]]) -> dict[tuple[str, str], Published]:
    return {(dataset, model): Published(*cell) for dataset, cell in cells.items()}


_V, _U = True, False  # verified, unverified
PUBLISHED: dict[tuple[str, str], Published] = {
    **_row("ResNet-18 (28)", {
        "pneumoniamnist": (0.944, 0.854, _V), "breastmnist": (0.901, 0.863, _V), "retinamnist": (0.717, 0.524, _V),
        "dermamnist": (0.917, 0.735, _U), "pathmnist": (0.983, 0.907, _V), "chestmnist": (0.768, None, _V)}),
    **_row("ResNet-18 (224)", {
        "pneumoniamnist": (0.956, 0.864, _V), "breastmnist": (0.891, 0.833, _U), "retinamnist": (0.710, 0.493, _V),
        "dermamnist": (0.920, 0.754, _U), "pathmnist": (0.989, 0.909, _U), "chestmnist": (0.773, None, _V)}),
    **_row("ResNet-50 (28)", {
        "pneumoniamnist": (0.948, 0.854, _V), "breastmnist": (0.857, 0.812, _U), "retinamnist": (0.726, 0.528, _V),
        "dermamnist": (0.913, 0.735, _U), "pathmnist": (0.990, 0.911, _V), "chestmnist": (0.769, None, _V)}),
    **_row("ResNet-50 (224)", {
        "pneumoniamnist": (0.962, 0.884, _V), "breastmnist": (0.866, 0.842, _U), "retinamnist": (0.716, 0.511, _V),
        "dermamnist": (0.912, 0.731, _U), "pathmnist": (0.989, 0.892, _U), "chestmnist": (0.773, None, _V)}),
    **_row("Google AutoML Vision", {
        "pneumoniamnist": (0.991, 0.946, _V), "breastmnist": (0.919, 0.861, _U), "retinamnist": (0.750, 0.531, _V),
        "dermamnist": (0.914, 0.768, _U), "pathmnist": (0.944, 0.728, _U), "chestmnist": (0.778, None, _V)}),
    **_row("ResNet-18 + 3D", {
        "adrenalmnist3d": (0.827, 0.721, _U), "nodulemnist3d": (0.863, 0.844, _U), "organmnist3d": (0.996, 0.907, _U)}),
    **_row("ResNet-50 + 3D", {
        "adrenalmnist3d": (0.828, 0.745, _U), "nodulemnist3d": (0.875, 0.847, _U), "organmnist3d": (0.994, 0.883, _U)}),
}


def model_label(arch: str, variant: str) -> str:
    """The table's row name for a protocol run: ``resnet18`` + ``28`` -> "ResNet-18 (28)", + ``3d`` -> "+ 3D"."""
    name = {"resnet18": "ResNet-18", "resnet50": "ResNet-50"}[arch]
    return f"{name} + 3D" if variant == "3d" else f"{name} ({variant})"


def published(dataset: str, model: str) -> Published | None:
    """The paper's cell for ``dataset`` (medmnist flag, e.g. pneumoniamnist) under ``model``; None if not listed."""
    return PUBLISHED.get((dataset, model))


def datasets_reported() -> list[str]:
    """Every dataset with at least one transcribed cell, in first-seen order."""
    return list(dict.fromkeys(dataset for dataset, _ in PUBLISHED))
