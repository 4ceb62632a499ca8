"""Augmentation ladder: none / flip / light / strong (``data/transforms.py``), applied on the device per batch.

``strong`` adds elastic deformation, intensity changes and cut-out to ``light``. In a policy entry it replaces
``train.augment`` for that entry's runs (``train.augment`` must then stay ``none``, so a run has one level).
"""

from typing import ClassVar, Literal

from medtransfer.finetune.policies.base import SINGLE_LABEL, Policy

LEVELS = ("none", "flip", "light", "strong")


class Augment(Policy):
    main: ClassVar[str] = "level"
    tasks: ClassVar[tuple[str, ...]] = (*SINGLE_LABEL, "multilabel", "segmentation")
    changes_images: ClassVar[bool] = True
    level: Literal[LEVELS]

    def augment(self) -> str:
        return self.level
