"""Reading N images prints none of MONAI's per-reader "nvImageCodec is not available" lines (which came once per
image), while other messages of that logger and genuine warnings raised during a read still reach the user."""

import logging
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

import medtransfer.data.io as io

PLUGIN_LOGGER = "monai.data.nvimgcodec_pydicom_plugin"


@pytest.fixture
def pngs(tmp_path):
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(paths[-1])
    return paths


def test_reading_images_logs_no_nvimagecodec_line(pngs, caplog):
    with caplog.at_level(logging.DEBUG):
        arrays = [io.read_image(p).array for p in pngs]
    assert [a[0, 0, 0] for a in arrays] == [0, 40, 80, 120]  # the images were read
    assert not [r for r in caplog.records if "nvImageCodec" in r.getMessage()]


def test_other_messages_of_the_filtered_logger_still_show(pngs, caplog):
    io.read_image(pngs[0])
    with caplog.at_level(logging.WARNING):
        logging.getLogger(PLUGIN_LOGGER).warning("nvImageCodec decode failed on frame 3")
    assert [r.getMessage() for r in caplog.records] == ["nvImageCodec decode failed on frame 3"]


def test_a_genuine_warning_during_a_read_still_shows_and_the_reader_noise_does_not(pngs, monkeypatch):
    def converter_that_warns(mask):
        def convert(image):
            warnings.warn("colour table has 300 entries", UserWarning)
            return image
        return convert

    monkeypatch.setattr(io, "palette_converter", converter_that_warns)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        io.read_image(pngs[0])
    messages = [str(w.message) for w in caught]
    assert "colour table has 300 entries" in messages
    assert not [m for m in messages if "NvImgCodecPydicomReader" in m or m.startswith("builtin type Swig")]


def test_a_process_reading_images_prints_no_reader_noise_but_real_messages(pngs):
    script = ("import logging, sys\nimport medtransfer.data.io as io\n"
              "for p in sys.argv[1:]:\n    io.read_image(p)\n"
              f"logging.getLogger({PLUGIN_LOGGER!r}).warning('a real problem')\n")
    done = subprocess.run([sys.executable, "-c", script, *map(str, pngs)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "nvImageCodec is not available" not in done.stderr
    assert "a real problem" in done.stderr
