"""ImageNet (ILSVRC 2012) ImageFolder: reader, bad-image policy and decoding.

The layout is `DIR/train/<wnid>/*.JPEG` and `DIR/val/<wnid>/*.JPEG`; labels are the positions of
the sorted train wnids (torchvision's ImageFolder order) and val uses the same mapping. Real copies
hold a few CMYK and grayscale JPEGs, a PNG named `.JPEG`, and in users' copies truncated files and
stray non-image files: decoding sniffs the content, converts every mode to RGB, forces a full
decode so truncation is caught, and reports bad files by path and reason under the policy "skip"
(leave them out, listed) or "fail" (stop, naming the file). imagenet_prepare.py turns the tree into
Parquet shards.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import io
import logging
import math
import os
import posixpath
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.fs
import ray
from PIL import Image, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS

from raymc import storage
from raymc.data.jpeg import as_tensor, decode_rgb_jpegs
from raymc.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

SPLITS: tuple[str, str] = ("train", "val")
BAD_IMAGE_POLICIES: tuple[str, str] = ("skip", "fail")
SHARD_ROWS = 1024  # images per Parquet shard and Ray task: ~110 MB of original ImageNet JPEGs
MIN_SHARDS = 8  # per split: enough Ray tasks to keep a small cluster busy on small folders
LIST_THREADS = 16  # class folders listed at once (I/O-bound requests on an object store)
READ_THREADS = 16  # files of one Ray task read at once from an object store

_LAYOUT = (
    "expected the ImageFolder layout DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG "
    "(sort a flat ImageNet val/ folder into <wnid> folders first, e.g. with valprep.sh)"
)
# What PIL raises on bad data, depending on the format plugin.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
)


class BadImageError(DataError):
    """A file in the data that is not a usable image: truncated, undecodable or not an image."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            f"{path}: bad image ({reason}); delete or replace the file, or leave bad images out "
            "with --on-bad-image skip (on_bad_image='skip')"
        )
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple:
        """Pickle by (path, reason) so the error survives the trip out of a Ray task."""
        return type(self), (self.path, self.reason)


# --------------------------------------------------------------------------------------------
# Scanning the ImageFolder tree
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRow:
    """One file of a split: absolute path, label, class folder, and its position in the split's
    sorted file list (a stable id, unique within the split)."""

    path: str
    label: int
    wnid: str
    index: int


@dataclass(frozen=True)
class ImageFolderIndex:
    """Every file of train/ and val/ with its label, listed once before any image is read."""

    root: str  # the folder: an absolute local path or a URI (s3://...)
    classes: tuple[str, ...]  # sorted train wnids: label i is classes[i]
    rows: dict[str, list[ImageRow]]  # "train", "val" -> rows in sorted path order


def scan_image_folder(data_dir: str | os.PathLike) -> ImageFolderIndex:
    """List train/ and val/, label both by the sorted train class folders, and check val has no
    class that train lacks. Every non-hidden file of a class folder is a row, images or not, so
    that reading can report the bad ones instead of silently dropping them.

    `data_dir` is a local folder or a URI: the tree is listed in one recursive listing of its
    filesystem (on an object store, a few paged LIST requests instead of one per folder; locally,
    symlinked folders are followed, as torchvision's ImageFolder does)."""
    root = storage.as_uri(data_dir)
    tree = _list_tree(root)
    train_dir, val_dir = (_split_dir(root, tree, split) for split in SPLITS)
    classes = _class_folders(train_dir, tree)
    val_classes = _class_folders(val_dir, tree)
    unknown = sorted(set(val_classes) - set(classes))
    if unknown:
        raise DataError(
            f"{val_dir}: class folder(s) {', '.join(unknown[:5])} not in {train_dir} (key "
            "'data_dir'); labels come from the train class folders, so every val wnid needs a "
            "train folder: remove the extra val folder(s) or add the missing train class"
        )
    label_of = {wnid: label for label, wnid in enumerate(classes)}
    rows = {
        "train": _split_rows(train_dir, tree, classes, label_of),
        "val": _split_rows(val_dir, tree, val_classes, label_of),
    }
    if not rows["train"]:
        raise DataError(f"{train_dir}: the class folders hold no files (key 'data_dir'); {_LAYOUT}")
    return ImageFolderIndex(root=root, classes=classes, rows=rows)


@dataclass(frozen=True)
class _Tree:
    """A recursive listing: the relative paths (posix) of the non-hidden folders and files."""

    folders: frozenset[str]
    files: tuple[str, ...]  # sorted


