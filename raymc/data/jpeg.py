"""torchvision's JPEG decoder: raymc's one call of it, on the host and on a training device.

torchvision 0.29 deprecates its image decoders in favour of TorchCodec and warns
(DeprecationWarning) on every call. raymc keeps torchvision's decoder, knowingly: TorchCodec is in
neither raymc's dependencies nor Ray's GPU images, and `decode_jpeg(list, device="cuda")` decodes a
batch with nvJPEG while on a CPU the same call decodes with libjpeg-turbo, so one code path serves
GPU and CPU workers (and the tests). This module is the one place that silences that warning (its
message only, from torchvision.io only), and the one place to port when torchvision drops the decoder.
"""

from __future__ import annotations

import warnings

import torch
from torchvision.io import ImageReadMode, decode_jpeg

# A process-wide filter rather than catch_warnings around each call: catch_warnings is not
# thread-safe, and Ray Data decodes on its collate threads (raymc.batches).
warnings.filterwarnings(
    "ignore",
    message="The image decoding and encoding capabilities of TorchVision are deprecated",
    category=DeprecationWarning,
    module=r"torchvision\.io",
)


def decode_rgb_jpegs(encoded: list[torch.Tensor], *, device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """Each encoded JPEG (a 1-D uint8 CPU tensor) as 3 x H x W uint8 RGB on `device`, in one call.
    Raises RuntimeError when any of them does not decode (truncated, not a JPEG)."""
    return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)


def as_tensor(data: bytes) -> torch.Tensor:
    """Encoded bytes as the 1-D uint8 tensor the decoder takes (a writable copy: torch refuses
    to share read-only memory without a warning)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)
