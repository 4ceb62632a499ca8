"""Init files that used to be accepted wrongly or refused wrongly: weights holding NaN/Inf (any source) are refused
with the file and the tensors named; numpy state dicts whose BatchNorm counters are 0-d arrays or numpy scalars
(``np.savez`` of a state dict, a pickle of numpy arrays) load with the counters' values and shapes intact."""

import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from medtransfer.errors import CheckpointError
from medtransfer.models.checkpoint import save_backbone
from medtransfer.models.factory import create_backbone
from medtransfer.models.zoo import ZOO, ZooEntry, cached_file, import_file, load_init


def trained_state():
    """Weights and counters unlike a fresh backbone's, so a load that drops or reshapes anything shows."""
    backbone = create_backbone("resnet_tiny", 3, 32)
    with torch.no_grad():
        for t in backbone.model.state_dict().values():
            t.copy_(torch.randint_like(t, 1, 100) if t.dtype == torch.long else torch.randn_like(t))
    return {k: v.clone() for k, v in backbone.model.state_dict().items()}


def fresh():
    return create_backbone("resnet_tiny", 3, 32)


def poisoned(state, keys, value=float("nan")):
    state = dict(state)
    for key in keys:
        state[key] = state[key].clone()
        state[key].view(-1)[1] = value
    return state


# --- NaN / Inf -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_foreign_file_with_non_finite_weights_is_refused_naming_file_and_tensors(tmp_path, value):
    path = tmp_path / "diverged.pth"
    torch.save({"state_dict": poisoned(trained_state(), ["layer1.0.conv1.weight", "bn1.running_var"], value)}, path)
    with pytest.raises(CheckpointError, match=r"diverged\.pth: 2 tensor\(s\) hold NaN or infinite values: "
                                              r"bn1\.running_var, layer1\.0\.conv1\.weight"):
        load_init(fresh(), path)


def test_medtransfer_checkpoint_with_nan_is_refused(tmp_path):
    backbone = fresh()
    backbone.model.load_state_dict(poisoned(trained_state(), ["conv1.weight"]))
    path = save_backbone(backbone, tmp_path / "ssl.safetensors", method="simclr")
    with pytest.raises(CheckpointError, match=r"ssl\.safetensors: 1 tensor\(s\) hold NaN .*: conv1\.weight"):
        load_init(fresh(), path)


def test_timm_style_safetensors_with_nan_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"  # what the Hugging Face cache holds for a timm model: no sidecar
    save_file(poisoned(trained_state(), ["layer4.0.bn2.weight"]), str(path))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: 1 tensor\(s\) .*: layer4\.0\.bn2\.weight"):
        load_init(fresh(), path)


def test_zoo_import_of_nan_weights_leaves_the_cache_untouched(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTRANSFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(ZOO, "tiny", ZooEntry("resnet_tiny", "synthetic", "supervised", "", "torchvision", "test",
                                              "test", input_size=(32, 32)))
    path = tmp_path / "tiny.pth"
    torch.save(poisoned(trained_state(), ["layer2.0.conv2.weight"]), path)
    with pytest.raises(CheckpointError, match=r"zoo import tiny \(tiny\.pth\): 1 tensor\(s\) .*layer2\.0\.conv2"):
        import_file("tiny", path)
    assert cached_file("tiny") is None


def test_finite_weights_and_a_nan_classification_head_still_load(tmp_path):
    """Only what is loaded is checked: a head the backbone drops cannot poison it."""
    state = trained_state()
    path = tmp_path / "with_head.pth"
    torch.save({**state, "fc.weight": torch.full((4, 128), float("nan"))}, path)
    backbone = fresh()
    load_init(backbone, path)
    assert torch.equal(backbone.model.state_dict()["conv1.weight"], state["conv1.weight"])


# --- numpy 0-d arrays and scalars ------------------------------------------------------------------------------------
def numpy_state(state, counters):
    """The state dict as numpy, counters as 0-d arrays (what ``tensor.numpy()`` gives) or numpy scalars."""
    out = {}
    for key, value in state.items():
        array = value.numpy()
        out[key] = array[()] if counters == "scalars" and array.ndim == 0 else array
    return out


@pytest.mark.parametrize("counters", ["0-d arrays", "scalars"])
@pytest.mark.parametrize("suffix", [".npz", ".pkl"])
def test_numpy_state_dicts_with_0d_counters_load_exactly(tmp_path, suffix, counters):
    state = trained_state()
    arrays = numpy_state(state, counters)
    assert isinstance(arrays["bn1.num_batches_tracked"], np.generic if counters == "scalars" else np.ndarray)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".npz":
        np.savez(path, **arrays)
    else:
        path.write_bytes(pickle.dumps({"state_dict": arrays}))
    backbone = fresh()
    load_init(backbone, path)
    got = backbone.model.state_dict()
    assert got.keys() == state.keys()
    for key, value in state.items():
        assert got[key].shape == value.shape and torch.equal(got[key], value), key
    assert got["bn1.num_batches_tracked"].item() == state["bn1.num_batches_tracked"].item() > 0