def _list_tree(root: str) -> _Tree:
    """Everything under `root` whose path has no hidden part (.DS_Store, ._* resource forks and
    hidden folders are system files, not samples). The split folders are listed first, then each
    class folder recursively in LIST_THREADS threads: on an object store one recursive listing of
    ImageNet is ~1,300 paged requests in a row, the class folders' listings go side by side."""
    fs, base = storage.filesystem(root)

    def listing(path: str, *, recursive: bool = False) -> list[pyarrow.fs.FileInfo]:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=recursive))
        return [i for i in infos if not posixpath.basename(i.path).startswith(".")]

    def folders_in(infos: list[pyarrow.fs.FileInfo]) -> list[str]:
        return [i.path for i in infos if i.type == pyarrow.fs.FileType.Directory]

    with storage.named_errors(root):
        if fs.get_file_info(base).type != pyarrow.fs.FileType.Directory:
            raise DataError(f"{root}: ImageNet folder not found (key 'data_dir'); {_LAYOUT}")
        infos = listing(base)
        class_level = [info for split in folders_in(infos) for info in listing(split)]
        with concurrent.futures.ThreadPoolExecutor(LIST_THREADS) as pool:
            nested = pool.map(functools.partial(listing, recursive=True), folders_in(class_level))
            infos += class_level + [info for infos_of_class in nested for info in infos_of_class]
    folders, files = set(), []
    for info in infos:
        relative = info.path[len(base) :].strip("/")
        if any(part.startswith(".") for part in relative.split("/")):
            continue
        if info.type == pyarrow.fs.FileType.Directory:
            folders.add(relative)
        elif info.type == pyarrow.fs.FileType.File:
            files.append(relative)
    return _Tree(frozenset(folders), tuple(sorted(files)))


def _split_dir(root: str, tree: _Tree, split: str) -> str:
    """DIR/train or DIR/val, which must exist as folders."""
    if split not in tree.folders:
        raise DataError(f"{storage.join(root, split)}: {split}/ folder not found (key 'data_dir'); {_LAYOUT}")
    return storage.join(root, split)


def _class_folders(split_dir: str, tree: _Tree) -> tuple[str, ...]:
    """The sorted sub-folders of a split; a split without any is not ImageFolder."""
    split = posixpath.basename(split_dir)
    names = sorted(posixpath.basename(f) for f in tree.folders if posixpath.dirname(f) == split)
    if not names:
        loose = sum(1 for f in tree.files if posixpath.dirname(f) == split)
        raise DataError(f"{split_dir}: no class folders, {loose} loose file(s) (key 'data_dir'); {_LAYOUT}")
    return tuple(names)


def _split_rows(split_dir: str, tree: _Tree, wnids: tuple[str, ...], label_of: dict[str, int]) -> list[ImageRow]:
    """Rows of one split in sorted path order, files of nested folders included (as torchvision)."""
    split, wanted = posixpath.basename(split_dir), set(wnids)
    found = []
    for relative in tree.files:  # sorted, so rows come in sorted path order
        parts = relative.split("/")
        if len(parts) >= 3 and parts[0] == split and parts[1] in wanted:
            found.append((storage.join(split_dir, *parts[1:]), parts[1]))
    return [ImageRow(path=p, label=label_of[w], wnid=w, index=i) for i, (p, w) in enumerate(found)]


