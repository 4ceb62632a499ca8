"""Presets for the two large multi-label chest X-ray sets, read from their published CSV files.

ChestX-ray14 (Wang et al. 2017): ``Data_Entry_2017.csv`` with 'Image Index', 'Finding Labels' ('|'-separated,
'No Finding' = none of the 14) and 'Patient ID'; images in one folder. The official split lists
(``train_val_list.txt`` / ``test_list.txt``, patient-disjoint) are used when present, else a seeded patient split.

CheXpert (Irvin et al. 2019): ``train.csv`` / ``valid.csv`` with 'Path', 'Frontal/Lateral' and 14 observation
columns holding 1, 0, -1 (uncertain) or blank. The official validation set (radiologist consensus, no uncertain
labels) serves as the test split, since the competition test set is not in the release; val is a seeded patient
carve-out of train.csv. Uncertain labels follow ``uncertain`` (see `csv_dataset`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from medtransfer.data.base import ImageDataset
from medtransfer.data.csv_dataset import table_dataset
from medtransfer.errors import DataError, allowed

CHESTXRAY14_LABELS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
                      "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
                      "Hernia")
CHEXPERT_LABELS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
                   "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
                   "Pleural Other", "Fracture", "Support Devices")
# The five observations of the CheXpert competition (Irvin et al. 2019), also used by Hosseinzadeh Taher et al. 2021.
CHEXPERT_COMPETITION = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
VIEWS = ("frontal", "lateral", "all")


def _read_csv(path: Path, needed: Sequence[str], name: str) -> pd.DataFrame:
    try:
        table = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{name}: {path} cannot be read as CSV ({type(e).__name__}: {e})") from None
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise DataError(f"{name}: {path} lacks column(s) {missing}; allowed: the official CSV with {list(needed)}")
    return table


def chestxray14(root: str, csv: str = "Data_Entry_2017.csv", images: str = "images", official_split: bool = True,
                val_fraction: float | int = 0.1, test_fraction: float | int = 0.2, seed: int = 0, size: int = 224,
                aspect: str = "pad", on_error: str = "raise", workers: int | None = None) -> ImageDataset:
    """ChestX-ray14, 14 findings, multilabel, split by patient; grey-scale (RGBA files are converted)."""
    root_path = Path(root).expanduser()
    table = _read_csv(root_path / csv, ("Image Index", "Finding Labels", "Patient ID"), "chestxray14")
    table = table.assign(path=images + "/" + table["Image Index"].astype(str),
                         findings=table["Finding Labels"].astype(str).replace("No Finding", ""))
    split_column = None
    test_list = root_path / "test_list.txt"
    if official_split and test_list.exists():
        test_names = set(test_list.read_text().split())
        table["split"] = np.where(table["Image Index"].isin(test_names), "test", "train")
        split_column = "split"
    return table_dataset(
        table, root_path, "chestxray14", path_column="path", label_columns="findings", label_separator="|",
        class_names=CHESTXRAY14_LABELS, patient_column="Patient ID", split_column=split_column,
        val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, size=size, aspect=aspect, channels=1,
        on_error=on_error, workers=workers,
        description=f"ChestX-ray14 {root_path} ({'official test list' if split_column else 'seeded patient split'})",
    )


def chexpert(root: str, labels: str | Sequence[str] = "competition", uncertain: str | Mapping[str, str] = "ones",
             views: str = "frontal", val_fraction: float | int = 0.1, seed: int = 0, size: int = 224,
             aspect: str = "pad", on_error: str = "raise", workers: int | None = None) -> ImageDataset:
    """CheXpert from ``root`` = the folder holding train.csv and valid.csv (e.g. CheXpert-v1.0-small).

    ``labels``: ``competition`` (5), ``all`` (14) or a list of observation names. The first path component of
    'Path' names the release folder and is replaced by ``root``, so a renamed folder still works.
    """
    root_path = Path(root).expanduser()
    if labels == "competition":
        names = CHEXPERT_COMPETITION
    elif labels == "all":
        names = CHEXPERT_LABELS
    else:
        names = tuple([labels] if isinstance(labels, str) else labels)
        unknown = sorted(set(names) - set(CHEXPERT_LABELS))
        if unknown:
            raise DataError(f"chexpert: labels {unknown}; allowed: competition, all, or names from "
                            f"{allowed(CHEXPERT_LABELS)}")
    if views not in VIEWS:
        raise DataError(f"chexpert: views={views!r}; allowed: {allowed(VIEWS)}")
    needed = ("Path", "Frontal/Lateral", *names)
    parts = []
    for file, split in (("train.csv", "train"), ("valid.csv", "test")):
        part = _read_csv(root_path / file, needed, "chexpert")
        parts.append(part.assign(split=split))
    table = pd.concat(parts, ignore_index=True)
    if views != "all":
        table = table[table["Frontal/Lateral"].astype(str).str.lower() == views].reset_index(drop=True)
    table["path"] = [Path(*Path(p).parts[1:]).as_posix() for p in table["Path"].astype(str)]
    table["patient"] = [_chexpert_patient(p) for p in table["Path"].astype(str)]
    return table_dataset(
        table, root_path, "chexpert", path_column="path", label_columns=list(names), task="multilabel",
        patient_column="patient", split_column="split", uncertain=uncertain, val_fraction=val_fraction, seed=seed,
        size=size, aspect=aspect, channels=1, on_error=on_error, blank_labels="negative", workers=workers,
        description=f"CheXpert {root_path} ({len(names)} labels, {views} views, uncertain={uncertain}; "
                    "test = official validation set)",
    )


def _chexpert_patient(path: str) -> str:
    found = re.search(r"patient\d+", path)
    if not found:
        raise DataError(f"chexpert: Path {path!r} names no patientNNNNN folder; allowed: the official layout")
    return found.group(0)
