"""Every checkpoint layout the zoo knows: a file is built in exactly that layout (wrappers, prefixes, heads, momentum
encoders, queues, optimizer state; Haiku trees and TF variable names written by inverse mappings spelled out here,
independently of the converters), imported, and the backbone's weights must equal the source tensors bit for bit."""

import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from medtransfer.errors import CheckpointError
from medtransfer.models.convert import LAYOUTS, detect_layout
from medtransfer.models.factory import create_backbone
from medtransfer.models.readers import flatten_source, read_source
from medtransfer.models.zoo import load_foreign

SIZE = {"resnet_tiny": 32, "resnet_tiny_3d": 16, "genesis_tiny_3d": 16}


def trained_state(name="resnet_tiny", in_chans=3):
    """A state dict whose every tensor differs from a fresh backbone's (BatchNorm counters included)."""
    backbone = create_backbone(name, in_chans, SIZE[name], small_stem=name == "resnet_tiny_3d")
    with torch.no_grad():
        for t in backbone.model.state_dict().values():
            t.copy_(torch.randint_like(t, 1, 100) if t.dtype == torch.long else torch.randn_like(t))
    return {k: v.clone() for k, v in backbone.model.state_dict().items()}


def import_into(name, path, layout=None, in_chans=3):
    target = create_backbone(name, in_chans, SIZE[name], small_stem=name == "resnet_tiny_3d")
    report = load_foreign(target, path, layout)
    return target.model.state_dict(), report


def assert_same(got, source, counters_zeroed=False):
    assert got.keys() == source.keys()
    for key, value in source.items():
        if counters_zeroed and key.endswith("num_batches_tracked"):
            assert got[key] == 0, key  # JAX/TF keep no counter
        else:
            assert torch.equal(got[key], value), key


def heads(prefix=""):
    return {f"{prefix}fc.0.weight": torch.randn(8, 128), f"{prefix}fc.2.weight": torch.randn(4, 8)}


# --- PyTorch layouts -----------------------------------------------------------------------------------------------
def pycontrast_file(state, path):
    model = {f"module.encoder.{k}": v for k, v in state.items()}
    model.update({"module.head.fc.weight": torch.randn(4, 128), "module.head_jig.fc.weight": torch.randn(4, 128)})
    torch.save({"model": model, "contrast": {"memory": torch.randn(10, 4)}, "epoch": 200,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.03, "params": [0, 1]}]}}, path)
    return {"projection head": 1, "jigsaw head": 1}


def moco_file(state, path):
    sd = {f"module.encoder_q.{k}": v for k, v in state.items()}
    sd.update({f"module.encoder_q.{k}": v for k, v in heads().items()})
    sd.update({f"module.encoder_k.{k}": torch.randn_like(v.float()) for k, v in state.items()})
    sd.update({"module.queue": torch.randn(128, 64), "module.queue_ptr": torch.zeros(1, dtype=torch.long)})
    torch.save({"epoch": 200, "arch": "resnet50", "state_dict": sd, "optimizer": {"state": {}}}, path)
    return {"momentum encoder": len(state), "queue": 2, "projection head (encoder_q.fc)": 2}


def swav_file(state, path):  # SwAV/DeepCluster-v2/SeLa-v2 release the DDP state dict itself, no wrapper
    sd = {f"module.{k}": v for k, v in state.items()}
    sd.update({"module.projection_head.0.weight": torch.randn(8, 128), "module.prototypes.weight": torch.randn(30, 8)})
    torch.save(sd, path)
    return {"projection head": 1, "prototypes": 1}


def lightning_file(state, path):
    sd = {f"backbone.{k}": v for k, v in state.items()}
    sd.update({"projection_head.layers.0.weight": torch.randn(8, 128),
               **{f"backbone_momentum.{k}": v.clone() for k, v in state.items()}})
    torch.save({"epoch": 3, "global_step": 30, "pytorch-lightning_version": "2.6.0", "state_dict": sd}, path)
    return {"method modules (projection_head)": 1, "method modules (backbone_momentum)": len(state)}


def ddp_file(state, path):
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    return {}


def torchvision_file(state, path):  # supervised ImageNet / iNat2021: plain names + classification head
    torch.save({"state_dict": {**state, "fc.weight": torch.randn(10, 128), "fc.bias": torch.randn(10)}}, path)
    return {}


def barlow_file(state, path):  # Barlow Twins' hub file: plain torchvision names, no head
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return {}


PYTORCH_LAYOUTS = {"pycontrast": (pycontrast_file, "InsDis.pth"), "moco": (moco_file, "moco_v2.pth.tar"),
                   "swav": (swav_file, "swav_800ep_pretrain.pth.tar"), "lightning": (lightning_file, "last.ckpt"),
                   "ddp": (ddp_file, "ddp.pth"), "torchvision": (torchvision_file, "inat2021.pth.tar")}


