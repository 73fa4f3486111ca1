"""Small, learnable NYU Depth V2 files in exactly the real .mat layout.

The scene class of a demo frame (nyu10 protocol) is carried half by colour and half by depth:
class c shows hue c // 2 and a back wall at distance c % 5, so RGB alone or depth alone can tell
at most ~50% of the classes apart and only the two streams together reach ~100%. The cues are
global (a large tinted region, a wall distance), so they survive random-resized crops, flips and
brightness / contrast / saturation jitter; hue jitter would destroy the colour cue.

The demo ImageNet folder carries its class in a hue and a stripe direction (horizontal or
vertical, which a horizontal flip keeps) over the whole image, and holds the real copies' quirks:
a CMYK JPEG, a grayscale JPEG, a PNG named .JPEG, a truncated JPEG and a non-image file.
"""

from __future__ import annotations

import colorsys
import io
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from raymc import storage
from raymc.data.nyu import OTHERS, PROTOCOLS, SCENE_TYPES
from raymc.errors import ConfigError

NYU10 = PROTOCOLS["nyu10"]
OTHER_TYPES: tuple[str, ...] = tuple(t for t in SCENE_TYPES if t not in NYU10)
CUE_HUES: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8)  # 5 hues 72 degrees apart
CUE_WALLS: tuple[float, ...] = (1.5, 2.5, 3.5, 4.5, 5.5)  # metres to the back wall
ROOM_FRAMES = (3, 8)  # frames per room, inclusive, as in the real file
CHUNK_SAMPLES = 8  # HDF5 chunks span several samples, like the real file
# MATLAB's `save -v7.3` deflates every chunk by default: the real file is 2.8 GB for about 6 GB of
# arrays, so reading one sample means inflating its whole chunk.
DEFLATE_LEVEL = 3
USERBLOCK = 512
# A fixed date keeps demo files byte-identical for a seed.
HEADER_TEXT = "MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."


@dataclass(frozen=True)
class _Room:
    """One room: its id and type, and the cues all its frames share (with per-frame noise)."""

    scene: str
    scene_type: str
    size: int
    hue: float
    wall: float


def write_demo_nyu(
    path: str | os.PathLike, *, n: int = 480, seed: int = 0, height: int = 120, width: int = 160
) -> Path | str:
    """Write a demo nyu_depth_v2_labeled.mat of n frames and return where: a local Path, or a URI
    as given (written locally first, then uploaded). The same seed gives the same bytes."""
    if n < 1 or height < 8 or width < 8:
        raise ConfigError(
            f"demo size n={n}, height={height}, width={width} (keys 'n', 'height', 'width') is too "
            "small; use n >= 1 and height, width >= 8"
        )
    rng = np.random.default_rng(seed)
    rooms = _plan_rooms(n, rng)
    frames = [_render_frame(room, rng, height, width) for room in rooms for _ in range(room.size)]
    images, depths, raw_depths, labels, instances = (np.stack(a) for a in zip(*frames, strict=True))
    with storage.local_target(path) as local:
        write_nyu_mat(
            local,
            images=images,
            depths=depths,
            scene_types=[room.scene_type for room in rooms for _ in range(room.size)],
            scenes=[room.scene for room in rooms for _ in range(room.size)],
            raw_depths=raw_depths,
            labels=labels,
            instances=instances,
        )
    return path if storage.is_uri(path) else Path(path)


# --------------------------------------------------------------------------------------------
# Rooms and frames
# --------------------------------------------------------------------------------------------


def _plan_rooms(n: int, rng: np.random.Generator) -> list[_Room]:
    """Rooms of 3..8 frames summing to n, classes dealt in shuffled rounds so they balance."""
    sizes = _room_sizes(n, rng)
    classes: list[int] = []
    while len(classes) < len(sizes):
        classes.extend(rng.permutation(len(NYU10)).tolist())
    taken: set[str] = set()
    return [_make_room(c, size, rng, taken) for c, size in zip(classes, sizes, strict=False)]


def _room_sizes(n: int, rng: np.random.Generator) -> list[int]:
    """Split n frames into rooms of ROOM_FRAMES sizes (one smaller room only when n < 3)."""
    low, high = ROOM_FRAMES
    sizes = []
    remaining = n
    while remaining > high:
        size = int(rng.integers(low, high + 1))
        size = min(size, remaining - low)  # never leave fewer than `low` frames behind
        sizes.append(size)
        remaining -= size
    sizes.append(remaining)
    return sizes


