"""The published MedMNIST v2 cells (Yang et al. 2023, Tables 3-4) that protocol runs are compared with."""

import pytest

from medtransfer.report.medmnist_v2_published import PUBLISHED, datasets_reported, model_label, published


@pytest.mark.parametrize("dataset, model, auc, acc, verified", [
    ("pneumoniamnist", "ResNet-18 (28)", 0.944, 0.854, True),
    ("pneumoniamnist", "ResNet-50 (224)", 0.962, 0.884, True),
    ("retinamnist", "ResNet-18 (224)", 0.710, 0.493, True),
    ("pathmnist", "ResNet-50 (28)", 0.990, 0.911, True),
    ("breastmnist", "ResNet-50 (28)", 0.857, 0.812, False),
    ("chestmnist", "Google AutoML Vision", 0.778, None, True),
    ("adrenalmnist3d", "ResNet-18 + 3D", 0.827, 0.721, False),
    ("nodulemnist3d", "ResNet-50 + 3D", 0.875, 0.847, False),
])
def test_cells_match_the_paper(dataset, model, auc, acc, verified):
    cell = published(dataset, model)
    assert (cell.auc, cell.acc, cell.verified) == (auc, acc, verified)


def test_every_cell_is_a_probability_and_every_model_has_its_datasets():
    assert all(0.5 < c.auc <= 1 and (c.acc is None or 0 < c.acc <= 1) for c in PUBLISHED.values())
    assert len(PUBLISHED) == 5 * 6 + 2 * 3
    assert datasets_reported()[:2] == ["pneumoniamnist", "breastmnist"] and "organmnist3d" in datasets_reported()
    assert published("bloodmnist", "ResNet-18 (28)") is None  # not transcribed: shown as "—", never invented


def test_protocol_runs_map_onto_the_table_rows():
    assert model_label("resnet18", "28") == "ResNet-18 (28)"
    assert model_label("resnet50", "224") == "ResNet-50 (224)"
    assert model_label("resnet50", "3d") == "ResNet-50 + 3D"