@pytest.mark.parametrize("layout", sorted(PYTORCH_LAYOUTS))
def test_pytorch_layout_imports_bit_identical_and_is_detected(tmp_path, layout):
    make, filename = PYTORCH_LAYOUTS[layout]
    state = trained_state()
    dropped = make(state, tmp_path / filename)
    got, report = import_into("resnet_tiny", tmp_path / filename, layout)
    assert_same(got, state)
    assert report["dropped"] == dropped and report["loaded"] == len(state)
    flat, _ = flatten_source(read_source(tmp_path / filename), filename)
    assert detect_layout(flat) == layout
    got, _ = import_into("resnet_tiny", tmp_path / filename)  # auto-detected, as for a raw init file
    assert_same(got, state)


def test_plain_safetensors_and_classification_head_is_reported(tmp_path):
    state = trained_state()
    barlow_file(state, tmp_path / "resnet50.safetensors")
    got, report = import_into("resnet_tiny", tmp_path / "resnet50.safetensors", "torchvision")
    assert_same(got, state)
    torchvision_file(state, tmp_path / "tv.pth")
    _, report = import_into("resnet_tiny", tmp_path / "tv.pth", "torchvision")
    assert report["ignored"] == ["fc.bias", "fc.weight"] and report["wrapper"] == "state_dict"


def test_key_the_layout_cannot_place_is_an_error_with_the_list(tmp_path):
    state = trained_state()
    sd = {f"module.encoder_q.{k}": v for k, v in state.items()}
    sd["module.predictor.0.weight"] = torch.randn(4, 4)  # MoCo v3 has a predictor; the MoCo v1/v2 layout does not
    torch.save({"state_dict": sd}, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match=r"layout 'moco': cannot place 1: module\.predictor\.0\.weight"):
        import_into("resnet_tiny", tmp_path / "m.pth", "moco")


# --- JAX/Haiku (BYOL) ----------------------------------------------------------------------------------------------
def haiku_tree(state, root="res_net18"):
    """torch names -> Haiku's: 'layer2.0.downsample.0' -> 'block_group_1/~/block_0/~/shortcut_conv', kernels HWIO,
    BatchNorm scale/offset shaped (1, 1, 1, C), moving statistics in ExponentialMovingAverage state."""
    tree = {}
    for key, t in state.items():
        parts = key.split(".")
        if parts[0] in ("conv1", "bn1"):
            module = "initial_conv" if parts[0] == "conv1" else "initial_batchnorm"
        else:
            base = f"block_group_{int(parts[0][-1]) - 1}/~/block_{parts[1]}/~/"
            if parts[2] == "downsample":
                module = base + ("shortcut_conv" if parts[3] == "0" else "shortcut_batchnorm")
            else:
                module = base + ("conv_" if parts[2].startswith("conv") else "batchnorm_") + str(int(parts[2][-1]) - 1)
        module = f"{root}/~/{module}"
        leaf, a = parts[-1], t.numpy()
        if leaf == "weight" and t.ndim == 4:
            tree.setdefault(module, {})["w"] = a.transpose(2, 3, 1, 0).copy()
        elif leaf in ("weight", "bias"):
            tree.setdefault(module, {})["scale" if leaf == "weight" else "offset"] = a.reshape(1, 1, 1, -1).copy()
        elif leaf in ("running_mean", "running_var"):
            ema = "mean_ema" if leaf == "running_mean" else "var_ema"
            tree[f"{module}/~/{ema}"] = {"average": a.copy(), "hidden": a * 0.5, "counter": np.array(1000)}
    tree[f"{root}/~/logits"] = {"w": np.zeros((128, 10), np.float32), "b": np.zeros(10, np.float32)}
    tree["projector/~/linear"] = {"w": np.ones((128, 8), np.float32)}
    tree["predictor/~/linear"] = {"w": np.ones((8, 8), np.float32)}
    return tree


@pytest.mark.parametrize("suffix", [".npz", ".pkl"])
def test_byol_haiku_tree_converts_to_torchvision_names(tmp_path, suffix):
    state = trained_state()
    tree = haiku_tree(state)
    path = tmp_path / f"byol{suffix}"
    if suffix == ".npz":
        np.savez(path, **{f"{module}/{leaf}": a for module, leaves in tree.items() for leaf, a in leaves.items()})
    else:
        path.write_bytes(pickle.dumps(tree))
    got, report = import_into("resnet_tiny", path)
    assert report["layout"] == "byol_haiku"
    assert_same(got, state, counters_zeroed=True)
    assert report["dropped"]["other networks (projector)"] == 1 and report["dropped"]["classification head"] == 2


class Opaque:
    """What BYOL's own pickle holds: a class only full unpickling (code execution) could rebuild."""


def test_pickle_that_needs_code_is_refused_with_the_reason(tmp_path):
    (tmp_path / "byol.pkl").write_bytes(pickle.dumps({"experiment_state": Opaque()}))
    with pytest.raises(CheckpointError, match=r"refused; the pickle needs .*Opaque.*never unpickles code"):
        read_source(tmp_path / "byol.pkl")


