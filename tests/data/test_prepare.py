"""prepare_nyu and the `python -m raymc.prepare` CLI: Parquet output, dataset_info, bad inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import scipy.io

from raymc import prepare
from raymc.data import nyu, nyu_prepare
from raymc.data.demo import write_demo_nyu, write_nyu_mat
from raymc.data.pipeline import read_dataset_info, split_files
from raymc.errors import DataError
from tests.helpers import raymc_stderr

N, H, W = 80, 24, 32  # enough rooms that grouped classes have >= 2
INFO_KEYS = {
    "dataset",
    "protocol",
    "classes",
    "num_samples",
    "image_height",
    "image_width",
    "counts",
    "depth_mean",
    "depth_std",
    "invalid_depth_pixels",
    "split_source",
    "seed",
    "source",
}


@pytest.fixture(scope="module")
def mat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_nyu(tmp_path_factory.mktemp("nyu") / "demo.mat", n=N, height=H, width=W)


def _read_with_pyarrow(out: Path) -> pa.Table:
    """Plain pyarrow, as pandas users read it (Ray's import registers the tensor type)."""
    return pq.read_table(out, ignore_prefixes=["dataset_info", "."])


def _no_staging_left(out: Path) -> bool:
    return not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


# ------------------------------------------------------------------------------ output


def test_prepare_writes_parquet_that_ray_reads_back(ray_session, mat: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    info = nyu_prepare.prepare_nyu(mat, out, seed=2, test_fraction=0.4)

    ds = ray.data.read_parquet(str(out))
    schema = dict(zip(ds.schema().names, ds.schema().types, strict=True))
    assert set(schema) == {"rgb", "depth", "label", "scene_type", "scene", "split", "index"}
    assert schema["label"] == schema["index"] == pa.int64()
    assert schema["scene"] == schema["split"] == pa.string()
    df = pd.DataFrame(ds.take_all()).sort_values("index")
    row = df.iloc[0]
    assert row["rgb"].shape == (H, W, 3) and row["rgb"].dtype == np.uint8
    assert row["depth"].shape == (H, W) and row["depth"].dtype == np.float32
    assert df["index"].tolist() == list(range(N)) and set(df["split"]) == {"train", "test"}

    index = nyu.read_index(mat)
    assert df["scene"].tolist() == list(index.scenes)
    assert df["label"].tolist() == nyu.scene_labels(index.scene_types, "nyu10").tolist()
    assert df.groupby("scene")["split"].nunique().max() == 1  # no room on both sides
    with nyu.open_mat(mat) as f:
        rgb, depth, _ = nyu.read_block(f, 0, N)
    np.testing.assert_array_equal(np.stack(df["rgb"].to_numpy()), rgb)
    np.testing.assert_array_equal(np.stack(df["depth"].to_numpy()), depth)

    assert json.loads((out / "dataset_info.json").read_text()) == info
    assert set(info) >= INFO_KEYS

    # each shard holds one split, so a pass over one split reads none of the other's bytes
    for split in ("train", "test"):
        files = split_files(str(out), split)
        assert files and all(Path(f).name.startswith(f"{split}-") for f in files)
        assert set(pq.read_table(files, columns=["split"])["split"].to_pylist()) == {split}
    assert len(list(out.glob("*.parquet"))) == len(split_files(str(out), "train")) + len(split_files(str(out), "test"))
    assert info["split_source"] == "grouped" and info["seed"] == 2
    assert (info["num_samples"], info["image_height"], info["image_width"]) == (N, H, W)
    assert info["classes"] == list(nyu.PROTOCOLS["nyu10"])
    for split in ("train", "test"):
        expected = df[df["split"] == split]["label"].value_counts()
        assert info["counts"][split] == {name: int(expected.get(i, 0)) for i, name in enumerate(info["classes"])}
    train = np.stack(df[df["split"] == "train"]["depth"].to_numpy())
    valid = train[train > 0].astype(np.float64)
    assert info["depth_mean"] == pytest.approx(valid.mean(), rel=1e-9)
    assert info["depth_std"] == pytest.approx(valid.std(), rel=1e-6)
    with h5py.File(mat, "r") as f:
        assert info["invalid_depth_pixels"] == np.isnan(f["depths"][()]).sum() > 0
    assert _no_staging_left(out)


def test_cli_official_splits_leave_samples_out(
    ray_session, mat: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    splits = tmp_path / "splits.mat"
    train, test = np.arange(1, 41), np.arange(51, 71)  # 41..50 and 71..80 in neither list
    scipy.io.savemat(splits, {"trainNdxs": train[:, None] * 1.0, "testNdxs": test[:, None] * 1.0})
    out = tmp_path / "official"
    argv = [
        "nyu",
        "--mat",
        str(mat),
        "--splits",
        str(splits),
        "--out",
        str(out),
        "--protocol",
        "nyu27",
        "--image_size",
        "12",
    ]
    assert prepare.main(argv) == 0
    assert str(out) in capsys.readouterr().out

    table = _read_with_pyarrow(out)
    df = table.select(["split", "index"]).to_pandas()
    assert sorted(df[df["split"] == "train"]["index"]) == (train - 1).tolist()
    assert sorted(df[df["split"] == "test"]["index"]) == (test - 1).tolist()
    assert table["rgb"].chunk(0).to_numpy().shape[1:] == (12, 16, 3)
    assert table["depth"].chunk(0).to_numpy().shape[1:] == (12, 16)
    info = read_dataset_info(str(out))
    assert info["split_source"] == "official" and info["protocol"] == "nyu27"
    assert info["num_samples"] == 60 and len(info["counts"]["test"]) == 27
    assert (info["image_height"], info["image_width"]) == (12, 16)


def test_overwrite_replaces_only_when_asked(
    ray_session, mat: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    assert prepare.main(["nyu", "--mat", str(mat), "--out", str(out)]) == 2
    err = raymc_stderr(capsys)
    assert err.startswith("error: ") and err.count("\n") == 1
    assert str(out) in err and "'out'" in err and "--overwrite" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    assert prepare.main(["nyu", "--mat", str(mat), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "dataset_info.json").is_file()
    assert _no_staging_left(out)


def test_a_failed_run_leaves_out_untouched(
    ray_session, mat: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")

    def fail(folder: Path, info: dict) -> None:
        raise DataError(f"{folder}: disk full (key 'out'); free space")

    monkeypatch.setattr(nyu_prepare, "write_info", fail)
    with pytest.raises(DataError, match="disk full"):
        nyu_prepare.prepare_nyu(mat, out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert _no_staging_left(out)


# ------------------------------------------------------------------------------ rooms too few to split by class


def _mat_of_rooms(path: Path, rooms: list[tuple[str, str, int]]) -> Path:
    """A tiny .mat of (scene type, room id, frames) runs of frames."""
    scene_types = [t for t, _, frames in rooms for _ in range(frames)]
    scenes = [room for _, room, frames in rooms for _ in range(frames)]
    rng = np.random.default_rng(0)
    n = len(scenes)
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    depths = rng.uniform(0.5, 5.0, (n, 8, 8)).astype(np.float32)
    return write_nyu_mat(path, images=images, depths=depths, scene_types=scene_types, scenes=scenes)


def test_one_room_per_class_still_gets_a_test_split_and_a_warning(
    ray_session, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rooms = [("kitchen", "kitchen_0001", 3), ("office", "office_0002", 5), ("bedroom", "bedroom_0003", 4)]
    out = tmp_path / "out"
    info = nyu_prepare.prepare_nyu(_mat_of_rooms(tmp_path / "rooms.mat", rooms), out, seed=0)
    assert read_dataset_info(str(out)) == info
    train, test = (sum(info["counts"][split].values()) for split in ("train", "test"))
    assert train > 0 and test > 0 and train + test == 12 and split_files(str(out), "test")
    df = _read_with_pyarrow(out).select(["scene", "split"]).to_pandas()
    assert df.groupby("scene")["split"].nunique().max() == 1  # whole rooms moved, none on both sides
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    for split in ("train", "test"):
        named = [name for name, count in info["counts"][split].items() if count]
        assert any(w.startswith(f"classes only in the {split} split: {', '.join(named)};") for w in warnings)


def test_one_room_cannot_be_split_and_says_what_to_pass(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    mat = _mat_of_rooms(tmp_path / "one_room.mat", [("kitchen", "kitchen_0001", 4)])
    out = tmp_path / "out"
    assert prepare.main(["nyu", "--mat", str(mat), "--out", str(out)]) == 2
    err = raymc_stderr(capsys)
    assert err.startswith("error: ") and err.count("\n") == 1
    assert str(mat) in err and "--splits splits.mat" in err and "more rooms" in err
    assert not out.exists()


# ------------------------------------------------------------------------------ bad inputs


def _copy(mat: Path, path: Path) -> Path:
    path.write_bytes(mat.read_bytes())
    return path


def _not_hdf5(mat: Path, tmp: Path) -> tuple[list[str], Path, str]:
    path = tmp / "fake.mat"
    path.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(300))
    return ["--mat", str(path)], path, "mat"


def _missing_key(mat: Path, tmp: Path) -> tuple[list[str], Path, str]:
    path = _copy(mat, tmp / "nokey.mat")
    with h5py.File(path, "r+") as f:
        del f["depths"]
    return ["--mat", str(path)], path, "depths"


def _wrong_dims(mat: Path, tmp: Path) -> tuple[list[str], Path, str]:
    path = _copy(mat, tmp / "dims.mat")
    with h5py.File(path, "r+") as f:
        del f["depths"]
        f.create_dataset("depths", (N, W, H + 2), dtype=np.float32)
    return ["--mat", str(path)], path, "depths"


def _unknown_scene_type(mat: Path, tmp: Path) -> tuple[list[str], Path, str]:
    path = _copy(mat, tmp / "scene.mat")
    with h5py.File(path, "r+") as f:
        chars = f[f["sceneTypes"][0, 7]]
        chars[...] = ord("x")  # same length, e.g. 'kitchen' -> 'xxxxxxx'
    return ["--mat", str(path)], path, "sceneTypes"


def _splits_out_of_range(mat: Path, tmp: Path) -> tuple[list[str], Path, str]:
    path = tmp / "splits.mat"
    scipy.io.savemat(path, {"trainNdxs": np.array([[1.0], [2.0]]), "testNdxs": np.array([[N + 1.0]])})
    return ["--mat", str(mat), "--splits", str(path)], path, "testNdxs"


@pytest.mark.parametrize("make", [_not_hdf5, _missing_key, _wrong_dims, _unknown_scene_type, _splits_out_of_range])
def test_bad_input_exits_2_naming_file_and_key(
    ray_session, mat: Path, tmp_path: Path, capsys: pytest.CaptureFixture, make
) -> None:
    flags, bad_file, key = make(mat, tmp_path)
    out = tmp_path / "out"
    assert prepare.main(["nyu", *flags, "--out", str(out)]) == 2
    err = raymc_stderr(capsys)
    assert err.startswith("error: ") and err.count("\n") == 1
    assert str(bad_file) in err and f"'{key}'" in err
    assert not out.exists() and _no_staging_left(out)


def test_bad_input_leaves_an_existing_out_unchanged(ray_session, mat: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    flags, _, _ = _missing_key(mat, tmp_path)
    assert prepare.main(["nyu", *flags, "--out", str(out), "--overwrite"]) == 2
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


# ------------------------------------------------------------------------------ cache


def test_cache_prepares_once_and_tracks_the_file(
    ray_session, mat: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _copy(mat, tmp_path / "source.mat")
    cache = tmp_path / "cache"
    first = nyu_prepare.prepared_nyu_cache(source, seed=1, cache_dir=cache)
    assert first.parent.parent == tmp_path / "cache" and read_dataset_info(str(first))["seed"] == 1

    def refuse(*args, **kwargs) -> dict:
        raise AssertionError("prepared again although the cache is valid")

    monkeypatch.setattr(nyu_prepare, "prepare_nyu", refuse)
    assert nyu_prepare.prepared_nyu_cache(source, seed=1, cache_dir=cache) == first
    with pytest.MonkeyPatch.context() as patch:  # a cache written in another layout is not reused
        patch.setattr(nyu_prepare, "PREPARED_LAYOUT", nyu_prepare.PREPARED_LAYOUT + 1)
        with pytest.raises(AssertionError, match="prepared again"):
            nyu_prepare.prepared_nyu_cache(source, seed=1, cache_dir=cache)
    os.utime(source, ns=(0, 0))  # a changed file needs a new entry
    with pytest.raises(AssertionError, match="prepared again"):
        nyu_prepare.prepared_nyu_cache(source, seed=1, cache_dir=cache)
    with pytest.raises(AssertionError, match="prepared again"):
        nyu_prepare.prepared_nyu_cache(source, seed=1, protocol="nyu27", cache_dir=tmp_path / "other")


# ------------------------------------------------------------------------------ CLI


@pytest.mark.parametrize("spelling", ["--test-fraction", "--test_fraction"])
def test_flags_accept_dashes_and_underscores(spelling: str) -> None:
    args = prepare.get_args_parser().parse_args(
        ["nyu", "--mat", "a.mat", "--out", "o", spelling, "0.3", "--image-size", "64"]
    )
    assert args.test_fraction == 0.3 and args.image_size == 64 and args.func is not None


def test_cli_writes_a_demo_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "demo.mat"
    argv = ["demo-nyu", "--out", str(path), "--n", "12", "--height", "16", "--width", "20"]
    assert prepare.main(argv) == 0
    assert str(path) in capsys.readouterr().out
    index = nyu.read_index(path)
    assert (index.num_samples, index.height, index.width) == (12, 16, 20)


def test_cli_reports_a_bad_demo_size(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert prepare.main(["demo-nyu", "--out", str(tmp_path / "d.mat"), "--n", "0"]) == 2
    assert raymc_stderr(capsys).startswith("error: ")
