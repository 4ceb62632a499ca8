"""Blank cells in 0/1 label columns: refused by the generic CSV loader (naming file, lines and column) unless the
user says blanks are negatives; CheXpert's preset keeps its documented "blank = not mentioned = 0"."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medtransfer.data import load_dataset
from medtransfer.errors import DataError


def write_pngs(root, names):
    rng = np.random.default_rng(0)
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (10, 12), dtype=np.uint8)).save(root / name)


def labelled_csv(tmp_path, a, b):
    """A two-label CSV whose last two rows are val and test, so each split's content is known."""
    names = [f"{i}.png" for i in range(len(a))]
    write_pngs(tmp_path, names)
    split = ["train"] * (len(a) - 2) + ["val", "test"]
    pd.DataFrame({"path": names, "A": a, "B": b, "split": split}).to_csv(tmp_path / "labels.csv", index=False)
    return {"root": str(tmp_path), "csv": "labels.csv", "label_columns": ["A", "B"], "size": 8,
            "split_column": "split"}


def test_blank_label_cells_are_refused_naming_file_lines_and_column(tmp_path):
    options = labelled_csv(tmp_path, [1, 0, 1, 0, 1, 0], [0, None, 1, None, 0, 1])
    with pytest.raises(DataError, match=rf"csv: CSV dataset {tmp_path / 'labels.csv'}: column 'B' is blank in CSV "
                                        r"line\(s\) 3, 5; allowed: 1, 0, -1 \(uncertain\), or "
                                        r"blank_labels='negative'"):
        load_dataset("csv", **options)


def test_blanks_read_as_negatives_when_asked(tmp_path):
    options = labelled_csv(tmp_path, [1, 0, 1, 0, 1, 0, 1, 0], [0, None, 1, None, 0, 1, None, 1])
    data = load_dataset("csv", **options, blank_labels="negative")
    np.testing.assert_array_equal(data.train.labels[:, 1], [0, 0, 1, 0, 0, 1])
    assert data.val.labels[0, 1] == 0 and data.test.labels[0, 1] == 1


def test_text_in_a_label_column_is_not_taken_for_a_blank(tmp_path):
    options = labelled_csv(tmp_path, [1, 0, 1, 0, 1, 0], [0, "yes", 1, 0, 1, 0])
    with pytest.raises(DataError, match=r"column 'B' in CSV line 3 holds yes; allowed: 1, 0, -1"):
        load_dataset("csv", **options, blank_labels="negative")


def test_unknown_blank_policy_is_refused(tmp_path):
    options = labelled_csv(tmp_path, [1, 0, 1, 0], [0, 1, 0, 1])
    with pytest.raises(DataError, match=r"blank_labels='zero'; allowed: error, negative"):
        load_dataset("csv", **options, blank_labels="zero")


def test_chexpert_preset_keeps_blanks_as_not_mentioned(tmp_path):
    root = tmp_path / "CheXpert-v1.0-small"
    root.mkdir()
    names = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
    train = [[f"CheXpert-v1.0-small/train/patient{p:05d}/study1/view1_frontal.jpg", "Frontal",
              1, 1 if p <= 3 else None, int(p % 3 == 0), 1 if p % 2 else None, -1] for p in range(1, 9)]
    valid = [["CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg", "Frontal", 1, 0, 0, 1, 1]]
    columns = ["Path", "Frontal/Lateral", *names]
    pd.DataFrame(train, columns=columns).to_csv(root / "train.csv", index=False)
    pd.DataFrame(valid, columns=columns).to_csv(root / "valid.csv", index=False)
    write_pngs(tmp_path, [row[0] for row in train + valid])
    data = load_dataset("chexpert", root=str(root), uncertain="ones", val_fraction=1, size=8)
    for split in (data.train, data.val):
        patient = np.array([int(p[-5:]) for p in split.patients])
        np.testing.assert_array_equal(split.labels[:, 1], patient <= 3)  # Cardiomegaly: blank (0) after patient 3
        np.testing.assert_array_equal(split.labels[:, 3], patient % 2 == 1)  # Edema: blank (0) on even patients
