"""--decode-on device: the parameters Ray Data draws are the host path's, the worker's decode and
augmentation give the host path's pixels, odd formats fall back to the host decoder per image, and
bad files keep --on-bad-image. The device is the CPU here: the same decode_jpeg call decodes there.

Measured bound: on a CPU both paths decode with libjpeg-turbo and the pixels are equal (max
difference 0 levels, PIXEL_BOUND); on a GPU nvJPEG's differ by a few levels, which
bench/gpu_throughput.py prints.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from raymc.config import build_config
from raymc.data import device_decode
from raymc.data.augment import TrainView, augment_batch
from raymc.data.demo import write_demo_imagenet
from raymc.data.draws import TrainParams
from raymc.data.imagenet import BadImageError, decode_batch, scan_image_folder
from raymc.errors import ConfigError
from raymc.train import main
from tests.helpers import raymc_stderr

PIXEL_BOUND = 0  # levels of 255, measured on CPU workers (see the module docstring)
SEED, EPOCH, SIZE, SCALE = 3, 2, 32, 0.3
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> dict[str, np.ndarray]:
    """A demo folder's train rows: plain JPEGs, a CMYK and a grayscale JPEG, a PNG named .JPEG,
    a truncated JPEG and an HTML page named .JPEG."""
    root = write_demo_imagenet(
        tmp_path_factory.mktemp("imagenet") / "demo", classes=4, per_class=6, image_size=(64, 48)
    )
    found = scan_image_folder(root).rows["train"]
    return {
        "path": np.asarray([r.path for r in found], dtype=object),
        "label": np.asarray([r.label for r in found]),
        "index": np.asarray([r.index for r in found]),
    }


def device_view(rows: dict[str, np.ndarray], *, on_bad_image: str = "skip") -> dict[str, torch.Tensor]:
    """What the worker gets: Ray Data's two steps, then the collate step's decode."""
    encoded = device_decode.encoded_batch(rows, on_bad_image=on_bad_image)
    sampled = device_decode.sample_batch(encoded, seed=SEED, epoch=EPOCH, image_size=SIZE, crop_scale=SCALE)
    view = TrainView(SIZE, SCALE)
    return device_decode.decode_train_batch(sampled, view=view, device=CPU, on_bad_image=on_bad_image)


def test_the_device_path_draws_the_host_paths_parameters(rows):
    host_rows = decode_batch(rows)
    encoded = device_decode.encoded_batch(rows, on_bad_image="skip")
    sampled = device_decode.sample_batch(encoded, seed=SEED, epoch=EPOCH, image_size=SIZE, crop_scale=SCALE)
    view = TrainView(SIZE, SCALE)
    position = {int(index): i for i, index in enumerate(sampled["index"])}  # also holds the truncated JPEG
    assert set(host_rows["index"].tolist()) < set(position)
    heights, widths = np.asarray([image.shape[:2] for image in host_rows["rgb"]]).T
    host = view.sample(SEED, EPOCH, host_rows["index"], heights, widths)
    for i, index in enumerate(host_rows["index"]):
        assert TrainParams.at(sampled, position[int(index)]) == TrainParams.at(host, i)


def test_the_device_paths_pixels_are_the_host_paths(rows):
    host = augment_batch(decode_batch(rows), seed=SEED, epoch=EPOCH, image_size=SIZE, crop_scale=SCALE)
    device = device_view(rows)
    assert device["rgb"].shape == (len(host["label"]), 3, SIZE, SIZE) and device["rgb"].dtype == torch.uint8
    assert device["label"].tolist() == host["label"].tolist()
    difference = (device["rgb"].int() - torch.from_numpy(host["rgb"]).int()).abs().max()
    assert difference <= PIXEL_BOUND


def test_cmyk_grayscale_and_png_fall_back_to_the_host_decoder_per_image(rows):
    encoded = device_decode.encoded_batch(rows, on_bad_image="skip")
    odd = ~encoded["plain"]
    assert odd.sum() == 3  # the CMYK and grayscale JPEGs and the PNG (the truncated JPEG's header is plain)
    images = device_decode.decode_images(encoded, device=CPU, on_bad_image="skip")
    assert all(image is not None and image.shape[0] == 3 for image, plain in zip(images, encoded["plain"]) if not plain)


def test_a_truncated_jpeg_is_skipped_on_the_worker_and_the_rest_of_its_batch_decodes(rows, caplog):
    encoded = device_decode.encoded_batch(rows, on_bad_image="skip")
    with caplog.at_level(logging.WARNING):
        images = device_decode.decode_images(encoded, device=CPU, on_bad_image="skip")
    missing = [str(encoded["path"][i]) for i, image in enumerate(images) if image is None]
    assert len(missing) == 1 and "truncated" in caplog.text and missing[0] in caplog.text
    assert sum(image is not None for image in images) == len(decode_batch(rows)["label"])


def test_bad_files_fail_the_run_under_on_bad_image_fail(rows):
    with pytest.raises(BadImageError, match="not an image"):  # the HTML page: its header is no image's
        device_decode.encoded_batch(rows, on_bad_image="fail")
    parsed = np.isin(rows["index"], device_decode.encoded_batch(rows, on_bad_image="skip")["index"])
    readable = {key: values[parsed] for key, values in rows.items()}
    with pytest.raises(BadImageError, match="truncated"):  # found where it is decoded
        device_view(readable, on_bad_image="fail")


def test_a_batch_of_only_bad_images_gives_an_empty_batch(rows):
    encoded = device_decode.encoded_batch(rows, on_bad_image="skip")
    truncated = [
        i
        for i, image in enumerate(device_decode.decode_images(encoded, device=CPU, on_bad_image="skip"))
        if image is None
    ]
    sampled = device_decode.sample_batch(
        {k: v[truncated] for k, v in encoded.items()}, seed=SEED, epoch=EPOCH, image_size=SIZE, crop_scale=SCALE
    )
    out = device_decode.decode_train_batch(sampled, view=TrainView(SIZE, SCALE), device=CPU, on_bad_image="skip")
    assert out["rgb"].shape == (0, 3, SIZE, SIZE) and out["label"].shape == (0,)


def test_nyu_refuses_decode_on_device_naming_the_flag(capsys):
    with pytest.raises(ConfigError, match="--decode-on device"):
        build_config({"decode_on": "device", "data": "nyu_depth_v2_labeled.mat"})
    assert main(["--decode-on", "device"]) == 2  # no --data: the demo NYU set
    error = raymc_stderr(capsys).strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: --decode-on device")


def test_decode_on_is_where_a_run_executes_not_what_it_learns():
    host, device = build_config({"data": "x"}), build_config({"data": "x", "decode_on": "device"})
    assert host.fingerprint() == device.fingerprint()
    assert dataclasses.replace(host, decode_on="device") == device