def image_folder_dataset(index: ImageFolderIndex, split: str, *, seed: int | None = None) -> ray.data.Dataset:
    """The rows of one split as a Ray Dataset {path, label, wnid, index, split}, in several
    blocks so that `map_batches(decode_batch)` runs in parallel. Rows come in sorted (class by
    class) order, or in a seeded shuffle when `seed` is given, so that every block mixes classes."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r} (key 'split'); use one of {', '.join(SPLITS)}")
    rows = index.rows[split]
    if seed is not None:
        rows = [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]
    table = pa.table(
        {
            "path": pa.array([r.path for r in rows], type=pa.string()),
            "label": pa.array([r.label for r in rows], type=pa.int64()),
            "wnid": pa.array([r.wnid for r in rows], type=pa.string()),
            "index": pa.array([r.index for r in rows], type=pa.int64()),
            "split": pa.array([split] * len(rows), type=pa.string()),
        }
    )
    # One block per would-be shard, so a folder is read in the same tasks as its prepared shards.
    size = shard_rows(len(rows))
    blocks = [table.slice(s, size) for s in range(0, len(rows), size)]
    return ray.data.from_arrow(blocks or [table])


def shard_rows(num_rows: int) -> int:
    """Images per shard of a split, and so per Ray task: SHARD_ROWS, fewer for small splits so
    that each has at least MIN_SHARDS. Few large tasks keep the CPUs busy: Ray Data leaves a CPU
    idle for about 0.17 s between one task and the next (bench/RESULTS.md)."""
    return max(1, min(SHARD_ROWS, math.ceil(num_rows / MIN_SHARDS)))


def folder_info(index: ImageFolderIndex) -> dict:
    """dataset_info.json's facts for an ImageFolder read directly: classes and file counts
    (before undecodable files are skipped)."""
    counts = {split: {wnid: 0 for wnid in index.classes} for split in SPLITS}
    for split, rows in index.rows.items():
        for row in rows:
            counts[split][row.wnid] += 1
    return {
        "dataset": "imagenet",
        "classes": list(index.classes),
        "num_samples": sum(len(rows) for rows in index.rows.values()),
        "counts": counts,
        "source": str(index.root),
    }


# --------------------------------------------------------------------------------------------
# Reading and decoding
# --------------------------------------------------------------------------------------------


def check_on_bad_image(on_bad_image: str) -> None:
    """The bad-image policy must be one of BAD_IMAGE_POLICIES."""
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise ConfigError(
            f"unknown bad-image policy {on_bad_image!r} (key 'on_bad_image', flag "
            f"--on-bad-image); use one of {', '.join(BAD_IMAGE_POLICIES)}"
        )


def read_image_file(path: str, *, fs: pyarrow.fs.FileSystem | None = None) -> bytes:
    """The bytes of an image file (a local path, or a URI read through `fs`, the filesystem of its
    folder: building an S3 filesystem costs about 2 ms, so callers make one per batch of files); a
    file without an image extension is reported, not read (a stray archive or video in a class
    folder would otherwise be loaded whole)."""
    suffix = posixpath.splitext(path)[1].lower()
    if suffix not in IMG_EXTENSIONS:
        known = ", ".join(IMG_EXTENSIONS)
        raise BadImageError(path, f"not an image file: extension {suffix or '(none)'!r} is not one of {known}")
    try:
        return storage.read_bytes(path, fs=fs) if storage.is_uri(path) else Path(path).read_bytes()
    except OSError as e:
        raise BadImageError(path, f"cannot read the file: {e.strerror or e}") from e


def _folder_filesystem(paths: Sequence[str]) -> pyarrow.fs.FileSystem | None:
    """The filesystem to read a batch of image files through: their object store's, or None for
    local files (read directly)."""
    return storage.filesystem(paths[0])[0] if len(paths) and storage.is_uri(paths[0]) else None


def decode_rgb(data: bytes, *, path: str, draft_size: int | None = None) -> np.ndarray:
    """Decode any image to H x W x 3 uint8 RGB, by content (a PNG named .JPEG is fine).

    Plain RGB JPEGs go through torchvision's decoder (~1.4x faster than PIL here); every other
    kind, and any JPEG the fast path rejects, through PIL with a forced full decode, so PIL names
    the reason. With `draft_size`, a JPEG at least twice that size on its shorter side is decoded
    by PIL at 1/2, 1/4 or 1/8 scale, keeping the shorter side >= draft_size.
    """
    img = open_image(data, path)
    if is_plain_jpeg(img) and not _draft_applies(img, draft_size):
        rgb = _decode_jpeg_fast(data)
        if rgb is not None:
            return rgb
    return np.array(load_rgb(img, path, draft_size=draft_size))


def decode_batch(
    batch: dict[str, np.ndarray], *, on_bad_image: str = "skip", draft_size: int | None = None
) -> dict[str, np.ndarray]:
    """For `map_batches(batch_format="numpy")`: rows {label, index, image (bytes) or path} ->
    {rgb (object array of H x W x 3 uint8), label, index}; bad rows are left out with a
    warning naming the file under "skip", or raise BadImageError under "fail"."""
    if draft_size is not None and draft_size < 1:
        raise ConfigError(f"draft size {draft_size} (key 'draft_size') must be >= 1, or unset")
    images, keep = read_rows(
        batch, on_bad_image=on_bad_image, read=lambda data, name: decode_rgb(data, path=name, draft_size=draft_size)
    )
    return {
        "rgb": object_array(images),
        "label": np.asarray(batch["label"])[keep].astype(np.int64),
        "index": np.asarray(batch["index"])[keep].astype(np.int64),
    }


T = TypeVar("T")


def read_rows(
    batch: dict[str, np.ndarray], *, on_bad_image: str, read: Callable[[bytes, str], T]
) -> tuple[list[T], list[int]]:
    """`read(bytes, name)` of each row {label, index, image (bytes) or path}, and the positions of
    the rows read: a row whose file is bad (BadImageError) is left out under --on-bad-image skip."""
    check_on_bad_image(on_bad_image)
    results, keep = [], []
    names = [row_name(batch, i) for i in range(len(batch["label"]))]
    encoded = batch["image"] if "image" in batch else fetch_files(names)
    for i, (name, data) in enumerate(zip(names, encoded, strict=True)):
        try:
            if isinstance(data, BadImageError):
                raise data
            results.append(read(data, name))
        except BadImageError as e:
            skip_or_raise(e, on_bad_image)
            continue
        keep.append(i)
    return results, keep


def fetch_files(paths: Sequence[str]) -> Iterator[bytes | BadImageError]:
    """The bytes of each file in order, or the BadImageError reading it raised. Local files are
    read one by one; from an object store READ_THREADS at a time, through one filesystem, so that
    each request's round trip (two per file: pyarrow asks for the size first) overlaps the others'."""
    fs = _folder_filesystem(paths)

    def fetch(path: str) -> bytes | BadImageError:
        try:
            return read_image_file(path, fs=fs)
        except BadImageError as e:
            return e

    if fs is None:
        yield from map(fetch, paths)
        return
    with concurrent.futures.ThreadPoolExecutor(READ_THREADS) as pool:
        yield from pool.map(fetch, paths)


def row_name(batch: dict[str, np.ndarray], i: int) -> str:
    """What an error names row i by: its file, else its index."""
    return str(batch["path"][i]) if "path" in batch else f"row index {batch['index'][i]}"


def skip_or_raise(error: BadImageError, on_bad_image: str) -> None:
    """--on-bad-image for one bad file: raise it ("fail"), or log that it is left out ("skip")."""
    if on_bad_image == "fail":
        raise error
    logger.warning("skipping bad image %s: %s", error.path, error.reason)


def object_array(items: list) -> np.ndarray:
    """A 1-D object array holding each item whole (numpy would stack equal shapes)."""
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out


@contextlib.contextmanager
def _bad_image(path: str) -> Iterator[None]:
    """Turn PIL's many decode errors into one BadImageError naming the file and the reason."""
    try:
        yield
    except UnidentifiedImageError:
        raise BadImageError(path, "not an image: unrecognised content") from None
    except _DECODE_ERRORS as e:
        raise BadImageError(path, f"cannot decode: {e}") from e


