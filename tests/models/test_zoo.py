"""The zoo: import/fetch verify checksums, convert, load exactly and cache atomically; cached entries are inits for
``run`` and for continual pre-training (whose metadata records the chain). Test entries point at tiny backbones;
the real entries keep ResNet-50 and are checked for consistency only (no network here)."""

import hashlib

import pytest
import torch

from medtransfer.bench import runner
from medtransfer.bench.runner import prepare, run_experiment
from medtransfer.bench.store import ResultStore
from medtransfer.cli import main
from medtransfer.config import ExperimentConfig, PretrainConfig
from medtransfer.config_files import validate_config
from medtransfer.data.normalisation import DEFAULT, IMAGENET, IMAGENET_STD, UNIT_RANGE, Normalisation
from medtransfer.errors import CheckpointError, ConfigError
from medtransfer.models import zoo
from medtransfer.models.checkpoint import file_normalisation, read_metadata, read_weights
from medtransfer.models.convert import LAYOUTS
from medtransfer.models.factory import BACKBONES, create_backbone
from medtransfer.models.zoo import ZOO, ZooEntry, cached_file, fetch, import_file
from medtransfer.pretrain import run as run_module
from medtransfer.pretrain.run import pretrain, resolved_pretrain_config

DATA = {"name": "synthetic2d", "n_train": 64, "n_val": 32, "n_test": 32, "size": 32}


class Opaque:
    """Pickled next to the weights, it makes a file that only code execution could load."""


def trained_state():
    """Weights unlike a fresh backbone's, yet usable: positive BatchNorm variances, so a forward pass stays finite."""
    backbone = create_backbone("resnet_tiny", 3, 32)
    with torch.no_grad():
        for key, t in backbone.model.state_dict().items():
            if t.dtype == torch.long:
                t.copy_(torch.randint_like(t, 1, 100))
            else:
                t.copy_(torch.rand_like(t) + 0.5 if key.endswith("running_var") else torch.randn_like(t) * 0.1)
    return {k: v.clone() for k, v in backbone.model.state_dict().items()}


def moco_file(path, state):
    sd = {f"module.encoder_q.{k}": v for k, v in state.items()}
    sd.update({f"module.encoder_k.{k}": v.clone() for k, v in state.items()})
    sd.update({"module.queue": torch.randn(16, 8), "module.queue_ptr": torch.zeros(1, dtype=torch.long),
               "module.encoder_q.fc.0.weight": torch.randn(8, 128)})
    torch.save({"epoch": 1, "arch": "resnet_tiny", "state_dict": sd}, path)
    return path


def entry(checksum=None, url="", layout="moco", **kw):
    return ZooEntry("resnet_tiny", "synthetic", "MoCo v2", url, layout, "test licence", "test paper",
                    checksum=checksum, input_size=(32, 32), **kw)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTRANSFER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "zoo"


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_real_entries_are_consistent():
    assert len(ZOO) >= 16 + 1 + 3  # ImageNet, iNat2021 x2, 14 SSL ResNet-50s, Models Genesis, MedicalNet x3
    ssl = [e for e in ZOO.values() if e.data == "ImageNet-1k (no labels)"]
    assert len(ssl) == 14 and {e.architecture for e in ssl} == {"resnet50"}
    for name, e in ZOO.items():
        assert e.architecture in BACKBONES and e.layout in LAYOUTS, name
        assert e.checksum is None or e.checksum.split(":")[0] in ("sha256", "md5"), name
        assert e.url.startswith("https://") and e.licence and e.paper, name
        assert e.direct or e.note, f"{name}: a manual download needs a note saying what to fetch"


def test_real_entries_carry_their_publishers_normalisation():
    """SimCLR's TF code, Models Genesis and Swin UNETR's SSL feed [0, 1] as is, MedicalNet z-scores per volume (kept
    at 0.5 / 0.5), every other entry was trained on ImageNet-normalised inputs."""
    own = {"simclr_v1": UNIT_RANGE, "simclr_v2": UNIT_RANGE, "models_genesis_chest_ct": UNIT_RANGE,
           "swin_unetr_ssl": UNIT_RANGE,
           **{f"medicalnet_resnet{d}": DEFAULT for d in (10, 18, 50)}}
    assert {name: e.normalisation for name, e in ZOO.items()} == {name: own.get(name, IMAGENET) for name in ZOO}


