"""What a backbone computes once about itself (map shapes, step output shapes, unit parameters) must equal what
running it and matching prefixes gives, before and after truncation; and today's runs keep their ids."""

import pytest
import torch

from medtransfer.bench.grid import expand
from medtransfer.config import ExperimentConfig
from medtransfer.config_files import validate_config
from medtransfer.models.backbones import owns
from medtransfer.models.factory import create_backbone

CASES = [("resnet_tiny", 32, False), ("resnet_tiny", 28, True), ("vit_micro", 32, False),
         ("unet_tiny_3d", 32, False), ("densenet_tiny", 32, False), ("swin_micro", 32, False)]


pytestmark = pytest.mark.usefixtures("one_thread")


def check_against_a_run(backbone):
    x = torch.rand(2, backbone.in_chans, *backbone.input_size)
    with torch.no_grad():
        maps = backbone.eval().feature_maps(x)
        assert [(m.shape[1], tuple(m.shape[2:])) for m in maps] == backbone.map_shapes
        for i, step in enumerate(backbone.steps):
            x = backbone.run_step(step, x)
            assert tuple(x.shape[1:]) == backbone.step_output_shape(i)
    named = [n for n, _ in backbone.model.named_parameters()]
    for view in backbone.views:
        by_prefix = [[n for n in named if any(owns(p, n) for p in prefixes)]
                     for prefixes in backbone.unit_prefixes(view)]
        assert backbone.unit_parameter_names(view) == by_prefix, view  # same members, same (optimiser) order


@pytest.mark.parametrize("name, size, small_stem", CASES)
def test_cached_answers_equal_running_the_backbone(name, size, small_stem):
    check_against_a_run(create_backbone(name, 1, size, small_stem=small_stem))


@pytest.mark.parametrize("name, size, small_stem", CASES)
def test_cached_answers_follow_truncation(name, size, small_stem):
    backbone = create_backbone(name, 1, size, small_stem=small_stem)
    backbone.truncate(len(backbone.steps) - 1)
    check_against_a_run(backbone)


def test_run_ids_of_resnet_and_vit_runs_are_unchanged():
    """Pinned from the code before any-architecture support: stored results of these runs must still be found."""
    pinned = {"resnet18": ["9390bebb82be1873c221b607ceb2ceb9fe63a3ac6daeac20a2a0cc91bfa9204c",
                           "ab21fb5c677ea413e3d8f1ce49510b6950a65b7871cd963f851131f1a79eb008"],
              "vit_small_patch16": ["1e83c0390d452e491ead8b37311087ffa7811184a44859b2df41c391219801af",
                                    "82a7823894a683c04dcc8e36eafd5afc117754cd3af5b4f094c50ed22d6d801e"]}
    for backbone, ids in pinned.items():
        cfg = validate_config({"name": "pin", "backbone": {"name": backbone}, "inits": ["random"],
                               "strategies": ["linear", "q2"], "label_fractions": [1.0], "seeds": [0],
                               "datasets": [{"name": "synthetic2d", "size": 32}]}, ExperimentConfig)
        assert [spec.run_id(cfg, None) for spec in expand(cfg)] == ids
