"""The NYU .mat reader, scene protocols and splits, on tiny files written in the real layout."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from raymc.data import nyu, nyu_prepare
from raymc.data.demo import write_nyu_mat
from raymc.errors import ConfigError, DataError

N, H, W = 6, 5, 7  # H != W and both odd, so a swapped axis cannot go unnoticed


def _pattern(n: int = N) -> tuple[np.ndarray, np.ndarray]:
    """RGB and depth whose every value encodes (sample, row, column, channel)."""
    i, y, x, c = np.meshgrid(np.arange(n), np.arange(H), np.arange(W), np.arange(3), indexing="ij")
    rgb = ((i * 101 + y * 17 + x * 3 + c) % 256).astype(np.uint8)
    depth = (i + y * 0.1 + x * 0.01).astype(np.float32)[..., 0] + 0.5
    return rgb, depth


def _write(path: Path, *, n: int = N, scene_types=None, scenes=None, depth=None) -> Path:
    rgb, pattern_depth = _pattern(n)
    scene_types = scene_types or ["kitchen", "kitchen", "office", "cafe", "cafe", "study"][:n]
    scenes = scenes or [f"{t}_{k:04d}" for k, t in enumerate(scene_types)]
    return write_nyu_mat(
        path,
        images=rgb,
        depths=pattern_depth if depth is None else depth,
        scene_types=scene_types,
        scenes=scenes,
    )


@pytest.fixture
def mat(tmp_path: Path) -> Path:
    return _write(tmp_path / "nyu.mat")


# ------------------------------------------------------------------------------ reader


def test_h5py_shows_matlab_axes_reversed(mat: Path) -> None:
    rgb, depth = _pattern()
    with h5py.File(mat, "r") as f:
        assert f["images"].shape == (N, 3, W, H)
        assert f["depths"].shape == (N, W, H)
        assert f["images"][2, 1, 4, 3] == rgb[2, 3, 4, 1]  # [i, c, x, y] == [i, y, x, c]
        np.testing.assert_array_equal(f["images"][2].transpose(2, 1, 0), rgb[2])
        np.testing.assert_array_equal(f["depths"][2].T, depth[2])


def test_read_block_gives_h_w_3_images_and_transposed_depth(mat: Path) -> None:
    rgb, depth = _pattern()
    with nyu.open_mat(mat) as f:
        got_rgb, got_depth, cleaned = nyu.read_block(f, 1, 4)
    assert got_rgb.shape == (3, H, W, 3) and got_rgb.dtype == np.uint8
    assert got_depth.shape == (3, H, W) and got_depth.dtype == np.float32
    np.testing.assert_array_equal(got_rgb, rgb[1:4])
    np.testing.assert_array_equal(got_depth, depth[1:4])
    assert cleaned.tolist() == [0, 0, 0]


def test_index_reads_sizes_and_strings_from_the_file(mat: Path) -> None:
    index = nyu.read_index(mat)
    assert (index.num_samples, index.height, index.width) == (N, H, W)
    assert index.scene_types == ("kitchen", "kitchen", "office", "cafe", "cafe", "study")
    assert index.scenes[0] == "kitchen_0000"
    with h5py.File(mat, "r") as f:  # the documented decoding of one reference
        ref = f["scenes"][0, 3]
        assert "".join(map(chr, f[ref][:, 0])) == index.scenes[3]
        assert f["scenes"].shape == (1, N)


def test_nan_inf_and_negative_depths_become_zero_and_are_counted(tmp_path: Path) -> None:
    _, depth = _pattern()
    depth[0, 0, 0] = np.nan
    depth[0, 1, 1] = np.inf
    depth[2, 2, 2] = -1.0
    depth[2, 3, 3] = -np.inf
    depth[3, 4, 4] = 0.0  # already missing: not counted
    mat = _write(tmp_path / "bad_depth.mat", depth=depth)
    with nyu.open_mat(mat) as f:
        _, got, cleaned = nyu.read_block(f, 0, N)
    assert cleaned.tolist() == [2, 0, 2, 0, 0, 0]
    assert got[0, 0, 0] == got[0, 1, 1] == got[2, 2, 2] == got[2, 3, 3] == 0.0
    assert np.isfinite(got).all() and (got >= 0).all()


def test_blocks_are_contiguous_and_chunk_aligned(tmp_path: Path) -> None:
    index = nyu.read_index(_write(tmp_path / "m.mat"))
    blocks = nyu_prepare._blocks(index)
    assert blocks[0][0] == 0 and blocks[-1][1] == N
    assert all(a[1] == b[0] for a, b in pairwise(blocks))
    assert all(start % index.chunk_samples == 0 for start, _ in blocks)


# ------------------------------------------------------------------------------ bad files


def _assert_names(err: pytest.ExceptionInfo, path: Path, key: str) -> None:
    message = str(err.value)
    assert str(path) in message and f"'{key}'" in message and "\n" not in message


def test_not_hdf5_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "fake.mat"
    path.write_bytes(b"MATLAB 5.0 MAT-file, not HDF5" + bytes(200))
    with pytest.raises(DataError, match="not an HDF5") as err:
        nyu.read_index(path)
    _assert_names(err, path, "mat")


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        nyu.read_index(tmp_path / "absent.mat")


@pytest.mark.parametrize("key", nyu.REQUIRED_KEYS)
def test_missing_key_is_named(mat: Path, key: str) -> None:
    with h5py.File(mat, "r+") as f:
        del f[key]
    with pytest.raises(DataError, match="missing") as err:
        nyu.read_index(mat)
    _assert_names(err, mat, key)


@pytest.mark.parametrize(
    ("key", "shape"),
    [("depths", (N, W, H + 1)), ("depths", (N - 1, W, H)), ("images", (N, 4, W, H))],
)
def test_wrong_dimensions_are_named(mat: Path, key: str, shape: tuple[int, ...]) -> None:
    with h5py.File(mat, "r+") as f:
        dtype = f[key].dtype
        del f[key]
        f.create_dataset(key, shape, dtype=dtype)
    with pytest.raises(DataError, match="shape") as err:
        nyu.read_index(mat)
    _assert_names(err, mat, key)


def test_string_count_must_match_images(tmp_path: Path) -> None:
    mat = _write(tmp_path / "m.mat")
    other = _write(tmp_path / "short.mat", n=N - 1)
    with h5py.File(other, "r") as src, h5py.File(mat, "r+") as dst:
        del dst["sceneTypes"], dst["#refs#"]
        src.copy(src["#refs#"], dst, "#refs#")
        refs = dst.create_dataset("sceneTypes", (1, N - 1), dtype=h5py.ref_dtype)
        refs[0, :] = [dst["#refs#"][src[r].name.split("/")[-1]].ref for r in src["sceneTypes"][0]]
    with pytest.raises(DataError, match="holds 5 samples") as err:
        nyu.read_index(mat)
    _assert_names(err, mat, "sceneTypes")


def test_unknown_scene_type_names_index_and_value(tmp_path: Path) -> None:
    types = ["kitchen", "kitchen", "office", "garage", "cafe", "study"]
    mat = _write(tmp_path / "m.mat", scene_types=types)
    with pytest.raises(DataError, match="sample 3 is 'garage'") as err:
        nyu.read_index(mat)
    _assert_names(err, mat, "sceneTypes")


# ------------------------------------------------------------------------------ protocols


def test_nyu27_is_the_27_sorted_types_with_the_datas_spelling() -> None:
    names = nyu.class_names("nyu27")
    assert len(names) == 27 and list(names) == sorted(names)
    assert "excercise_room" in names
    labels = nyu.scene_labels(["basement", "study_room", "kitchen"], "nyu27")
    assert labels.tolist() == [0, 26, names.index("kitchen")] and labels.dtype == np.int64


def test_nyu10_maps_the_other_18_types_to_others() -> None:
    names = nyu.class_names("nyu10")
    assert names == (
        "bedroom",
        "kitchen",
        "living_room",
        "bathroom",
        "dining_room",
        "office",
        "home_office",
        "classroom",
        "bookstore",
        "others",
    )
    others = [t for t in nyu.SCENE_TYPES if t not in names]
    assert len(others) == 18
    assert set(nyu.scene_labels(others, "nyu10").tolist()) == {9}
    assert nyu.scene_labels(names[:9], "nyu10").tolist() == list(range(9))


def test_unknown_protocol_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="protocol"):
        nyu.class_names("nyu13")


# ------------------------------------------------------------------------------ grouped split


def _rooms(seed: int = 0) -> tuple[list[str], np.ndarray]:
    """10 classes with 1..7 rooms of 3..8 frames each."""
    rng = np.random.default_rng(seed)
    scenes, labels = [], []
    for label in range(10):
        for room in range(label % 7 + 1):
            size = int(rng.integers(3, 9))
            scenes += [f"room_{label}_{room}"] * size
            labels += [label] * size
    return scenes, np.array(labels)


def test_grouped_split_keeps_rooms_whole_and_classes_on_both_sides() -> None:
    scenes, labels = _rooms()
    is_test = nyu.grouped_split(scenes, labels, seed=3, test_fraction=0.45)
    scenes = np.array(scenes)
    assert not set(scenes[is_test]) & set(scenes[~is_test])
    for label in range(10):
        rooms = set(scenes[labels == label])
        sides = set(is_test[labels == label].tolist())
        assert sides == ({False, True} if len(rooms) >= 2 else {False})
    assert 0.3 < is_test.mean() < 0.65


def test_grouped_split_is_deterministic_per_seed() -> None:
    scenes, labels = _rooms()
    a = nyu.grouped_split(scenes, labels, seed=1, test_fraction=0.45)
    b = nyu.grouped_split(scenes, labels, seed=1, test_fraction=0.45)
    others = [nyu.grouped_split(scenes, labels, seed=s, test_fraction=0.45) for s in range(2, 6)]
    np.testing.assert_array_equal(a, b)
    assert any((a != c).any() for c in others)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_grouped_split_rejects_fractions_outside_0_1(fraction: float) -> None:
    scenes, labels = _rooms()
    with pytest.raises(ConfigError, match="test_fraction"):
        nyu.grouped_split(scenes, labels, seed=0, test_fraction=fraction)


def _one_room_per_class() -> tuple[np.ndarray, np.ndarray]:
    """Three classes of one room each (3, 5 and 4 frames): the per-class rule puts all in train."""
    scenes = np.array(["kitchen_1"] * 3 + ["office_1"] * 5 + ["bedroom_1"] * 4)
    return scenes, np.array([1] * 3 + [5] * 5 + [0] * 4)


@pytest.mark.parametrize("seed", range(4))
def test_grouped_split_of_one_room_classes_moves_whole_rooms_to_test(seed: int) -> None:
    scenes, labels = _one_room_per_class()
    is_test = nyu.grouped_split(scenes, labels, seed=seed, test_fraction=0.45)
    assert is_test.any() and not is_test.all()
    assert not set(scenes[is_test]) & set(scenes[~is_test])


def test_grouped_split_of_one_room_is_a_data_error_saying_what_to_pass() -> None:
    with pytest.raises(DataError, match=r"'scenes'.*1 room.*--splits splits.mat.*more rooms"):
        nyu.grouped_split(["kitchen_1"] * 4, np.zeros(4, dtype=np.int64), seed=0, test_fraction=0.45)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


def test_one_sided_classes_are_named_in_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    classes = nyu.class_names("nyu10")
    scenes, labels = _one_room_per_class()
    assigned = np.where(nyu.grouped_split(scenes, labels, seed=0, test_fraction=0.45), "test", "train")
    nyu.warn_one_sided_classes(assigned, labels, classes)
    expected = [
        f"classes only in the {side} split: {', '.join(classes[i] for i in sorted(set(labels[assigned == side])))}"
        for side in ("train", "test")
    ]
    assert [w.split(";")[0] for w in _warnings(caplog)] == expected

    caplog.clear()  # the per-class rule: only the one-room classes (labels 0 and 7) stay in train
    scenes, labels = _rooms()
    assigned = np.where(nyu.grouped_split(scenes, labels, seed=3, test_fraction=0.45), "test", "train")
    nyu.warn_one_sided_classes(assigned, labels, classes)
    assert _warnings(caplog) == ["classes only in the train split: bedroom, classroom; validation cannot score them"]


# ------------------------------------------------------------------------------ official splits


def _splits_v5(path: Path, train, test) -> Path:
    scipy.io.savemat(path, {"trainNdxs": np.array(train, float)[:, None], "testNdxs": np.array(test, float)[:, None]})
    return path


def test_v5_splits_are_1_based(tmp_path: Path) -> None:
    path = _splits_v5(tmp_path / "splits.mat", [1, 2, 5], [3, 6])
    train, test = nyu.read_splits(path, N)
    assert train.tolist() == [0, 1, 4] and test.tolist() == [2, 5]


def test_hdf5_splits_are_read_too(tmp_path: Path) -> None:
    path = tmp_path / "splits73.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        f["trainNdxs"] = np.array([[1.0, 2.0, 3.0]])  # MATLAB (3, 1) as h5py shows it
        f["testNdxs"] = np.array([[6.0]])
    train, test = nyu.read_splits(path, N)
    assert train.tolist() == [0, 1, 2] and test.tolist() == [5]


def test_samples_in_neither_list_are_left_out(mat: Path, tmp_path: Path) -> None:
    path = _splits_v5(tmp_path / "splits.mat", [1, 2], [4])
    index = nyu.read_index(mat)
    labels = nyu.scene_labels(index.scene_types, "nyu10")
    assigned = nyu.assign_splits(index, labels, splits=path, seed=0, test_fraction=0.5)
    assert assigned.tolist() == ["train", "train", "", "test", "", ""]


@pytest.mark.parametrize(
    ("train", "test", "key", "match"),
    [
        ([1, 2, 7], [3], "trainNdxs", "outside 1..6"),
        ([1, 2], [0], "testNdxs", "outside 1..6"),
        ([1, 2, 3], [3, 4], "trainNdxs", "share 1 indices"),
        ([1.5, 2], [3], "trainNdxs", "non-integer"),
        ([1, 1], [3], "trainNdxs", "repeats"),
    ],
)
def test_bad_split_lists_are_named(tmp_path: Path, train, test, key: str, match: str) -> None:
    path = _splits_v5(tmp_path / "splits.mat", train, test)
    with pytest.raises(DataError, match=match) as err:
        nyu.read_splits(path, N)
    _assert_names(err, path, key)


def test_split_file_without_a_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "splits.mat"
    scipy.io.savemat(path, {"trainNdxs": np.array([[1.0]])})
    with pytest.raises(DataError, match="missing") as err:
        nyu.read_splits(path, N)
    _assert_names(err, path, "testNdxs")


@pytest.mark.parametrize("text", ["trainNdxs = 1:795\n", "not a mat file " * 20])
def test_split_file_that_is_not_a_mat_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "splits.mat"
    path.write_text(text)
    with pytest.raises(DataError, match="not a MATLAB") as err:
        nyu.read_splits(path, N)
    _assert_names(err, path, "splits")