# --- TensorFlow (SimCLR) -------------------------------------------------------------------------------------------
def simclr_variables(state):
    """SimCLR's TF creation order: stem conv/BN, then per block the projection shortcut (when it has one) before the
    block's convolutions; variables are numbered conv2d, conv2d_1, ... and batch_normalization, _1, ..."""
    convs, norms = ["conv1"], ["bn1"]
    for layer in range(1, 5):
        block = 0
        while f"layer{layer}.{block}.conv1.weight" in state:
            prefix = f"layer{layer}.{block}"
            if f"{prefix}.downsample.0.weight" in state:
                convs.append(f"{prefix}.downsample.0")
                norms.append(f"{prefix}.downsample.1")
            convs += [f"{prefix}.conv1", f"{prefix}.conv2"]
            norms += [f"{prefix}.bn1", f"{prefix}.bn2"]
            block += 1
    variables = {"global_step": np.array(1000)}
    for i, name in enumerate(convs):
        kernel = state[f"{name}.weight"].numpy().transpose(2, 3, 1, 0).copy()
        variables[f"base_model/conv2d{f'_{i}' if i else ''}/kernel"] = kernel
        variables[f"base_model/conv2d{f'_{i}' if i else ''}/kernel/Momentum"] = kernel * 0
    for i, name in enumerate(norms):
        for tf_name, torch_name in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                                    ("moving_variance", "running_var")):
            variables[f"base_model/batch_normalization{f'_{i}' if i else ''}/{tf_name}"] = \
                state[f"{name}.{torch_name}"].numpy()
    variables["head_contrastive/nl_0/dense/kernel"] = np.ones((128, 8), np.float32)
    variables["head_supervised/linear_layer/dense/kernel"] = np.ones((128, 10), np.float32)
    return variables


def test_simclr_tf_variables_convert_in_creation_order(tmp_path):
    state = trained_state()
    np.savez(tmp_path / "simclr_v2.npz", **simclr_variables(state))
    got, report = import_into("resnet_tiny", tmp_path / "simclr_v2.npz")
    assert report["layout"] == "simclr_tf"
    assert_same(got, state, counters_zeroed=True)
    assert report["dropped"]["head_contrastive"] == 1
    assert report["dropped"]["optimizer state"] == 12 + 1  # the Momentum slots and global_step


def test_simclr_tf_of_another_architecture_names_the_counts(tmp_path):
    variables = simclr_variables(trained_state())
    del variables["base_model/conv2d_3/kernel"]
    np.savez(tmp_path / "v.npz", **variables)
    with pytest.raises(CheckpointError, match="11 convolutions and 12 BatchNorms, the backbone 12 and 12"):
        import_into("resnet_tiny", tmp_path / "v.npz")


# --- medical 3D models ---------------------------------------------------------------------------------------------
def test_models_genesis_unet3d_encoder(tmp_path):
    state = trained_state("genesis_tiny_3d", in_chans=1)
    stages = {"conv_0": "down_tr64", "down_1.convs": "down_tr128", "down_2.convs": "down_tr256",
              "down_3.convs": "down_tr512"}
    genesis = {}
    for key, value in state.items():
        stage = next(s for s in stages if key.startswith(s + "."))
        k, layer, param = key[len(stage) + 1:].split(".", 2)  # conv_0 . conv|adn . weight / N.weight
        name = "conv1" if layer == "conv" else "bn1"
        genesis[f"module.{stages[stage]}.ops.{k[-1]}.{name}.{param.removeprefix('N.')}"] = value
    genesis.update({"module.up_tr256.up_conv.weight": torch.randn(4, 4, 2, 2, 2),
                    "module.out_tr.final_conv.weight": torch.randn(1, 4, 1, 1, 1)})
    torch.save({"epoch": 10, "state_dict": genesis, "optimizer_state_dict": {"state": {}}}, tmp_path / "Genesis.pt")
    got, report = import_into("genesis_tiny_3d", tmp_path / "Genesis.pt", in_chans=1)
    assert report["layout"] == "models_genesis" and report["dropped"] == {"decoder": 1, "segmentation head": 1}
    assert_same(got, state)


def test_medicalnet_checkpoint(tmp_path):
    state = trained_state("resnet_tiny_3d")
    sd = {f"module.{k}": v for k, v in state.items()}
    sd["module.conv_seg.0.weight"] = torch.randn(2, 64, 3, 3, 3)
    torch.save({"state_dict": sd}, tmp_path / "resnet_10_23dataset.pth")
    got, report = import_into("resnet_tiny_3d", tmp_path / "resnet_10_23dataset.pth")
    assert report["layout"] == "medicalnet" and report["dropped"] == {"segmentation head": 1}
    assert_same(got, state)


@pytest.mark.parametrize("depth, downsample_keys", [(10, {"layer2.0.downsample.0.weight"}), (18, set())])
def test_medicalnet_backbones_use_its_shortcuts(depth, downsample_keys):
    """MedicalNet: ResNet-10/50 project shortcuts without bias (type B), ResNet-18 pads them (type A, no weights)."""
    keys = create_backbone(f"medicalnet_resnet{depth}_3d", 1, 32).model.state_dict().keys()
    assert {k for k in keys if k.startswith("layer2.0.downsample.0.")} == downsample_keys


def test_every_layout_is_described():
    assert all(layout.description for layout in LAYOUTS.values())
