"""Classification from CSV: label layouts, CheXpert uncertainty policies, ChestX-ray14 lists, patient splits."""

import itertools

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medtransfer.data import load_dataset
from medtransfer.data.csv_dataset import UNCERTAIN_POLICIES, TargetSplit, had_negative_targets, uncertain_targets
from medtransfer.errors import DataError

RAW = np.array([[1, -1, np.nan], [0, -1, -1], [-1, 0, 1]], float)


def write_pngs(root, names, size=(12, 10)):
    rng = np.random.default_rng(0)
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(path)


@pytest.mark.parametrize("policy, expected", [
    ("ones", [[1, 1, 0], [0, 1, 1], [1, 0, 1]]),
    ("zeros", [[1, 0, 0], [0, 0, 0], [0, 0, 1]]),
    ("ignore", [[1, 0, 0], [0, 0, 0], [0, 0, 1]]),
    ("smoothed_ones", [[1, 1, 0], [0, 1, 1], [1, 0, 1]]),
    ("smoothed_zeros", [[1, 0, 0], [0, 0, 0], [0, 0, 1]]),
])
def test_uncertain_policies_give_the_documented_targets(policy, expected):
    labels, soft, mask = uncertain_targets(RAW, [policy] * 3, np.random.default_rng(0))
    np.testing.assert_array_equal(labels, expected)
    uncertain = RAW == -1
    if policy == "ignore":
        np.testing.assert_array_equal(mask, ~uncertain)
    else:
        assert mask is None
    if policy.startswith("smoothed"):
        lo, hi = (0.55, 0.85) if policy == "smoothed_ones" else (0.0, 0.3)
        assert ((soft[uncertain] >= lo) & (soft[uncertain] <= hi)).all()
        np.testing.assert_array_equal(soft[~uncertain], np.array(expected)[~uncertain])
        assert soft.dtype == np.float32
    else:
        assert soft is None


def test_per_label_policies():
    labels, soft, mask = uncertain_targets(RAW, ["ones", "ignore", "zeros"], np.random.default_rng(0))
    np.testing.assert_array_equal(labels, [[1, 0, 0], [0, 0, 0], [1, 0, 1]])
    np.testing.assert_array_equal(mask, [[True, False, True], [True, False, True], [True, True, True]])
    assert soft is None


@pytest.mark.parametrize("policies", list(itertools.product(UNCERTAIN_POLICIES, repeat=3)))
def test_every_mix_and_order_of_policies_gives_each_column_its_own_targets(policies):
    """A U-Ones/U-Zeros column after a smoothed one once kept soft target -1; draws go to smoothed columns only, in
    column order, so they are those an all-smoothed call makes (why unaffected runs keep their ids)."""
    labels, soft, mask = uncertain_targets(RAW, list(policies), np.random.default_rng(0))
    soft = labels.astype(np.float32) if soft is None else soft
    assert ((soft >= 0) & (soft <= 1)).all()
    uncertain, certain = RAW == -1, np.nan_to_num(RAW)
    replay = np.random.default_rng(0)
    for column, policy in enumerate(policies):
        here, kept = uncertain[:, column], ~uncertain[:, column]
        np.testing.assert_array_equal(soft[kept, column], certain[kept, column])
        np.testing.assert_array_equal(labels[kept, column], certain[kept, column])
        assert (labels[here, column] == (policy in ("ones", "smoothed_ones"))).all()
        assert (mask is not None and not mask[here, column].any()) == (policy == "ignore")
        if policy in ("ones", "zeros"):
            assert (soft[here, column] == (policy == "ones")).all()
        elif policy.startswith("smoothed"):
            lo, hi = (0.55, 0.85) if policy == "smoothed_ones" else (0.0, 0.3)
            np.testing.assert_array_equal(soft[here, column], replay.uniform(lo, hi, here.sum()).astype(np.float32))
            assert ((soft[here, column] >= lo) & (soft[here, column] <= hi)).all()


@pytest.mark.parametrize("uncertain, changed", [
    ({"a": "smoothed_ones"}, True),  # b and c default to zeros
    ({"a": "smoothed_zeros", "b": "ignore", "c": "ones"}, True),
    ({"a": "ones", "b": "zeros", "c": "smoothed_ones"}, False),  # smoothed last: nothing after it
    ({"a": "smoothed_ones", "b": "smoothed_zeros", "c": "smoothed_ones"}, False),  # Pham et al.'s mix
    ({"a": "smoothed_ones", "b": "ignore", "c": "smoothed_zeros"}, False),  # ignored entries never reach the loss
    ("smoothed_ones", False), ("ones", False), (None, False),
])
def test_had_negative_targets_names_exactly_the_policies_whose_targets_changed(uncertain, changed):
    assert had_negative_targets(uncertain, ("a", "b", "c")) is changed
    assert not had_negative_targets(uncertain, ())  # not a multi-label dataset: no policy acts


