"""Patient-grouped splits never leak; a user split that leaks is refused with the patients named."""

import numpy as np
import pytest

from medtransfer.data.splits import check_part, check_split_leak, group_split, normalise_split_names
from medtransfer.errors import DataError


@pytest.mark.parametrize("seed", range(20))
def test_group_split_never_puts_a_patient_in_two_splits(seed):
    rng = np.random.default_rng(seed)
    patients = rng.integers(0, 60, 400).astype(str)  # 1..many images per patient
    assignment = group_split(patients, {"test": 0.2, "val": 0.1}, seed, "t")
    for patient in np.unique(patients):
        assert len(set(assignment[patients == patient])) == 1
    n_patients = len(np.unique(patients))
    held = {s: len(np.unique(patients[assignment == s])) for s in ("train", "val", "test")}
    assert held["test"] == round(0.2 * n_patients) and held["val"] == round(0.1 * n_patients)
    check_split_leak(patients, assignment, "t")  # the checker agrees


def test_group_split_is_seeded_and_counts_are_accepted():
    groups = np.arange(20).astype(str)
    first = group_split(groups, {"val": 4}, 0, "t")
    assert (first == "val").sum() == 4
    np.testing.assert_array_equal(first, group_split(groups, {"val": 4}, 0, "t"))
    assert not np.array_equal(first, group_split(groups, {"val": 4}, 1, "t"))
    assert (group_split(groups, {"val": 0}, 0, "t") == "train").all()
    with pytest.raises(DataError, match="leaving none for training"):
        group_split(groups, {"val": 20}, 0, "t")


def test_leak_check_names_the_leaked_patients():
    patients = np.array(["a", "a", "b", "c", "c"])
    with pytest.raises(DataError, match=r"patient\(s\) a \(train\+test\), c \(val\+test\) appear in more than one"):
        check_split_leak(patients, np.array(["train", "test", "val", "val", "test"]), "mine")
    check_split_leak(patients, np.array(["train", "train", "test", "val", "val"]), "mine")


def test_split_names_and_parts_are_validated():
    np.testing.assert_array_equal(normalise_split_names(["Training", "valid", "TEST"], "t"), ["train", "val", "test"])
    with pytest.raises(DataError, match="row 2 has split 'dev'"):
        normalise_split_names(["train", "dev"], "t")
    for bad in (1.5, -1, True, "0.1"):
        with pytest.raises(DataError, match="val_fraction"):
            check_part(bad, "val_fraction", "t")
