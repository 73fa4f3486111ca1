"""Every bad file gets a clear answer: a truncated or damaged .mat given to raymc.prepare, a corrupt
Parquet shard (footer or data pages) given to raymc.train. Each is one `error: ` line naming the
file and the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raymc import prepare, train
from raymc.data import nyu, nyu_prepare, pipeline, shards
from raymc.data.demo import write_demo_nyu
from raymc.evaluate import main as evaluate_main
from raymc.predict import main as predict_main
from tests.helpers import model_payload, raymc_stderr

N, H, W = 40, 16, 20  # five HDF5 chunks of 8 samples, so five shard tasks


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


def test_healthy_shards_pass_the_checks(prepared: Path) -> None:
    files = [file for split in ("train", "test") for file in pipeline.split_files(str(prepared), split)]
    shards.check_shards("nyu", files)
    assert shards.damaged_shard("nyu", files) is None


def test_shards_written_before_page_checksums_still_read(tmp_path: Path) -> None:
    """Folders prepared by an older raymc have no page checksums: nothing to verify, nothing refused."""
    old = tmp_path / "train-00000.parquet"
    pq.write_table(pa.table({"label": [0, 1], "index": [0, 1]}), old)
    assert pq.ParquetFile(old).metadata.num_rows == 2
    shards.check_shards("nyu", [str(old)])
    assert shards.damaged_shard("nyu", [str(old)]) is None


def _damaged_pages(shard: Path) -> None:
    """Flip bytes inside the shard's first data page: the footer still reads, as does every byte."""
    data = bytearray(shard.read_bytes())
    first_page = pq.read_metadata(shard).row_group(0).column(0).data_page_offset
    for offset in range(first_page + 64, first_page + 96):
        data[offset] ^= 0xFF
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize("which", [0, 1])  # Ray reads the first and last on the driver; the middle one in training
def test_damaged_pages_are_named_after_the_read_fails(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture, which: int
) -> None:
    """Without page checksums pyarrow would hand back the flipped bytes as pixels, silently."""
    folder = Path(shutil.copytree(prepared, tmp_path / "nyu"))
    shard = sorted(folder.glob("train-*.parquet"))[which]
    _damaged_pages(shard)
    pq.read_metadata(shard)  # the footer check cannot see it
    argv = ["--data", str(folder), "--out", str(tmp_path / "runs"), "--epochs", "1", "--batch", "4"]
    assert train.main([*argv, "--image-size", "16"]) == 2
    err = _one_line_error(capsys)
    assert f"{shard}: damaged Parquet shard" in err and "checksum" in err
    assert "python -m raymc.prepare nyu ... --overwrite" in err


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


def test_damaged_pages_are_named_by_evaluate_and_predict(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The middle training shard, which Ray reads only once the model scores it (on the driver)."""
    folder = Path(shutil.copytree(prepared, tmp_path / "nyu"))
    shard = sorted(folder.glob("train-*.parquet"))[1]
    _damaged_pages(shard)
    classes = json.loads((folder / "dataset_info.json").read_text())["classes"]
    torch.save(model_payload(classes=classes, image_size=16), tmp_path / "best_model.pt")
    data = ["--checkpoint", str(tmp_path / "best_model.pt"), "--data", str(folder), "--split", "train"]
    assert evaluate_main(data) == 2
    assert f"{shard}: damaged Parquet shard" in _one_line_error(capsys)
    out = tmp_path / "predictions.parquet"
    assert predict_main([*data, "--out", str(out)]) == 2
    assert f"{shard}: damaged Parquet shard" in _one_line_error(capsys)
    assert not out.exists()
