import medmnist
import numpy as np
import pytest

from medtransfer.data import DATASETS, ImageDataset, load_dataset
from medtransfer.errors import DataError


def test_registry_holds_synthetic_and_every_official_medmnist_dataset():
    own_data = {"drive", "segmentation_folder", "csv", "chestxray14", "chexpert", "image_folder", "volume_folder"}
    assert set(DATASETS) == {"synthetic2d", "synthetic3d", "synthetic_seg2d", "synthetic_seg3d", *medmnist.INFO,
                             *own_data}


def test_load_dataset_passes_options_to_the_loader():
    ds = load_dataset("synthetic3d", size=10, n_train=6, n_val=2, n_test=2, seed=7)
    assert isinstance(ds, ImageDataset) and ds.train.images.shape == (6, 1, 10, 10, 10)


def test_load_dataset_binds_the_medmnist_name(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {f"{s}_images": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8) for s in ("train", "val", "test")}
    arrays.update({f"{s}_labels": np.array([[0], [1], [0], [1]]) for s in ("train", "val", "test")})
    np.savez(tmp_path / "breastmnist.npz", **arrays)
    ds = load_dataset("breastmnist", root=tmp_path, verify=False)
    assert ds.name == "breastmnist" and ds.class_names == ("malignant", "normal, benign")


def test_unknown_dataset_lists_the_registered_ones():
    with pytest.raises(DataError, match="'imagenet' is unknown; allowed: .*pneumoniamnist.*synthetic2d"):
        load_dataset("imagenet")


@pytest.mark.parametrize(
    "name, option, accepted",
    [("synthetic2d", "spatial_dims", "channels, n_test, n_train, n_val, seed, size"),
     ("pneumoniamnist", "as_rgb", "download, root, size, verify")],
)
def test_unknown_option_is_named_with_the_accepted_ones(name, option, accepted):
    with pytest.raises(DataError, match=f"option '{option}' is unknown; allowed: {accepted}$"):
        load_dataset(name, **{option: 1})