def test_chexpert_preset_reads_paths_patients_views_and_policy(tmp_path):
    root = tmp_path / "CheXpert-v1.0-small"
    names = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
    train = []
    for p in range(1, 11):
        labels = [(p + k) % 3 - 1 for k in range(5)]  # cycles through -1, 0, 1
        labels[p % 5] = 1
        train.append([f"CheXpert-v1.0-small/train/patient{p:05d}/study1/view1_frontal.jpg", "Frontal", *labels])
        train.append([f"CheXpert-v1.0-small/train/patient{p:05d}/study1/view2_lateral.jpg", "Lateral", *labels])
    valid = [[f"CheXpert-v1.0-small/valid/patient{p:05d}/study1/view1_frontal.jpg", "Frontal", 1, 1, 1, 1, 1]
             for p in range(64541, 64543)]
    columns = ["Path", "Frontal/Lateral", *names]
    pd.DataFrame(train, columns=columns).to_csv(root.mkdir() or root / "train.csv", index=False)
    pd.DataFrame(valid, columns=columns).to_csv(root / "valid.csv", index=False)
    write_pngs(tmp_path, [row[0].replace(".jpg", ".jpg") for row in train + valid])
    data = load_dataset("chexpert", root=str(root), uncertain="ignore", val_fraction=2, size=16)
    assert data.task == "multilabel" and data.class_names == tuple(names)
    assert (len(data.train), len(data.val), len(data.test)) == (8, 2, 2)  # frontal only, 2 val patients
    assert isinstance(data.train, TargetSplit) and data.train.label_mask is not None
    raw = np.array([row[2:] for row in train[::2]], float)
    by_patient = {f"patient{p:05d}": raw[p - 1] for p in range(1, 11)}
    for split in (data.train, data.val):
        for patient, labels, mask in zip(split.patients, split.labels, split.label_mask):
            np.testing.assert_array_equal(labels, by_patient[patient] == 1)
            np.testing.assert_array_equal(mask, by_patient[patient] != -1)
    assert set(data.test.patients) == {"patient64541", "patient64542"}


def test_chestxray14_parses_finding_lists_and_official_test_list(tmp_path):
    from medtransfer.data.chest_xray import CHESTXRAY14_LABELS

    rows = []
    for i, label in enumerate(CHESTXRAY14_LABELS * 3):  # 3 patients per finding: 2 val patients leave one
        findings = label if i % 3 else f"{label}|Effusion"
        rows.append([f"{i:08d}_000.png", findings, i])
    rows += [["99999998_000.png", "No Finding", 50], ["99999999_000.png", "Mass|Hernia", 51]]
    table = pd.DataFrame(rows, columns=["Image Index", "Finding Labels", "Patient ID"])
    table.to_csv(tmp_path / "Data_Entry_2017.csv", index=False)
    (tmp_path / "test_list.txt").write_text("99999998_000.png\n99999999_000.png\n")
    write_pngs(tmp_path / "images", table["Image Index"])
    data = load_dataset("chestxray14", root=str(tmp_path), size=16, val_fraction=2)
    assert data.class_names == CHESTXRAY14_LABELS and data.in_chans == 1
    np.testing.assert_array_equal(data.test.labels[0], np.zeros(14))  # No Finding
    expected = np.zeros(14, int)
    expected[[CHESTXRAY14_LABELS.index("Mass"), CHESTXRAY14_LABELS.index("Hernia")]] = 1
    np.testing.assert_array_equal(data.test.labels[1], expected)
    assert len(data.test) == 2 and len(set(data.val.patients) & set(data.train.patients)) == 0
    assert data.train.labels[:, CHESTXRAY14_LABELS.index("Effusion")].sum() > 1


def test_user_split_that_leaks_a_patient_is_refused(tmp_path):
    write_pngs(tmp_path, [f"{i}.png" for i in range(6)])
    pd.DataFrame({"path": [f"{i}.png" for i in range(6)], "label": ["cat", "dog"] * 3,
                  "patient": ["p1", "p1", "p2", "p3", "p4", "p4"],
                  "split": ["train", "test", "train", "val", "test", "test"]}).to_csv(tmp_path / "l.csv", index=False)
    with pytest.raises(DataError, match=r"patient\(s\) p1 \(train\+test\) appear in more than one split"):
        load_dataset("csv", root=str(tmp_path), csv="l.csv", patient_column="patient", split_column="split")


def test_single_label_csv_infers_task_and_reports_missing_images(tmp_path):
    names = [f"img/{i}.png" for i in range(10)]
    write_pngs(tmp_path, names[:9])
    labels = ["normal", "pneumonia"] * 5
    pd.DataFrame({"path": names, "label": labels}).to_csv(tmp_path / "l.csv", index=False)
    with pytest.raises(DataError, match=r"img/9\.png: file not found"):
        load_dataset("csv", root=str(tmp_path), csv="l.csv", size=8)
    data = load_dataset("csv", root=str(tmp_path), csv="l.csv", size=8, on_error="skip", test_fraction=2,
                        val_fraction=2)
    assert data.task == "binary" and data.class_names == ("normal", "pneumonia")
    assert len(data.train) + len(data.val) + len(data.test) == 9 and data.image_size == (8, 8)
    assert "img/9.png (file not found)" in data.description


def test_bad_label_values_are_named(tmp_path):
    write_pngs(tmp_path, ["a.png", "b.png"])
    pd.DataFrame({"path": ["a.png", "b.png"], "A": [1, 2], "B": [0, 1]}).to_csv(tmp_path / "l.csv", index=False)
    with pytest.raises(DataError, match=r"column 'A' in CSV line 3 holds 2; allowed: 1, 0, -1"):
        load_dataset("csv", root=str(tmp_path), csv="l.csv", label_columns=["A", "B"])
    with pytest.raises(DataError, match=r"label_columns='diagnosis' is not a column"):
        load_dataset("csv", root=str(tmp_path), csv="l.csv", label_columns="diagnosis")