def open_image(data: bytes, path: str) -> Image.Image:
    """Parse the header only (cheap): format, mode and size, without decoding pixels."""
    with _bad_image(path):
        return Image.open(io.BytesIO(data))


def is_plain_jpeg(img: Image.Image) -> bool:
    """A 3-channel JPEG: what ImageNet mostly is, and what decodes straight to RGB."""
    return img.format == "JPEG" and img.mode == "RGB"


def _draft_applies(img: Image.Image, draft_size: int | None) -> bool:
    """PIL's draft mode only scales by 1/2 or less, so it needs a shorter side >= 2 x size."""
    return draft_size is not None and img.format == "JPEG" and min(img.size) >= 2 * draft_size


def _decode_jpeg_fast(data: bytes) -> np.ndarray | None:
    """torchvision's libjpeg-turbo decode, or None where it refuses (PIL then says why)."""
    try:
        (chw,) = decode_rgb_jpegs([as_tensor(data)])
    except RuntimeError:
        return None
    return chw.permute(1, 2, 0).contiguous().numpy()


def load_rgb(img: Image.Image, path: str, *, draft_size: int | None) -> Image.Image:
    """Fully decode (so truncation raises) at draft scale where it applies, then convert to RGB."""
    with _bad_image(path):
        if _draft_applies(img, draft_size):
            img.draft("RGB", (draft_size, draft_size))
        img.load()
        return _to_rgb(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any mode to RGB; 16/32-bit grayscale is scaled to 8 bits (PIL's convert would clip it)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I"):
        wide = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        img = Image.fromarray((wide >> 8).astype(np.uint8))
    return img.convert("RGB")
