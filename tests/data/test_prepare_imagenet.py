"""prepare_imagenet and `python -m raymc.prepare imagenet`: Parquet, bad files, atomic output."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import ray
from PIL import Image

from raymc import prepare
from raymc.data import imagenet, imagenet_prepare
from raymc.data.demo import write_demo_imagenet
from raymc.data.imagenet import BadImageError, decode_rgb
from tests.helpers import raymc_stderr

CLASSES, PER_CLASS, VAL_PER_CLASS = 4, 4, 2
INFO_KEYS = {
    "dataset",
    "classes",
    "num_samples",
    "counts",
    "num_source_files",
    "bad_images",
    "max_side",
    "on_bad_image",
    "source",
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo folder with ImageNet's odd files: CMYK, grayscale, PNG, truncated, non-image."""
    out = tmp_path_factory.mktemp("imagenet") / "in"
    return write_demo_imagenet(
        out, classes=CLASSES, per_class=PER_CLASS, val_per_class=VAL_PER_CLASS, image_size=(48, 36)
    )


def _bad_files(folder: Path) -> list[str]:
    """The demo's truncated and non-image files, relative to the folder."""
    bad = []
    for path in sorted(folder.rglob("*.JPEG")):
        try:
            decode_rgb(path.read_bytes(), path=str(path))
        except BadImageError:
            bad.append(path.relative_to(folder).as_posix())
    return bad


def _read(out: Path) -> pd.DataFrame:
    return pd.DataFrame(ray.data.read_parquet(str(out)).take_all()).sort_values(["split", "index"])


