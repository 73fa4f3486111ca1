"""Every bad file gets a clear answer: a truncated or damaged .mat given to raymc.prepare, a corrupt
Parquet shard given to raymc.train. Each is one `error: ` line naming the file and the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import pytest

from raymc import prepare, train
from raymc.data import nyu, nyu_prepare, pipeline
from raymc.data.demo import write_demo_nyu
from tests.helpers import raymc_stderr

N, H, W = 24, 16, 20  # three HDF5 chunks of 8 samples, so three shard tasks


@pytest.fixture(scope="module")
def mat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_nyu(tmp_path_factory.mktemp("bad") / "demo.mat", n=N, height=H, width=W)


def _one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = raymc_stderr(capsys)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def _no_staging_left(out: Path) -> bool:
    return not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


# ------------------------------------------------------------------------------ the .mat


@pytest.mark.parametrize("kept", [0.6, 0.995])  # a download cut early, and one cut just before its end
def test_a_truncated_mat_is_one_line_naming_the_file(
    mat: Path, tmp_path: Path, capsys: pytest.CaptureFixture, kept: float
) -> None:
    data = mat.read_bytes()
    cut = tmp_path / "cut.mat"
    cut.write_bytes(data[: int(len(data) * kept)])
    out = tmp_path / "out"
    assert prepare.main(["nyu", "--mat", str(cut), "--out", str(out)]) == 2
    err = _one_line_error(capsys)
    assert str(cut) in err and "truncated or damaged" in err and "download nyu_depth_v2_labeled.mat again" in err
    assert not out.exists()


def _hole_in_pixels(mat: Path, path: Path) -> Path:
    """The .mat at full length with its second `images` chunk zeroed, as a download that
    preallocates the file and stops leaves it: HDF5 opens it and the index reads, and only the
    shard task reading samples 8..15 meets the damage."""
    with h5py.File(mat, "r") as f:
        chunk = f["images"].id.get_chunk_info(1)  # byte_offset counts from the start of the file
    data = bytearray(mat.read_bytes())
    data[chunk.byte_offset : chunk.byte_offset + chunk.size] = bytes(chunk.size)
    path.write_bytes(bytes(data))
    return path


def test_damaged_pixels_met_in_a_shard_task_are_one_line_and_keep_the_old_out(
    ray_session, mat: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    damaged = _hole_in_pixels(mat, tmp_path / "hole.mat")
    assert nyu.read_index(damaged).num_samples == N
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    assert prepare.main(["nyu", "--mat", str(damaged), "--out", str(out), "--overwrite"]) == 2
    err = _one_line_error(capsys)
    assert str(damaged.resolve()) in err and "samples 8..15" in err and "download" in err
    assert "Traceback" not in err and "ray::" not in err  # the raymc message, not Ray's wrapper
    assert [p.name for p in out.iterdir()] == ["keep.txt"]  # a failed --overwrite keeps the old folder
    assert _no_staging_left(out)


# ------------------------------------------------------------------------------ prepared Parquet shards


@pytest.fixture(scope="module")
def prepared(ray_session, mat: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "nyu"
    nyu_prepare.prepare_nyu(mat, out)
    return out


def test_healthy_shards_pass_the_check(prepared: Path) -> None:
    for split in ("train", "test"):
        pipeline.check_shards(pipeline.DataSource("nyu", str(prepared)), pipeline.split_files(str(prepared), split))


def test_a_corrupt_shard_is_named_before_training_starts(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = Path(shutil.copytree(prepared, tmp_path / "nyu"))
    shard = sorted(folder.glob("train-*.parquet"))[-1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # the footer is gone
    argv = ["--data", str(folder), "--out", str(tmp_path / "runs"), "--epochs", "1", "--batch", "4"]
    assert train.main([*argv, "--image-size", "16"]) == 2
    err = _one_line_error(capsys)
    assert f"{shard}: not a readable Parquet shard" in err
    assert "python -m raymc.prepare nyu ... --overwrite" in err
