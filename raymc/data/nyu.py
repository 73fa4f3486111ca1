"""NYU Depth V2 labeled .mat: reader, scene protocols and train/test splits.

The labeled file is MATLAB v7.3 (HDF5 behind a 512-byte header) and h5py shows MATLAB's axes
reversed: `images` is (N, 3, W, H), `depths` (N, W, H), and the per-sample strings in `sceneTypes`
and `scenes` are object references to uint16 char arrays. Everything here reads N, H and W from the
file and validates it before any pixel is read, and pixels are read in contiguous blocks of samples
because h5py reads whole chunks. nyu_prepare.py turns the file into Parquet shards.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import scipy.io

from raymc import storage
from raymc.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

SCENE_TYPES: tuple[str, ...] = (
    "basement",
    "bathroom",
    "bedroom",
    "bookstore",
    "cafe",
    "classroom",
    "computer_lab",
    "conference_room",
    "dinette",
    "dining_room",
    "excercise_room",
    "foyer",
    "furniture_store",
    "home_office",
    "home_storage",
    "indoor_balcony",
    "kitchen",
    "laundry_room",
    "living_room",
    "office",
    "office_kitchen",
    "playroom",
    "printer_room",
    "reception_room",
    "student_lounge",
    "study",
    "study_room",
)
OTHERS = "others"
PROTOCOLS: dict[str, tuple[str, ...]] = {
    "nyu10": (
        "bedroom",
        "kitchen",
        "living_room",
        "bathroom",
        "dining_room",
        "office",
        "home_office",
        "classroom",
        "bookstore",
        OTHERS,
    ),
    "nyu27": SCENE_TYPES,
}
REQUIRED_KEYS: tuple[str, ...] = ("images", "depths", "sceneTypes", "scenes")
DEFAULT_TEST_FRACTION = 654 / 1449
SPLIT_KEYS: tuple[str, str] = ("trainNdxs", "testNdxs")
SPLIT_NAMES: tuple[str, str] = ("train", "test")

_FIX_MAT = "pass the labeled NYU Depth V2 file nyu_depth_v2_labeled.mat (download it again if damaged)"
_FIX_DAMAGED = "download nyu_depth_v2_labeled.mat again"


# --------------------------------------------------------------------------------------------
# Reading the .mat
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NyuIndex:
    """Everything in the .mat but the pixels, read and validated once before any work starts."""

    path: Path | str  # a local file, or a URI
    num_samples: int
    height: int
    width: int
    scene_types: tuple[str, ...]
    scenes: tuple[str, ...]
    chunk_samples: int  # samples per HDF5 chunk of `images`: blocks are aligned to it


def open_mat(path: str | os.PathLike) -> h5py.File:
    """Open the .mat read-only, turning 'missing' and 'not HDF5' into DataError. A URI is read
    in place through a buffered file object, so a shard task reads only its own chunks (measured
    on the demo .mat: 0.6 s and 26 MB per task, against 5.6 s and the whole 80 MB to copy it to
    the task's disk first)."""
    if not storage.is_file(path):
        raise DataError(f"{path}: mat file not found (key 'mat'); {_FIX_MAT}")
    if storage.is_uri(path):
        with _readable(path, "the HDF5 file"):
            return h5py.File(storage.open_input_file(path), "r")
    path = Path(path)
    if not h5py.is_hdf5(path):
        raise DataError(
            f"{path}: not an HDF5 / MATLAB v7.3 file (key 'mat'); {_FIX_MAT}, "
            "or re-save it in MATLAB with save(..., '-v7.3')"
        )
    with _readable(path, "the HDF5 file"):
        return h5py.File(path, "r")


@contextlib.contextmanager
def _readable(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn what h5py raises on a truncated or damaged file (OSError when pixel chunks or the end
    of the file are missing, KeyError or RuntimeError for broken metadata) into a DataError that
    names the file and says to download it again."""
    try:
        yield
    except (OSError, KeyError, RuntimeError) as exc:
        raise DataError(
            f"{path}: truncated or damaged file (key 'mat'): cannot read {what} ({exc}); {_FIX_DAMAGED}"
        ) from exc


def read_index(path: str | os.PathLike) -> NyuIndex:
    """Read sizes and scene strings, checking every key agrees on N, H and W."""
    path = path if storage.is_uri(path) else Path(path)
    with open_mat(path) as f, _readable(path, "sizes and scene strings"):
        for key in REQUIRED_KEYS:
            if key not in f:
                raise DataError(f"{path}: key '{key}' is missing; {_FIX_MAT}")
        num_samples, width, height = _check_images(f["images"], path)
        _check_depths(f["depths"], path, (num_samples, width, height))
        scene_types = _read_strings(f, "sceneTypes", path, num_samples)
        scenes = _read_strings(f, "scenes", path, num_samples)
        chunks = f["images"].chunks
    _check_scene_types(scene_types, path)
    return NyuIndex(
        path=path,
        num_samples=num_samples,
        height=height,
        width=width,
        scene_types=scene_types,
        scenes=scenes,
        chunk_samples=chunks[0] if chunks else 1,
    )


def _check_images(ds: h5py.Dataset, path: Path) -> tuple[int, int, int]:
    """`images` must be (N, 3, W, H) uint8 as h5py shows it; returns (N, W, H)."""
    if ds.ndim != 4 or ds.shape[1] != 3 or ds.dtype != np.uint8 or 0 in ds.shape:
        raise DataError(
            f"{path}: key 'images' has shape {ds.shape} dtype {ds.dtype}, expected "
            f"(N, 3, W, H) uint8 (MATLAB's H x W x 3 x N seen by h5py); {_FIX_MAT}"
        )
    return ds.shape[0], ds.shape[2], ds.shape[3]


def _check_depths(ds: h5py.Dataset, path: Path, expected: tuple[int, int, int]) -> None:
    """`depths` must be float (N, W, H), matching `images` sample for sample."""
    if ds.shape != expected or ds.dtype.kind != "f":
        raise DataError(
            f"{path}: key 'depths' has shape {ds.shape} dtype {ds.dtype}, expected float "
            f"{expected} to match key 'images'; {_FIX_MAT}"
        )


def _read_strings(f: h5py.File, key: str, path: Path, num_samples: int) -> tuple[str, ...]:
    """Decode a (1, N) cell of MATLAB char arrays stored as HDF5 object references."""
    ds = f[key]
    if h5py.check_dtype(ref=ds.dtype) is not h5py.Reference or ds.ndim != 2 or 1 not in ds.shape:
        raise DataError(
            f"{path}: key '{key}' has shape {ds.shape} dtype {ds.dtype}, expected a (1, N) "
            f"cell of strings (object references); {_FIX_MAT}"
        )
    if ds.size != num_samples:
        raise DataError(f"{path}: key '{key}' holds {ds.size} samples but key 'images' holds {num_samples}; {_FIX_MAT}")
    refs = ds[()].ravel()
    return tuple(_decode_char(f, ref, key, path, i) for i, ref in enumerate(refs))


def _decode_char(f: h5py.File, ref: h5py.Reference, key: str, path: Path, index: int) -> str:
    """One MATLAB char array, (len, 1) uint16 in h5py; MATLAB marks empty ones MATLAB_empty."""
    if not ref:
        raise DataError(f"{path}: key '{key}' sample {index} is an empty reference; {_FIX_MAT}")
    obj = f[ref]
    if not isinstance(obj, h5py.Dataset) or obj.dtype.kind not in "ui":
        raise DataError(f"{path}: key '{key}' sample {index} does not reference a char array; {_FIX_MAT}")
    if obj.attrs.get("MATLAB_empty", 0):
        return ""
    return "".join(map(chr, obj[()].ravel()))


def _check_scene_types(scene_types: Sequence[str], path: Path) -> None:
    """Every scene type must be one of the 27 real ones, or labels would be invented."""
    known = set(SCENE_TYPES)
    for index, value in enumerate(scene_types):
        if value not in known:
            raise DataError(
                f"{path}: key 'sceneTypes' sample {index} is {value!r}, not one of the 27 NYU "
                f"Depth V2 scene types ({', '.join(SCENE_TYPES)}); fix the value or {_FIX_MAT}"
            )


def read_block(f: h5py.File, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Samples start..stop as RGB (n, H, W, 3) uint8, cleaned depth (n, H, W) float32 metres,
    and the number of pixels cleaned per sample: one h5py read per key, whole chunks at a time.
    Damage in the pixel chunks only shows here, so it is reported as a DataError too."""
    with _readable(f.filename, f"the pixels of samples {start}..{stop - 1}"):
        rgb = np.ascontiguousarray(f["images"][start:stop].transpose(0, 3, 2, 1))
        depth = np.ascontiguousarray(f["depths"][start:stop].transpose(0, 2, 1), dtype=np.float32)
    cleaned = clean_depth(depth)
    return rgb, depth, cleaned


def clean_depth(depth: np.ndarray) -> np.ndarray:
    """Set NaN, inf and negative depths to 0 (= missing) in place; return counts per sample."""
    bad = ~np.isfinite(depth) | (depth < 0)
    depth[bad] = 0.0
    return bad.reshape(len(depth), -1).sum(axis=1)


# --------------------------------------------------------------------------------------------
# Scene protocols
# --------------------------------------------------------------------------------------------


def class_names(protocol: str) -> tuple[str, ...]:
    """The class names of a protocol, in label order."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r} (key 'protocol'); use one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[protocol]


def scene_labels(scene_types: Sequence[str], protocol: str) -> np.ndarray:
    """Map scene types to int64 labels; under nyu10 every type outside the nine is 'others'."""
    names = class_names(protocol)
    label_of = {name: i for i, name in enumerate(names)}
    others = label_of.get(OTHERS)
    return np.array([label_of.get(t, others) for t in scene_types], dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def read_splits(path: str | os.PathLike, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Read the official splits.mat (MATLAB v5 or v7.3) as 0-based (train, test) indices."""
    path = Path(path)
    arrays = _load_split_arrays(path)
    train, test = (_split_indices(arrays[key], key, path, num_samples) for key in SPLIT_KEYS)
    overlap = np.intersect1d(train, test)
    if overlap.size:
        raise DataError(
            f"{path}: keys 'trainNdxs' and 'testNdxs' share {overlap.size} indices (first: "
            f"{overlap[0] + 1}); pass the official splits.mat or fix the lists"
        )
    return train, test


def _load_split_arrays(path: Path) -> dict[str, np.ndarray]:
    """trainNdxs and testNdxs from a v5 .mat (scipy) or a v7.3 one (h5py)."""
    if not path.is_file():
        raise DataError(f"{path}: splits file not found (key 'splits'); pass the official splits.mat")
    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            arrays = {key: np.asarray(f[key]) for key in SPLIT_KEYS if key in f}
    else:
        arrays = _load_v5(path)
    for key in SPLIT_KEYS:
        if key not in arrays:
            raise DataError(f"{path}: key '{key}' is missing; pass the official splits.mat")
    return arrays


def _load_v5(path: Path) -> dict[str, np.ndarray]:
    """A MATLAB v4/v5 file via scipy; anything scipy cannot parse is not a splits file."""
    try:
        return scipy.io.loadmat(path, variable_names=list(SPLIT_KEYS))
    except (scipy.io.matlab.MatReadError, ValueError, TypeError, OSError) as e:
        raise DataError(f"{path}: not a MATLAB .mat file (key 'splits'): {e}; pass the official splits.mat") from e


def _split_indices(values: np.ndarray, key: str, path: Path, num_samples: int) -> np.ndarray:
    """Check 1-based whole-number indices in 1..N without repeats; return them 0-based."""
    flat = np.asarray(values).ravel()
    fix = "pass the official splits.mat or fix the list"
    if flat.size == 0 or flat.dtype.kind not in "uif":
        raise DataError(f"{path}: key '{key}' is empty or not numeric ({flat.dtype}); {fix}")
    if not np.all(np.isfinite(flat)) or np.any(flat != np.round(flat)):
        raise DataError(f"{path}: key '{key}' holds non-integer indices; {fix}")
    indices = flat.astype(np.int64)
    outside = indices[(indices < 1) | (indices > num_samples)]
    if outside.size:
        raise DataError(
            f"{path}: key '{key}' holds indices outside 1..{num_samples} (e.g. {outside[0]}); "
            f"the splits file does not belong to this .mat; {fix}"
        )
    if np.unique(indices).size != indices.size:
        raise DataError(f"{path}: key '{key}' repeats indices; {fix}")
    return indices - 1


def grouped_split(scenes: Sequence[str], labels: np.ndarray, *, seed: int, test_fraction: float) -> np.ndarray:
    """A seeded split that keeps each room (`scenes`) on one side, stratified by class.

    Per class (a room's class is the majority of its frames), its rooms are shuffled and moved
    into test until the class's test share reaches test_fraction; the last room always stays in
    train, so every class with >= 2 rooms has a room on each side and a one-room class trains.
    When that leaves test empty (every class has one room), whole rooms of any class move to test
    instead, so training validates on something even if each class is then on one side only.
    Fewer than 2 rooms cannot be split: DataError. Returns a bool array, True for test samples.
    """
    check_test_fraction(test_fraction)
    room_names, room_of = np.unique(np.asarray(scenes, dtype=str), return_inverse=True)
    if len(room_names) < 2:
        raise DataError(
            f"key 'scenes' names only {len(room_names)} room ({', '.join(room_names)}) and a split keeps each "
            "room on one side, so no test split is possible; pass the official split with --splits splits.mat, "
            "or data with more rooms"
        )
    room_sizes = np.bincount(room_of, minlength=len(room_names))
    room_class = _room_classes(room_of, labels, len(room_names))
    rng = np.random.default_rng(seed)
    test_room = np.zeros(len(room_names), dtype=bool)
    for label in np.unique(room_class):
        rooms = np.flatnonzero(room_class == label)
        rng.shuffle(rooms)
        test_room[_rooms_for_test(rooms, room_sizes, test_fraction)] = True
    if not test_room.any():
        test_room[_rooms_for_test(rng.permutation(len(room_names)), room_sizes, test_fraction)] = True
    return test_room[room_of]


def check_test_fraction(test_fraction: float) -> None:
    """The grouped split needs a fraction strictly between 0 and 1."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(
            f"test fraction {test_fraction} (key 'test_fraction') must be between 0 and 1; "
            f"the NYU default is {DEFAULT_TEST_FRACTION:.4f} (654/1449)"
        )


def _room_classes(room_of: np.ndarray, labels: np.ndarray, num_rooms: int) -> np.ndarray:
    """The majority class of each room's frames (lowest label on ties)."""
    counts = np.zeros((num_rooms, int(labels.max()) + 1), dtype=np.int64)
    np.add.at(counts, (room_of, labels), 1)
    return counts.argmax(axis=1)


def _rooms_for_test(rooms: np.ndarray, room_sizes: np.ndarray, test_fraction: float) -> list[int]:
    """Take shuffled rooms into test until their frames reach the target share of theirs (a class's
    rooms, or all rooms); the first always goes and the last always stays, so given >= 2 rooms
    both sides get one."""
    target = test_fraction * room_sizes[rooms].sum()
    chosen: list[int] = []
    taken = 0
    for room in rooms[:-1]:
        if taken >= target:
            break
        chosen.append(int(room))
        taken += room_sizes[room]
    return chosen


def assign_splits(
    index: NyuIndex,
    labels: np.ndarray,
    *,
    splits: str | os.PathLike | None,
    seed: int,
    test_fraction: float,
) -> np.ndarray:
    """Per sample 'train', 'test' or '' (in neither official list: left out of the data)."""
    assigned = np.full(index.num_samples, "", dtype="<U5")
    if splits is not None:
        train, test = read_splits(splits, index.num_samples)
        assigned[train], assigned[test] = SPLIT_NAMES
        return assigned
    try:
        is_test = grouped_split(index.scenes, labels, seed=seed, test_fraction=test_fraction)
    except DataError as exc:
        raise DataError(f"{index.path}: {exc}") from None
    assigned[:] = np.where(is_test, "test", "train")
    return assigned


def warn_one_sided_classes(assigned: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> None:
    """Log a warning naming the classes that have samples in one split only, since validation
    cannot score a train-only class and training never sees a test-only one."""
    train, test = (set(labels[assigned == name].tolist()) for name in SPLIT_NAMES)
    sides = (
        ("train", train - test, "validation cannot score them"),
        ("test", test - train, "training never sees them"),
    )
    for side, only, consequence in sides:
        if only:
            names = ", ".join(classes[i] for i in sorted(only))
            logger.warning("classes only in the %s split: %s; %s", side, names, consequence)