def _no_staging_left(out: Path) -> bool:
    return not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_prepare_writes_parquet_that_ray_reads_back(ray_session, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    info = imagenet_prepare.prepare_imagenet(folder, out)

    schema = ray.data.read_parquet(str(out)).schema()
    types = dict(zip(schema.names, schema.types, strict=True))
    assert types == {
        "image": pa.binary(),
        "label": pa.int64(),
        "wnid": pa.string(),
        "path": pa.string(),
        "split": pa.string(),
        "index": pa.int64(),
        "height": pa.int64(),
        "width": pa.int64(),
    }
    df = _read(out)
    index = imagenet.scan_image_folder(folder)
    bad = _bad_files(folder)
    for split in ("train", "val"):
        expected = [
            (Path(r.path).relative_to(folder.resolve()).as_posix(), r.label, r.wnid, r.index)
            for r in index.rows[split]
            if Path(r.path).relative_to(folder.resolve()).as_posix() not in bad
        ]
        rows = df[df["split"] == split]
        columns = (rows["path"], rows["label"], rows["wnid"], rows["index"])
        assert list(zip(*columns, strict=True)) == expected
    assert len(df) == CLASSES * (PER_CLASS + VAL_PER_CLASS) and len(bad) == 2

    for row in df.itertuples():
        stored = Image.open(io.BytesIO(row.image))
        assert (stored.format, stored.mode, stored.size) == ("JPEG", "RGB", (row.width, row.height))
        original = (folder / row.path).read_bytes()
        if Image.open(folder / row.path).mode == "RGB" and original[:2] == b"\xff\xd8":
            assert row.image == original  # plain JPEGs are stored as they are
    converted = [r for r in df.itertuples() if r.image != (folder / r.path).read_bytes()]
    assert len(converted) == 3  # the CMYK, grayscale and PNG samples, now RGB JPEGs

    with open(out / "bad_images.csv", newline="") as f:
        listed = list(csv.DictReader(f))
    assert [r["path"] for r in listed] == bad
    assert "truncated" in listed[0]["reason"].lower() or "truncated" in listed[1]["reason"].lower()
    assert any("not an image" in r["reason"] for r in listed)

    assert json.loads((out / "dataset_info.json").read_text()) == info
    assert set(info) >= INFO_KEYS and info["dataset"] == "imagenet"
    assert info["classes"] == list(index.classes) and info["bad_images"] == 2
    assert info["num_samples"] == len(df) and info["num_source_files"] == len(df) + 2
    assert info["source"] == str(folder.resolve()) and info["max_side"] is None
    for split in ("train", "val"):
        counts = df[df["split"] == split]["wnid"].value_counts()
        assert info["counts"][split] == {w: int(counts.get(w, 0)) for w in index.classes}
    assert _no_staging_left(out)


def test_max_side_scales_images_down(ray_session, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "small"
    info = imagenet_prepare.prepare_imagenet(folder, out, max_side=40)
    df = _read(out)
    assert info["max_side"] == 40 and len(df) == CLASSES * (PER_CLASS + VAL_PER_CLASS)
    assert (np.maximum(df["height"], df["width"]) <= 40).all()
    for row in df.itertuples():
        rgb = decode_rgb(row.image, path=row.path)
        assert rgb.shape == (row.height, row.width, 3)
        source = Image.open(folder / row.path).size
        if max(source) > 40:
            assert max(row.width, row.height) == 40
            assert abs(row.width / row.height - source[0] / source[1]) < 0.1


def test_fail_stops_naming_the_file_and_leaves_out_untouched(
    ray_session, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    with pytest.raises(BadImageError) as e:
        imagenet_prepare.prepare_imagenet(folder, out, on_bad_image="fail")
    assert any(str(folder.resolve() / b) in str(e.value) for b in _bad_files(folder))
    assert not out.exists() and _no_staging_left(out)

    out.mkdir()
    (out / "keep.txt").write_text("old")
    argv = ["imagenet", "--data-dir", str(folder), "--out", str(out), "--on-bad-image", "fail"]
    argv.append("--overwrite")
    assert prepare.main(argv) == 2
    err = raymc_stderr(capsys)
    assert err.startswith("error: ") and err.count("\n") == 1 and "bad image" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and _no_staging_left(out)


def test_cli_accepts_both_spellings(ray_session, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    argv = ["imagenet", "--data_dir", str(folder), "--out", str(out), "--max_side", "44"]
    argv += ["--on_bad_image", "skip"]
    assert prepare.main(argv) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "2 bad files" in printed
    assert json.loads((out / "dataset_info.json").read_text())["max_side"] == 44

    argv = ["imagenet", "--data-dir", str(folder), "--out", str(out), "--max-side", "40"]
    argv.append("--overwrite")
    assert prepare.main(argv) == 0
    assert json.loads((out / "dataset_info.json").read_text())["max_side"] == 40


def test_a_non_empty_out_is_refused_without_overwrite(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    assert prepare.main(["imagenet", "--data-dir", str(folder), "--out", str(out)]) == 2
    err = raymc_stderr(capsys)
    assert err.startswith("error: ") and str(out) in err and "--overwrite" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def _no_val(folder: Path, tmp: Path) -> tuple[Path, str]:
    root = tmp / "noval"
    (root / "train" / "n01").mkdir(parents=True)
    return root / "val", "val/<wnid>/*.JPEG"


def _val_class_not_in_train(folder: Path, tmp: Path) -> tuple[Path, str]:
    root = tmp / "extra"
    for split, wnid in (("train", "n01"), ("val", "n01"), ("val", "n09")):
        (root / split / wnid).mkdir(parents=True)
    return root / "val", "n09"


@pytest.mark.parametrize("make", [_no_val, _val_class_not_in_train])
def test_bad_layout_exits_2_naming_the_folder(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture, make
) -> None:
    bad_dir, detail = make(folder, tmp_path)
    out = tmp_path / "out"
    assert prepare.main(["imagenet", "--data-dir", str(bad_dir.parent), "--out", str(out)]) == 2
    err = raymc_stderr(capsys)
    assert err.startswith("error: ") and err.count("\n") == 1
    assert str(bad_dir.resolve()) in err and detail in err and "'data_dir'" in err
    assert not out.exists()


def test_a_too_small_max_side_exits_2_naming_the_key(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["imagenet", "--data-dir", str(folder), "--out", str(tmp_path / "o"), "--max-side", "8"]
    assert prepare.main(argv) == 2
    assert "'max_side'" in capsys.readouterr().err and not (tmp_path / "o").exists()