def _make_room(label: int, size: int, rng: np.random.Generator, taken: set[str]) -> _Room:
    """A room of class `label`: a scene type mapping to it and an id like kitchen_0028b."""
    name = NYU10[label]
    scene_type = str(rng.choice(OTHER_TYPES)) if name == OTHERS else name
    scene = ""
    while not scene or scene in taken:
        letter = str(rng.choice(["", "", "a", "b", "c"]))
        scene = f"{scene_type}_{int(rng.integers(1, 10_000)):04d}{letter}"
    taken.add(scene)
    return _Room(
        scene=scene,
        scene_type=scene_type,
        size=size,
        hue=CUE_HUES[label // 2] + rng.normal(0.0, 0.015),
        wall=CUE_WALLS[label % 5] + rng.uniform(-0.25, 0.25),
    )


def _render_frame(room: _Room, rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, ...]:
    """One frame: RGB (H, W, 3), depth and raw depth (H, W), per-pixel labels and instances."""
    objects = _objects(rng, height, width)
    rgb = _render_rgb(room, objects, rng, height, width)
    depth, labels, instances = _render_depth(room, objects, rng, height, width)
    raw = depth.copy()
    raw[_missing_mask(rng, height, width, 0.12, border=0.08)] = 0.0
    depth[_missing_mask(rng, height, width, 0.05, border=0.0)] = 0.0
    if rng.random() < 0.25:  # a few NaN pixels for the reader to clean, as sensors produce
        depth[rng.random((height, width)) < 0.002] = np.nan
    return rgb, depth, raw, labels, instances


def _objects(rng: np.random.Generator, height: int, width: int) -> list[tuple[slice, slice]]:
    """2-4 furniture boxes covering a small part of the view, in front of the wall."""
    boxes = []
    for _ in range(int(rng.integers(2, 5))):
        h = max(1, int(height * rng.uniform(0.1, 0.25)))
        w = max(1, int(width * rng.uniform(0.08, 0.2)))
        y = int(rng.integers(height // 3, height - h + 1))
        x = int(rng.integers(0, width - w + 1))
        boxes.append((slice(y, y + h), slice(x, x + w)))
    return boxes


def _render_rgb(
    room: _Room,
    objects: list[tuple[slice, slice]],
    rng: np.random.Generator,
    height: int,
    width: int,
) -> np.ndarray:
    """A room tinted with its hue under uneven light, grey-ish furniture and sensor noise."""
    hue = (room.hue + rng.normal(0.0, 0.01)) % 1.0
    base = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.45, 0.75), 1.0))
    light = np.linspace(rng.uniform(0.55, 0.8), rng.uniform(0.75, 0.95), height)[:, None]
    light = light * (1.0 + 0.12 * _smooth_noise(rng, height, width, cells=(4, 6)))
    img = base * light[..., None] * 255.0
    for rows, cols in objects:
        grey = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.25), rng.uniform(0.3, 0.9))
        img[rows, cols] = np.array(grey) * 255.0
    img += rng.normal(0.0, 8.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _render_depth(
    room: _Room,
    objects: list[tuple[slice, slice]],
    rng: np.random.Generator,
    height: int,
    width: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A back wall at the room's distance, a floor closing in below the horizon, boxes in front;
    Kinect-like noise growing with distance. Also per-pixel labels and instance ids."""
    wall = room.wall + rng.normal(0.0, 0.05)
    tilt = rng.uniform(-0.08, 0.08) * (np.linspace(-0.5, 0.5, width)[None, :])
    depth = np.full((height, width), wall) * (1.0 + tilt)
    labels = np.full((height, width), 21, dtype=np.uint16)  # wall
    instances = np.ones((height, width), dtype=np.uint16)
    horizon = int(height * rng.uniform(0.5, 0.65))
    closing = np.linspace(1.0, 0.78, height - horizon)[:, None]
    depth[horizon:] *= closing
    labels[horizon:] = 11  # floor
    for i, (rows, cols) in enumerate(objects):
        depth[rows, cols] = np.minimum(depth[rows, cols], wall * rng.uniform(0.55, 0.85))
        labels[rows, cols] = int(rng.integers(30, 895))
        instances[rows, cols] = i + 1
    depth += rng.normal(0.0, 1.0, depth.shape) * 0.0035 * depth**2
    return depth.astype(np.float32), labels, instances


def _missing_mask(rng: np.random.Generator, height: int, width: int, fraction: float, *, border: float) -> np.ndarray:
    """Pixels without a reading: scattered holes plus an invalid left border band."""
    mask = rng.random((height, width)) < fraction
    mask[:, : int(width * border)] = True
    return mask


def _smooth_noise(rng: np.random.Generator, height: int, width: int, *, cells: tuple[int, int]) -> np.ndarray:
    """Low-frequency texture: a coarse random grid upsampled bilinearly to (height, width)."""
    coarse = rng.normal(0.0, 1.0, cells)
    xs = np.linspace(0, cells[1] - 1, width)
    ys = np.linspace(0, cells[0] - 1, height)
    rows = np.stack([np.interp(xs, np.arange(cells[1]), r) for r in coarse])
    return np.stack([np.interp(ys, np.arange(cells[0]), c) for c in rows.T], axis=1)


# --------------------------------------------------------------------------------------------
# The .mat writer
# --------------------------------------------------------------------------------------------


def write_nyu_mat(
    path: str | os.PathLike,
    *,
    images: np.ndarray,
    depths: np.ndarray,
    scene_types: Sequence[str],
    scenes: Sequence[str],
    raw_depths: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    instances: np.ndarray | None = None,
) -> Path:
    """Write arrays given as images (N, H, W, 3), depths (N, H, W) in the real file's layout:
    MATLAB v7.3 header, axes reversed as h5py shows them, strings by object reference."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", userblock_size=USERBLOCK) as f:
        _write_array(f, "images", images.transpose(0, 3, 2, 1), "uint8", np.uint8)
        maps = (
            ("depths", depths, "single", np.float32),
            ("rawDepths", raw_depths, "single", np.float32),
            ("labels", labels, "uint16", np.uint16),
            ("instances", instances, "uint16", np.uint16),
        )
        for key, array, matlab_class, dtype in maps:
            if array is not None:
                _write_array(f, key, array.transpose(0, 2, 1), matlab_class, dtype)
        refs = f.create_group("#refs#")
        _write_cell(f, refs, "sceneTypes", scene_types)
        _write_cell(f, refs, "scenes", scenes)
    _write_header(path)
    return path


def _write_array(f: h5py.File, key: str, array: np.ndarray, matlab_class: str, dtype: type[np.generic]) -> None:
    """A numeric MATLAB array, chunked across CHUNK_SAMPLES samples and deflated."""
    chunks = (min(CHUNK_SAMPLES, len(array)), *array.shape[1:])
    ds = f.create_dataset(
        key, data=np.asarray(array, dtype=dtype), chunks=chunks, compression="gzip", compression_opts=DEFLATE_LEVEL
    )
    ds.attrs.create("MATLAB_class", np.bytes_(matlab_class))


def _write_cell(f: h5py.File, refs: h5py.Group, key: str, strings: Sequence[str]) -> None:
    """A (1, N) MATLAB cell of strings: each a uint16 (len, 1) char array under #refs#."""
    cell = f.create_dataset(key, (1, len(strings)), dtype=h5py.ref_dtype)
    cell.attrs.create("MATLAB_class", np.bytes_("cell"))
    start = len(refs)
    targets = []
    for i, text in enumerate(strings):
        chars = np.array([[ord(ch)] for ch in text], dtype=np.uint16)
        ds = refs.create_dataset(_ref_name(start + i), data=chars)
        ds.attrs.create("MATLAB_class", np.bytes_("char"))
        ds.attrs.create("MATLAB_int_decode", np.int32(2))
        targets.append(ds.ref)
    cell[0, :] = targets


def _ref_name(i: int) -> str:
    """MATLAB-style names for #refs# entries: a, b, ..., z, ba, bb, ..."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    name = letters[i % 26]
    while i >= 26:
        i //= 26
        name = letters[i % 26] + name
    return name


def _write_header(path: Path) -> None:
    """The 128-byte MATLAB header at the start of the HDF5 userblock."""
    text = HEADER_TEXT.encode("ascii").ljust(116, b" ")
    header = text + b"\x00" * 8 + struct.pack("<H", 0x0200) + b"IM"
    with open(path, "r+b") as f:
        f.write(header)


# --------------------------------------------------------------------------------------------
# ImageNet-style ImageFolder
# --------------------------------------------------------------------------------------------

SIZE_JITTER = 0.2  # each side of a demo image is image_size x U(0.8, 1.2)
TRUNCATED_FRACTION = 0.6  # the truncated JPEG keeps this share of its bytes, like a cut download
# What a failed image download saves under the image's name.
NOT_AN_IMAGE = (
    b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
    b"<body><h1>Not Found</h1><p>This photo is no longer available.</p></body></html>\n"
)


@dataclass(frozen=True)
class _Cue:
    """A class's look: the hue of the whole image and the direction of its stripes."""

    hue: float
    vertical: bool


def write_demo_imagenet(
    out: str | os.PathLike,
    *,
    classes: int = 10,
    per_class: int = 20,
    val_per_class: int = 5,
    seed: int = 0,
    image_size: tuple[int, int] = (160, 120),
    quality: int = 90,
) -> Path | str:
    """Write a small learnable ImageFolder `out/{train,val}/<wnid>/*.JPEG`; return `out`, a local
    Path or a URI as given (written locally first, then uploaded).

    image_size is (width, height); each image varies by +-20% per side. Every class gets
    per_class usable train images (one of them CMYK, one grayscale, one a PNG named .JPEG, in the
    first three classes) and val_per_class val images; train also holds two bad files beyond
    those: a truncated JPEG and an HTML page named .JPEG. The same seed gives the same bytes.
    """
    _check_demo_imagenet(classes, per_class, val_per_class, image_size, quality)
    with storage.local_target(out) as local:
        _write_image_folder(local, np.random.default_rng(seed), classes, per_class, val_per_class, image_size, quality)
    return out if storage.is_uri(out) else Path(out)


def _write_image_folder(
    out: Path,
    rng: np.random.Generator,
    classes: int,
    per_class: int,
    val_per_class: int,
    image_size: tuple[int, int],
    quality: int,
) -> None:
    """The demo ImageFolder's files, written into the local folder `out`."""
    ids = 1_000_000 + rng.choice(14_000_000, classes, replace=False)  # like n01440764
    wnids = sorted(f"n{n:08d}" for n in ids)
    val_numbers = iter(rng.permutation(classes * val_per_class) + 1)
    for label, wnid in enumerate(wnids):
        cue = _Cue(hue=(label // 2) / math.ceil(classes / 2), vertical=label % 2 == 1)
        train, val = out / "train" / wnid, out / "val" / wnid
        train.mkdir(parents=True, exist_ok=True)
        val.mkdir(parents=True, exist_ok=True)
        numbers = sorted(rng.choice(50_000, per_class + 2, replace=False).tolist())
        for k in range(per_class):
            image = _render_image(cue, rng, image_size)
            path = train / f"{wnid}_{numbers[k]}.JPEG"
            _save_train_image(image, path, k * classes + label, quality)
        for _ in range(val_per_class):
            image = _render_image(cue, rng, image_size)
            path = val / f"ILSVRC2012_val_{next(val_numbers):08d}.JPEG"
            image.save(path, "JPEG", quality=quality)
        if label == 3 % classes:
            truncated = _jpeg_bytes(_render_image(cue, rng, image_size), quality)
            cut = int(len(truncated) * TRUNCATED_FRACTION)
            (train / f"{wnid}_{numbers[-2]}.JPEG").write_bytes(truncated[:cut])
        if label == 4 % classes:
            (train / f"{wnid}_{numbers[-1]}.JPEG").write_bytes(NOT_AN_IMAGE)


def _check_demo_imagenet(
    classes: int, per_class: int, val_per_class: int, image_size: tuple[int, int], quality: int
) -> None:
    """Sizes the demo can be made with; three train images must exist to carry the odd modes."""
    if classes < 1 or per_class < 1 or val_per_class < 0 or classes * per_class < 3:
        raise ConfigError(
            f"demo size classes={classes}, per_class={per_class}, val_per_class={val_per_class} "
            "(keys 'classes', 'per_class', 'val_per_class') is too small; use classes >= 1, "
            "per_class >= 1, val_per_class >= 0 and classes x per_class >= 3"
        )
    if min(image_size) < 16 or not 1 <= quality <= 100:
        raise ConfigError(
            f"demo image size {image_size} or quality {quality} (keys 'image_size', 'quality') is "
            "out of range; use width, height >= 16 and quality 1..100"
        )


def _save_train_image(image: Image.Image, path: Path, position: int, quality: int) -> None:
    """Train images 0, 1 and 2 (by class, then sample) are saved as CMYK JPEG, grayscale JPEG
    and PNG, keeping the name .JPEG: usable images of their class in ImageNet's odd formats."""
    if position == 0:
        image.convert("CMYK").save(path, "JPEG", quality=quality)
    elif position == 1:
        image.convert("L").save(path, "JPEG", quality=quality)
    elif position == 2:
        image.save(path, "PNG")
    else:
        image.save(path, "JPEG", quality=quality)


def _jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    """An image encoded as JPEG in memory."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _render_image(cue: _Cue, rng: np.random.Generator, image_size: tuple[int, int]) -> Image.Image:
    """Stripes of the class's hue in its direction under uneven light, one grey box, noise."""
    width, height = (round(s * rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER)) for s in image_size)
    period = min(width, height) * rng.uniform(0.15, 0.25)
    across = np.arange(width)[None, :] if cue.vertical else np.arange(height)[:, None]
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * across / period + rng.uniform(0, 2 * np.pi))
    value = (0.35 + 0.6 * stripes) * (1.0 + 0.1 * _smooth_noise(rng, height, width, cells=(3, 4)))
    hue = (cue.hue + rng.normal(0.0, 0.01)) % 1.0
    base = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 0.85), 1.0))
    img = value[..., None] * base * 255.0
    h, w = int(height * rng.uniform(0.15, 0.3)), int(width * rng.uniform(0.15, 0.3))
    y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    img[y : y + h, x : x + w] = rng.uniform(60, 200)
    img += rng.normal(0.0, 6.0, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