def test_import_converts_caches_and_records_provenance(tmp_path, cache, monkeypatch):
    state = trained_state()
    path = moco_file(tmp_path / "moco.pth.tar", state)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setitem(ZOO, "tiny_moco", entry(checksum=f"sha256:{digest[:8]}"))
    cached, report = import_file("tiny_moco", path)
    assert cached == cache / "tiny_moco" / "backbone.safetensors" == cached_file("tiny_moco")
    assert sorted(p.name for p in cache.iterdir()) == ["tiny_moco"]  # no staging or .old folders left
    got = read_weights(cached)
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)
    meta = read_metadata(cached)
    assert meta["source_sha256"] == digest and meta["checksum_verified"] is True
    assert meta["lineage"] == ["tiny_moco (zoo)"] and meta["layout"] == "moco"
    assert meta["import_report"]["dropped"] == {"momentum encoder": len(state), "queue": 2,
                                                "projection head (encoder_q.fc)": 1}


def test_md5_prefix_and_missing_checksum(tmp_path, cache, monkeypatch):
    path = moco_file(tmp_path / "moco.pth.tar", trained_state())
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    monkeypatch.setitem(ZOO, "tiny_md5", entry(checksum=f"md5:{md5[:8]}"))
    monkeypatch.setitem(ZOO, "tiny_none", entry())
    assert import_file("tiny_md5", path)[1]["checksum_verified"] is True
    _, report = import_file("tiny_none", path)
    assert report["checksum_verified"] is False and len(report["sha256"]) == 64


@pytest.fixture
def cached_entry(tmp_path, cache, monkeypatch):
    """A cached, valid entry; failing imports must leave it byte for byte as it is."""
    monkeypatch.setitem(ZOO, "tiny_moco", entry())
    import_file("tiny_moco", moco_file(tmp_path / "good.pth.tar", trained_state()))
    return snapshot(cache)


def _bad_checksum(tmp_path, monkeypatch):
    monkeypatch.setitem(ZOO, "tiny_moco", entry(checksum="sha256:00000000"))
    return moco_file(tmp_path / "other.pth.tar", trained_state()), "sha256 .* does not match the published 00000000"


def _truncated(tmp_path, monkeypatch):
    path = moco_file(tmp_path / "cut.pth.tar", trained_state())
    path.write_bytes(path.read_bytes()[:5000])
    return path, "not a readable PyTorch file"


def _wrong_architecture(tmp_path, monkeypatch):
    vit = create_backbone("vit_micro", 3, 32).model.state_dict()
    return moco_file(tmp_path / "vit.pth.tar", vit), r"does not fit backbone 'resnet_tiny'.*missing \(\d+\): bn1"


def _missing_non_head_key(tmp_path, monkeypatch):
    state = trained_state()
    del state["layer4.0.conv2.weight"]
    return moco_file(tmp_path / "partial.pth.tar", state), r"missing \(1\): layer4\.0\.conv2\.weight"


def _needs_code(tmp_path, monkeypatch):
    torch.save({"state_dict": trained_state(), "args": Opaque()}, tmp_path / "code.pth")
    return tmp_path / "code.pth", r"refused; it is not loadable with weights_only=True \(it pickles .*Opaque\)"


@pytest.mark.parametrize("bad", [_bad_checksum, _truncated, _wrong_architecture, _missing_non_head_key, _needs_code])
def test_failed_import_is_one_error_and_leaves_the_cache_untouched(tmp_path, cache, cached_entry, monkeypatch, bad):
    path, message = bad(tmp_path, monkeypatch)
    with pytest.raises(CheckpointError, match=message):
        import_file("tiny_moco", path)
    assert snapshot(cache) == cached_entry


def test_fetch_downloads_verifies_and_cleans_up(tmp_path, cache, monkeypatch):
    state = trained_state()
    path = moco_file(tmp_path / "moco_v2_800ep_pretrain.pth.tar", state)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setitem(ZOO, "tiny_moco", entry(checksum=f"sha256:{digest}", url=path.as_uri()))
    cached, report = fetch("tiny_moco")
    assert torch.equal(read_weights(cached)["conv1.weight"], state["conv1.weight"])
    assert list((cache / ".downloads").iterdir()) == []  # neither the download nor a .part file is kept
    monkeypatch.setitem(ZOO, "tiny_bad", entry(checksum="sha256:ffff", url=path.as_uri()))
    with pytest.raises(CheckpointError, match="does not match"):
        fetch("tiny_bad")
    assert list((cache / ".downloads").iterdir()) == [] and cached_file("tiny_bad") is None
    monkeypatch.setitem(ZOO, "tiny_gone", entry(url=(tmp_path / "nowhere.pth").as_uri()))
    with pytest.raises(CheckpointError, match="download from .* failed.*zoo import tiny_gone FILE"):
        fetch("tiny_gone")
    with pytest.raises(ConfigError, match="not a direct download.*zoo import byol FILE"):
        fetch("byol")


