"""Pre-training methods (self-supervised, plus supervised continual pre-training): a plain registry, one line per
method, grouped by family."""

from medtransfer.pretrain.barlow_twins import BarlowTwins
from medtransfer.pretrain.base import BaseMethod
from medtransfer.pretrain.byol import BYOL
from medtransfer.pretrain.denoising import DenoisingAE
from medtransfer.pretrain.dino import DINO
from medtransfer.pretrain.jigsaw import Jigsaw
from medtransfer.pretrain.mae import MAE
from medtransfer.pretrain.moco import MoCo
from medtransfer.pretrain.models_genesis import ModelsGenesis
from medtransfer.pretrain.multi_ssl import MultiSSL
from medtransfer.pretrain.rotation import Rotation
from medtransfer.pretrain.simclr import SimCLR
from medtransfer.pretrain.spark import SparK
from medtransfer.pretrain.supervised import Supervised
from medtransfer.pretrain.swav import SwAV

METHODS: dict[str, type[BaseMethod]] = {
    # contrastive / joint-embedding
    "simclr": SimCLR,
    "moco_v2": MoCo,
    "byol": BYOL,
    "barlow_twins": BarlowTwins,
    "swav": SwAV,
    "dino": DINO,
    # restorative / generative
    "models_genesis": ModelsGenesis,
    "denoising_ae": DenoisingAE,
    "spark": SparK,
    "mae": MAE,
    # predictive
    "rotation": Rotation,
    "jigsaw": Jigsaw,
    # several objectives on one backbone
    "multi_ssl": MultiSSL,
    # labels: supervised continual pre-training (e.g. ImageNet -> multi-label chest X-rays)
    "supervised": Supervised,
}

__all__ = ["METHODS", "BaseMethod"]
