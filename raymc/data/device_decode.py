"""--decode-on device: Ray Data reads the JPEG bytes and draws each image's training view; the
training worker decodes the batch on its device and crops, resizes, flips and jitters there.

Ray Data's share (CPU, in the read task) is reading the bytes, knowing each image's size and
whether it is a plain RGB JPEG, and drawing its crop box, flip and jitter from the per-sample seed
with `augment.TrainView.sample`, as the host path draws them: both paths make the same draws. A
prepared shard says both facts itself (raymc.prepare stores every image as a plain RGB JPEG,
checked by a full decode, with its size), so its rows pass through; files read from an ImageFolder
get their header parsed (PIL, no pixel decode).
The worker's share is `decode_train_batch`, which Ray Data's collate step calls on the worker
(raymc.batches): one `decode_jpeg(list, device=...)` call for the batch's plain JPEGs (nvJPEG
on a GPU; on a CPU worker the same call decodes with libjpeg-turbo, which is how the tests check
it), `imagenet.decode_rgb` on the host for every other image (CMYK, grayscale, a PNG named .JPEG,
a JPEG the batch decoder refuses), then `TrainView.apply` on the device. Bad files keep
--on-bad-image: a file that is no image is found by Ray Data's header parse, a truncated JPEG
where it is decoded, on the worker.

Validation keeps the host decode (pipeline.eval_rows): evaluation and prediction read the same
view, so a checkpoint is scored on exactly the pixels it was validated on whichever --decode-on
trained it, and validation is a small share of an ImageNet epoch (50,000 of 1.33 million images).
Pixels: on a CPU worker they equal the host path's (measured, tests/data/test_device_decode.py);
on a GPU nvJPEG's decode differs from libjpeg-turbo's by a few levels (bench/gpu_throughput.py).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from raymc.data import imagenet
from raymc.data.augment import TrainView
from raymc.data.draws import TrainParams
from raymc.data.jpeg import as_tensor, decode_rgb_jpegs

logger = logging.getLogger(__name__)


def encoded_batch(batch: dict[str, np.ndarray], *, on_bad_image: str) -> dict[str, np.ndarray]:
    """For `map_batches`: rows {label, index, image (bytes), path, height, width} of a prepared
    shard, or {label, index, path} of an ImageFolder -> {jpeg (bytes), path, image_height,
    image_width, plain (a plain RGB JPEG, which the device decodes), label, index}. A file whose
    header does not parse is left out (skip) or raises BadImageError (fail)."""
    if "height" in batch:  # a prepared shard: plain RGB JPEGs of known size
        return {
            "jpeg": batch["image"],
            "path": batch["path"],
            "image_height": np.asarray(batch["height"], dtype=np.int64),
            "image_width": np.asarray(batch["width"], dtype=np.int64),
            "plain": np.ones(len(batch["label"]), dtype=bool),
            "label": np.asarray(batch["label"], dtype=np.int64),
            "index": np.asarray(batch["index"], dtype=np.int64),
        }

    def header(data: bytes, name: str) -> tuple[bytes, int, int, bool]:
        img = imagenet.open_image(data, name)
        return data, img.height, img.width, imagenet.is_plain_jpeg(img)

    rows, keep = imagenet.read_rows(batch, on_bad_image=on_bad_image, read=header)
    data, heights, widths, plain = zip(*rows) if rows else ((), (), (), ())
    return {
        "jpeg": imagenet.object_array(list(data)),
        "path": np.asarray([imagenet.row_name(batch, i) for i in keep], dtype=object),
        "image_height": np.asarray(heights, dtype=np.int64),
        "image_width": np.asarray(widths, dtype=np.int64),
        "plain": np.asarray(plain, dtype=bool),
        "label": np.asarray(batch["label"])[keep].astype(np.int64),
        "index": np.asarray(batch["index"])[keep].astype(np.int64),
    }


def sample_batch(
    rows: dict[str, np.ndarray], *, seed: int, epoch: int, image_size: int, crop_scale: float
) -> dict[str, np.ndarray]:
    """For `map_batches`: encoded_batch's rows with each one's TrainParams of this epoch as columns
    (jitter_order (N, 4)); the image sizes, which only the draws need, are dropped."""
    view = TrainView(image_size, crop_scale)
    drawn = view.sample(seed, epoch, rows["index"], rows["image_height"], rows["image_width"])
    kept = {key: rows[key] for key in ("jpeg", "path", "plain", "label", "index")}
    return {**kept, **drawn}


def decode_images(
    batch: dict[str, np.ndarray], *, device: torch.device, on_bad_image: str
) -> list[torch.Tensor | None]:
    """Each row's image as 3 x H x W uint8 on `device` (None: a bad file left out under "skip").
    The plain JPEGs in one device call; the rest, and every plain JPEG the call refuses when one of
    them is bad, one by one on the host (the host path's decoder)."""
    images: list[torch.Tensor | None] = [None] * len(batch["label"])
    plain = [i for i in range(len(images)) if batch["plain"][i]]
    encoded = [as_tensor(batch["jpeg"][i]) for i in plain]
    try:
        decoded: list[torch.Tensor | None] = list(decode_rgb_jpegs(encoded, device=device)) if plain else []
    except RuntimeError:  # one bad JPEG fails the whole call
        decoded = [_decode_one(e, device) for e in encoded]
    for i, image in zip(plain, decoded, strict=True):
        images[i] = image
    for i in range(len(images)):
        if images[i] is None:
            path = str(batch["path"][i])
            try:
                rgb = imagenet.decode_rgb(bytes(batch["jpeg"][i]), path=path)
            except imagenet.BadImageError as e:
                imagenet.skip_or_raise(e, on_bad_image)
                continue
            images[i] = torch.from_numpy(rgb).permute(2, 0, 1).to(device, non_blocking=True)
    return images


def _decode_one(encoded: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    try:
        return decode_rgb_jpegs([encoded], device=device)[0]
    except RuntimeError:
        return None


def decode_train_batch(
    batch: dict[str, np.ndarray], *, view: TrainView, device: torch.device, on_bad_image: str
) -> dict[str, torch.Tensor]:
    """sample_batch's rows -> {rgb (N, 3, S, S) uint8, label int64} on `device`: the training
    view the host path makes of the same rows, decoded and augmented on the device."""
    images = decode_images(batch, device=device, on_bad_image=on_bad_image)
    kept = [i for i, image in enumerate(images) if image is not None]
    views = [view.apply(TrainParams.at(batch, i), images[i])[0] for i in kept]
    labels = torch.from_numpy(np.asarray(batch["label"])[kept].astype(np.int64))
    size = view.size
    rgb = torch.stack(views) if views else torch.empty(0, 3, *size, dtype=torch.uint8, device=device)
    return {"rgb": rgb, "label": labels.to(device, non_blocking=True)}