def test_cached_rgb_model_adapts_to_grayscale(tmp_path, cache, monkeypatch):
    state = trained_state()
    monkeypatch.setitem(ZOO, "tiny_moco", entry())
    cached, _ = import_file("tiny_moco", moco_file(tmp_path / "m.pth.tar", state))
    gray = create_backbone("resnet_tiny", 1, 32)
    report = zoo.load_init(gray, cached)
    assert report["adapted"] == ["conv1.weight: 3 -> 1 input channels"]
    # summed over channels, each scaled by sigma / s_c of ImageNet's stds (data/normalisation.py)
    scales = torch.tensor([0.2260 / s for s in IMAGENET_STD]).view(1, 3, 1, 1)
    expected = (state["conv1.weight"] * scales).sum(dim=1, keepdim=True)
    torch.testing.assert_close(gray.model.conv1.weight.detach(), expected, rtol=1e-3, atol=1e-6)


def test_zoo_list_and_import_on_the_command_line(tmp_path, cache, monkeypatch, capsys):
    monkeypatch.setitem(ZOO, "tiny_moco", entry())
    assert main(["zoo", "import", "tiny_moco", str(moco_file(tmp_path / "m.pth.tar", trained_state()))]) == 0
    out = capsys.readouterr().out
    assert "layout moco; loaded" in out and "no published checksum: recorded the observed sha256" in out
    assert main(["zoo", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["name", "arch", "data", "method"]
    row = next(line for line in lines if line.startswith("tiny_moco "))
    assert " yes " in row and "resnet_tiny" in row
    swav = next(line for line in lines if line.startswith("swav "))
    assert " no " in swav and "https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar" in swav
    assert " imagenet " in swav  # the input normalisation each entry's weights expect
    assert " 0/1 " in next(line for line in lines if line.startswith("models_genesis_chest_ct "))
    assert main(["zoo", "import", "tiny_moco", str(tmp_path / "missing.pth")]) == 2


def experiment(**changes):
    return validate_config({"name": "zoo", "datasets": [DATA], "backbone": {"name": "resnet_tiny"},
                            "inits": [{"zoo": "tiny_moco"}], "strategies": ["linear"], "label_fractions": [1.0],
                            "seeds": [0], "train": {"epochs": 1, "batch_size": 32},
                            "hardware": {"accelerator": "cpu"}, **changes}, ExperimentConfig)


def test_uncached_zoo_init_fails_before_training_with_the_command_to_run(cache, monkeypatch):
    monkeypatch.setitem(ZOO, "tiny_moco", entry())
    with pytest.raises(ConfigError, match=r"not in the cache .*medtransfer zoo fetch tiny_moco.*zoo import tiny_moco"):
        prepare(experiment())


def test_zoo_init_fine_tunes_through_run_keyed_by_content(tmp_path, cache, monkeypatch):
    monkeypatch.setitem(ZOO, "tiny_moco", entry())
    cached, _ = import_file("tiny_moco", moco_file(tmp_path / "m.pth.tar", trained_state()))
    summary = run_experiment(experiment(), tmp_path / "run", progress=False)
    assert summary.failed == [] and summary.done == 1
    rows = ResultStore(tmp_path / "run").rows()
    assert rows.iloc[0]["init"] == "tiny_moco" and 0 <= rows.iloc[0]["metric.auc"] <= 1
    resolved = ResultStore(tmp_path / "run").rows(status=None).iloc[0]["config"]
    assert resolved["init"] == {"kind": "checkpoint", "sha256": hashlib.sha256(cached.read_bytes()).hexdigest(),
                                "normalisation": IMAGENET.for_channels(1).to_dict()}  # grey data, ImageNet init


def backbone_inputs(monkeypatch, module=runner):
    """Every tensor a backbone built by ``module`` (``run``, ``pretrain``) receives in its forward passes."""
    seen = []
    build = module.create_backbone

    def create_and_watch(*args, **kwargs):
        backbone = build(*args, **kwargs)
        backbone.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach().clone()))
        return backbone

    monkeypatch.setattr(module, "create_backbone", create_and_watch)
    return seen


def assert_normalised_uint8(inputs, normalisation):
    """Each input is a uint8 image / 255 normalised with exactly ``normalisation``: undoing it lands on the grid."""
    mean, std = normalisation.shaped(2)
    for x in inputs:
        pixels = (x * std + mean) * 255
        assert pixels.min() > -1e-3 and pixels.max() < 255 + 1e-3
        torch.testing.assert_close(pixels, pixels.round(), rtol=0, atol=1e-3)


