"""The demo NYU file: real layout, rooms, determinism, and cues that need both streams."""

from __future__ import annotations

import re
from collections import Counter
from itertools import pairwise
from pathlib import Path

import h5py
import numpy as np
import pytest

from raymc.data import nyu
from raymc.data.demo import write_demo_nyu
from raymc.errors import ConfigError

N, H, W = 40, 48, 64


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_nyu(tmp_path_factory.mktemp("demo") / "demo.mat", n=N, height=H, width=W)


def test_header_is_a_matlab_73_header_in_the_userblock(demo: Path) -> None:
    header = demo.read_bytes()[:128]
    assert header.startswith(b"MATLAB 7.3 MAT-file")
    assert b"HDF5 schema 1.00" in header[:116]
    assert header[124:128] == b"\x00\x02IM"  # version 0x0200 little-endian, endian indicator
    with h5py.File(demo, "r") as f:
        assert f.userblock_size == 512


def test_axes_are_reversed_like_the_real_file(demo: Path) -> None:
    with h5py.File(demo, "r") as f:
        assert f["images"].shape == (N, 3, W, H) and f["images"].dtype == np.uint8
        for key in ("depths", "rawDepths"):
            assert f[key].shape == (N, W, H) and f[key].dtype == np.float32
        for key in ("labels", "instances"):
            assert f[key].shape == (N, W, H) and f[key].dtype == np.uint16
        assert f["sceneTypes"].shape == f["scenes"].shape == (1, N)
        assert 1 < f["images"].chunks[0] < N  # chunks span several samples
        classes = {key: f[key].attrs["MATLAB_class"] for key in ("images", "depths", "scenes")}
        assert classes == {"images": b"uint8", "depths": b"single", "scenes": b"cell"}


def test_strings_are_char_arrays_behind_references(demo: Path) -> None:
    with h5py.File(demo, "r") as f:
        ref = f["sceneTypes"][0, 0]
        chars = f[ref]
        assert chars.dtype == np.uint16 and chars.shape[1] == 1
        assert chars.attrs["MATLAB_class"] == b"char"
        assert chars.name.startswith("/#refs#/")
        assert "".join(map(chr, chars[:, 0])) in nyu.SCENE_TYPES


def test_rooms_are_shared_by_3_to_8_contiguous_frames(demo: Path) -> None:
    index = nyu.read_index(demo)
    sizes = Counter(index.scenes)
    assert all(3 <= size <= 8 for size in sizes.values())
    changes = sum(a != b for a, b in pairwise(index.scenes))
    assert changes == len(sizes) - 1  # each room's frames are consecutive
    for scene, scene_type in zip(index.scenes, index.scene_types, strict=True):
        assert re.fullmatch(rf"{scene_type}_\d{{4}}[a-z]?", scene)


def test_raw_depths_miss_more_and_depths_hold_nan_to_clean(demo: Path) -> None:
    with h5py.File(demo, "r") as f:
        depths, raw = f["depths"][()], f["rawDepths"][()]
    assert (raw == 0).mean() > (depths == 0).mean() > 0.02
    with nyu.open_mat(demo) as f:
        _, _, cleaned = nyu.read_block(f, 0, N)
    assert cleaned.sum() == np.isnan(depths).sum() > 0


def test_same_seed_gives_identical_bytes(tmp_path: Path, demo: Path) -> None:
    again = write_demo_nyu(tmp_path / "again.mat", n=N, height=H, width=W)
    other = write_demo_nyu(tmp_path / "other.mat", n=N, height=H, width=W, seed=1)
    assert again.read_bytes() == demo.read_bytes()
    assert other.read_bytes() != demo.read_bytes()


def test_too_small_sizes_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="height"):
        write_demo_nyu(tmp_path / "x.mat", n=10, height=4)
    assert not (tmp_path / "x.mat").exists()


def _nearest_class_mean(features: np.ndarray, labels: np.ndarray, is_test: np.ndarray) -> float:
    """Accuracy of classifying standardized features by the closest training class mean."""
    train = ~is_test
    x = (features - features[train].mean(0)) / features[train].std(0)
    means = np.stack([x[train & (labels == c)].mean(0) for c in range(10)])
    pred = np.argmin(((x[is_test, None] - means[None]) ** 2).sum(-1), axis=1)
    return float((pred == labels[is_test]).mean())


def test_classes_need_both_rgb_and_depth(tmp_path: Path) -> None:
    mat = write_demo_nyu(tmp_path / "learn.mat", n=300, height=24, width=32, seed=1)
    index = nyu.read_index(mat)
    labels = nyu.scene_labels(index.scene_types, "nyu10")
    with nyu.open_mat(mat) as f:
        rgb, depth, _ = nyu.read_block(f, 0, index.num_samples)
    mean_rgb = rgb.reshape(len(rgb), -1, 3).mean(1)
    chroma = mean_rgb / mean_rgb.sum(1, keepdims=True)  # hue cue, blind to brightness
    mean_depth = np.array([d[d > 0].mean() for d in depth])[:, None]
    is_test = nyu.grouped_split(index.scenes, labels, seed=0, test_fraction=0.4)
    rgb_only = _nearest_class_mean(chroma, labels, is_test)
    depth_only = _nearest_class_mean(mean_depth, labels, is_test)
    both = _nearest_class_mean(np.hstack([chroma, mean_depth]), labels, is_test)
    assert 0.2 < rgb_only < 0.7 and 0.2 < depth_only < 0.7  # beats chance (0.1), not alone
    assert both > 0.9 and both > max(rgb_only, depth_only) + 0.25
