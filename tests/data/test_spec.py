"""On-device normalization of a batch's streams."""

from __future__ import annotations

import torch

from raymc.data.spec import IMAGENET_MEAN, IMAGENET_STD, RGB_STREAM, DataSpec, StreamSpec, to_model_inputs

SPEC = DataSpec(
    classes=("a", "b"),
    streams=(RGB_STREAM, StreamSpec("depth", (2.0,), (0.5,), missing_is_zero=True)),
    num_train=5,
    num_val=2,
)


def test_normalization_on_device_keeps_missing_depth_at_zero():
    rgb = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    depth = torch.tensor([[[[0.0, 2.5], [1.5, 2.0]]]])
    x_rgb, x_depth = to_model_inputs({"rgb": rgb, "depth": depth}, SPEC, torch.device("cpu"))
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(x_rgb[0, :, 0, 0], expected)
    assert x_depth[0, 0].tolist() == [[0.0, 1.0], [-1.0, 0.0]]


def test_channels_last_keeps_the_values():
    rgb = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    (plain,) = to_model_inputs({"rgb": rgb}, DataSpec(("a",), (RGB_STREAM,), 1, 1), torch.device("cpu"))
    (last,) = to_model_inputs(
        {"rgb": rgb}, DataSpec(("a",), (RGB_STREAM,), 1, 1), torch.device("cpu"), channels_last=True
    )
    assert last.is_contiguous(memory_format=torch.channels_last) and torch.equal(plain, last)