@pytest.mark.parametrize("init", ["zoo", "random"])
def test_fine_tuning_normalises_with_the_init_statistics(tmp_path, cache, monkeypatch, init):
    """RGB data: an ImageNet zoo init's backbone receives ImageNet-normalised inputs, a random init's 0.5 / 0.5; the
    resolved config shows which."""
    monkeypatch.setitem(ZOO, "tiny_moco", entry())
    import_file("tiny_moco", moco_file(tmp_path / "m.pth.tar", trained_state()))
    inputs = backbone_inputs(monkeypatch)
    cfg = experiment(datasets=[{**DATA, "channels": 3}], inits=[{"zoo": "tiny_moco"} if init == "zoo" else "random"])
    assert run_experiment(cfg, tmp_path / "run", progress=False).done == 1
    expected = IMAGENET if init == "zoo" else DEFAULT
    assert len(inputs) >= 3 and all(x.shape[1] == 3 for x in inputs)
    assert_normalised_uint8(inputs, expected)
    with pytest.raises(AssertionError):  # the check tells the two apart
        assert_normalised_uint8(inputs, DEFAULT if init == "zoo" else IMAGENET)
    resolved = ResultStore(tmp_path / "run").rows().iloc[0]["config"]
    assert resolved["init"]["normalisation"] == expected.to_dict()


def test_raw_foreign_file_as_checkpoint_init_is_converted(tmp_path):
    """A MoCo .pth.tar given directly as ``checkpoint:`` (no zoo entry): its layout is detected."""
    path = moco_file(tmp_path / "moco_v2.pth.tar", trained_state())
    prepared = prepare(experiment(inits=[{"checkpoint": str(path)}]))
    assert prepared.init_files["moco_v2.pth"] == path


def test_foreign_file_states_its_normalisation(tmp_path, monkeypatch):
    """A raw MoCo file records no statistics: 0.5 / 0.5 unless the init says ``normalisation: imagenet`` (or gives
    mean/std), which then reaches the backbone's inputs and the run's identity."""
    path = moco_file(tmp_path / "moco_v2.pth.tar", trained_state())
    rgb = [{**DATA, "channels": 3}]
    assert prepare(experiment(datasets=rgb, inits=[{"checkpoint": str(path)}])).init_normalisation["moco_v2.pth"] \
        == DEFAULT
    custom = {"checkpoint": str(path), "normalisation": {"mean": [0.4, 0.4, 0.4], "std": [0.2, 0.2, 0.2]}}
    assert prepare(experiment(datasets=rgb, inits=[custom])).init_normalisation["moco_v2.pth"] == \
        Normalisation((0.4,) * 3, (0.2,) * 3)
    inputs = backbone_inputs(monkeypatch)
    cfg = experiment(datasets=rgb, inits=[{"checkpoint": str(path), "normalisation": "imagenet"}])
    assert run_experiment(cfg, tmp_path / "run", progress=False).done == 1
    assert_normalised_uint8(inputs, IMAGENET)
    assert ResultStore(tmp_path / "run").rows().iloc[0]["config"]["init"]["normalisation"] == IMAGENET.to_dict()


@pytest.mark.parametrize("init, message", [
    ("random", "describes pre-trained weights"),
    ({"zoo": "tiny_moco", "normalisation": "imagenet"}, None),
    ({"checkpoint": "x.pth", "normalisation": "sRGB"}, "'imagenet', 'unit_range' or 'half'"),
    ({"checkpoint": "x.pth", "normalisation": {"mean": [0.5], "std": [0.5, 0.5]}}, "one entry per channel"),
    ({"checkpoint": "x.pth", "normalisation": {"mean": [0.5], "std": [0.0]}}, "every std > 0"),
])
def test_init_normalisation_setting_is_checked(monkeypatch, init, message):
    monkeypatch.setitem(ZOO, "tiny_moco", entry())
    init = {"label": "random", "normalisation": "imagenet"} if init == "random" else init
    if message is None:
        experiment(inits=[init])
        return
    with pytest.raises(ConfigError, match=message):
        experiment(inits=[init])


