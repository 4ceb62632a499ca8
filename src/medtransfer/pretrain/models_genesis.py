"""Models Genesis (Zhou et al., MICCAI 2019; MedIA 2021): an encoder-decoder restores the original image from a
corrupted one (flip, local pixel shuffling, non-linear intensity, in-/out-painting); MSE restoration loss.

The corruptions are ``genesis_transforms`` (batched, on the device); the decoder is the light U-Net of
``models/decoders.py`` over the backbone's stage maps, with a sigmoid output as in the original (targets are [0, 1]
images). Rates are the official configuration's (nonlinear 0.9, local 0.5, paint 0.9 of which out-painting 0.8, flip 0.4).
"""

from __future__ import annotations

from pydantic import Field

from medtransfer.pretrain.base import MethodOptions
from medtransfer.pretrain.restoration import RestorationMethod
from medtransfer.pretrain.genesis_transforms import GenesisCorruption


class ModelsGenesisOptions(MethodOptions):
    flip_rate: float = Field(0.4, ge=0, le=1)  # Models Genesis config.py
    local_rate: float = Field(0.5, ge=0, le=1)  # local pixel shuffling
    nonlinear_rate: float = Field(0.9, ge=0, le=1)  # Bezier intensity mapping
    paint_rate: float = Field(0.9, ge=0, le=1)  # in- or out-painting
    outpaint_rate: float = Field(0.8, ge=0, le=1)  # share of painting that is out-painting (in-painting 1 - this)
    shuffle_window: float = Field(0.1, gt=0, le=0.5)  # window side as a fraction of the image side (original: <= 1/10)
    shuffle_fraction: float = Field(0.5, ge=0, le=1)  # share of windows shuffled (medtransfer choice)
    max_boxes: int = Field(5, ge=1)  # original draws up to 5 painting boxes
    decoder_max_width: int = Field(256, ge=8)


class ModelsGenesis(RestorationMethod):
    Options = ModelsGenesisOptions

    def __init__(self, backbone, options: ModelsGenesisOptions, **kwargs):
        super().__init__(backbone, options, **kwargs)
        self.corruption = GenesisCorruption(options.flip_rate, options.local_rate, options.nonlinear_rate,
                                            options.paint_rate, options.outpaint_rate, options.shuffle_window,
                                            options.shuffle_fraction, options.max_boxes)

    def corrupt(self, images):
        return self.corruption(images)  # the flip reaches the target too, so input and target stay aligned