@pytest.mark.parametrize("method", ["simclr", "supervised"])
def test_continual_pretraining_from_a_zoo_model_records_the_chain(tmp_path, cache, monkeypatch, method):
    state = trained_state()
    monkeypatch.setitem(ZOO, "tiny_moco", entry())
    import_file("tiny_moco", moco_file(tmp_path / "m.pth.tar", state))
    cfg = validate_config({"method": method, "data": {**DATA, "channels": 1}, "backbone": {"name": "resnet_tiny"},
                           "init": {"zoo": "tiny_moco"}, "epochs": 1, "batch_size": 32}, PretrainConfig)
    path = pretrain(cfg, tmp_path / "out")
    meta = read_metadata(path)
    assert meta["lineage"] == ["tiny_moco (zoo)", "synthetic2d", method]
    assert meta["init_chain"][0]["source"] == "tiny_moco (zoo)"
    assert meta["init_chain"][0]["adapted"] == ["conv1.weight: 3 -> 1 input channels"]
    weights = read_weights(path)
    assert weights.keys() == state.keys()  # only the backbone: no projection or classification head saved
    assert not torch.equal(weights["layer4.0.conv2.weight"], state["layer4.0.conv2.weight"])  # it trained
    assert meta["normalisation"] == IMAGENET.for_channels(1).to_dict()  # grey data: the derived grey statistics


UNAUGMENTED_ROTATION = {"augment": False}


@pytest.mark.parametrize("method, options", [
    ("rotation", UNAUGMENTED_ROTATION),
    ("multi_ssl", {"methods": [{"name": "rotation", "options": UNAUGMENTED_ROTATION},  # sub-methods normalise too
                               {"name": "rotation", "options": {**UNAUGMENTED_ROTATION, "all_rotations": False}}]}),
])
def test_continual_pretraining_normalises_with_the_init_statistics_and_records_them(tmp_path, cache, monkeypatch,
                                                                                     method, options):
    """Rotation without views feeds the backbone rotated uint8 images, so its inputs show the normalisation used:
    ImageNet's for an ImageNet zoo init on RGB data; the new checkpoint records it, so fine-tuning from it (and a
    pre-training continued from it) uses it again."""
    monkeypatch.setitem(ZOO, "tiny_moco", entry())
    import_file("tiny_moco", moco_file(tmp_path / "m.pth.tar", trained_state()))
    inputs = backbone_inputs(monkeypatch, run_module)
    cfg = validate_config({"method": method, "data": {**DATA, "channels": 3}, "backbone": {"name": "resnet_tiny"},
                           "init": {"zoo": "tiny_moco"}, "epochs": 1, "batch_size": 32, "method_options": options},
                          PretrainConfig)
    path = pretrain(cfg, tmp_path / "out")
    assert inputs and all(x.shape[1] == 3 for x in inputs)
    assert_normalised_uint8(inputs, IMAGENET)
    assert file_normalisation(path) == IMAGENET
    assert resolved_pretrain_config(cfg)["init_normalisation"] == IMAGENET.to_dict()  # part of its identity
    prepared = prepare(experiment(datasets=[{**DATA, "channels": 3}], inits=[{"checkpoint": str(path)}]))
    assert prepared.init_normalisation["backbone"] == IMAGENET


def test_timm_name_resolves_from_the_local_hub_cache_only(tmp_path, monkeypatch):
    import huggingface_hub
    import timm
    from safetensors.torch import save_file

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    cfg = experiment(backbone={"name": "resnet18"}, inits=[{"timm": "resnet18.a1_in1k"}])
    with pytest.raises(ConfigError, match="weights of 'resnet18.a1_in1k' are not in the local cache"):
        prepare(cfg)
    repo = tmp_path / "hub" / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot_dir = repo / "snapshots" / "abc123"
    snapshot_dir.mkdir(parents=True)
    source = timm.create_model("resnet18", pretrained=False).state_dict()  # timm's file: native keys + 1000-way fc
    save_file({k: v.contiguous() for k, v in source.items()}, str(snapshot_dir / "model.safetensors"))
    prepared = prepare(cfg)
    assert prepared.init_files["resnet18.a1_in1k"] == snapshot_dir / "model.safetensors"
    assert prepared.init_normalisation["resnet18.a1_in1k"] == IMAGENET  # timm's pretrained_cfg mean/std


def test_timm_init_normalisation_comes_from_its_pretrained_cfg():
    from timm.models import get_pretrained_cfg

    clip = get_pretrained_cfg("vit_base_patch16_clip_224.openai")
    assert zoo.init_normalisation(timm="vit_base_patch16_clip_224.openai") == Normalisation(clip.mean, clip.std)
    assert zoo.init_normalisation(timm="vit_base_patch16_clip_224.openai") != IMAGENET
    assert zoo.init_normalisation(timm="vit_small_patch16_224.augreg_in21k_ft_in1k").is_default  # 0.5 per channel
