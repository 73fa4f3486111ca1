"""The ImageNet ImageFolder reader: labels, layout errors, decoding every kind of file."""

from __future__ import annotations

import io
import logging
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raymc.data import imagenet
from raymc.data.imagenet import BadImageError, decode_batch, decode_rgb, read_image_file
from raymc.errors import ConfigError, DataError

W, H = 32, 24


def _image(mode: str = "RGB", size: tuple[int, int] = (W, H), seed: int = 0) -> Image.Image:
    """A smooth colour image (JPEG keeps it close) converted to `mode`."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    rgb = np.stack([x * 255 // size[0], y * 255 // size[1], np.full_like(x, rng.integers(256))], -1)
    return Image.fromarray(rgb.astype(np.uint8)).convert(mode)


def _encode(img: Image.Image, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _folder(root: Path, train: dict[str, int], val: dict[str, int]) -> Path:
    """An ImageFolder with n small JPEGs per class folder, created in the order given."""
    for split, classes in (("train", train), ("val", val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for wnid, n in classes.items():
            (root / split / wnid).mkdir()
            for i in range(n):
                _write(root / split / wnid / f"{wnid}_{i}.JPEG", _encode(_image(seed=i)))
    return root


# ------------------------------------------------------------------------------ scanning


def test_labels_are_sorted_train_folders_and_val_uses_them(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"n03": 2, "n01": 1, "n02": 2}, {"n02": 1, "n01": 2})
    _write(root / "train" / "n01" / ".DS_Store", b"\0\0\0\1Bud1")  # hidden: not a sample
    _write(root / "train" / "n01" / "notes.txt", b"to do")  # listed: reading reports it
    _write(root / "train" / "n02" / "more" / "n02_9.JPEG", _encode(_image()))  # nested folders
    index = imagenet.scan_image_folder(root)

    assert index.classes == ("n01", "n02", "n03") and index.root == str(root.resolve())
    train = [
        (Path(r.path).relative_to(root / "train").as_posix(), r.label, r.wnid, r.index) for r in index.rows["train"]
    ]
    assert train == [
        ("n01/n01_0.JPEG", 0, "n01", 0),
        ("n01/notes.txt", 0, "n01", 1),
        ("n02/more/n02_9.JPEG", 1, "n02", 2),
        ("n02/n02_0.JPEG", 1, "n02", 3),
        ("n02/n02_1.JPEG", 1, "n02", 4),
        ("n03/n03_0.JPEG", 2, "n03", 5),
        ("n03/n03_1.JPEG", 2, "n03", 6),
    ]
    val = [(Path(r.path).name, r.label, r.index) for r in index.rows["val"]]
    assert val == [("n01_0.JPEG", 0, 0), ("n01_1.JPEG", 0, 1), ("n02_0.JPEG", 1, 2)]


def test_a_val_class_that_train_lacks_fails_naming_it(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"n01": 1, "n02": 1}, {"n01": 1, "n07": 1})
    with pytest.raises(DataError, match="n07") as e:
        imagenet.scan_image_folder(root)
    assert str(root.resolve() / "val") in str(e.value) and "train" in str(e.value)


@pytest.mark.parametrize("missing", ["train", "val"])
def test_a_missing_split_folder_names_the_path_and_layout(tmp_path: Path, missing: str) -> None:
    root = _folder(tmp_path, {"n01": 1}, {"n01": 1})
    shutil.rmtree(root / missing)
    with pytest.raises(DataError) as e:
        imagenet.scan_image_folder(root)
    assert str(root.resolve() / missing) in str(e.value) and "train/<wnid>/*.JPEG" in str(e.value)


def test_a_flat_val_folder_asks_for_class_folders(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"n01": 1}, {})
    _write(root / "val" / "ILSVRC2012_val_00000001.JPEG", _encode(_image()))
    with pytest.raises(DataError, match="no class folders, 1 loose file.*valprep"):
        imagenet.scan_image_folder(root)


# ------------------------------------------------------------------------------ decoding


@pytest.mark.parametrize("name", ["a.jpg", "b.JPG", "c.Jpeg", "d.JPEG", "e.png", "f.PNG"])
def test_image_extensions_in_any_case_are_read(tmp_path: Path, name: str) -> None:
    fmt = "PNG" if name.lower().endswith(".png") else "JPEG"
    path = _write(tmp_path / name, _encode(_image(), fmt))
    rgb = decode_rgb(read_image_file(str(path)), path=str(path))
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8


def test_a_non_image_extension_is_reported_without_reading(tmp_path: Path) -> None:
    path = _write(tmp_path / "notes.txt", _encode(_image()))  # even a JPEG inside is not read
    with pytest.raises(BadImageError, match=r"notes\.txt.*not an image file: extension '\.txt'"):
        read_image_file(str(path))


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("CMYK", "JPEG"),
        ("L", "JPEG"),
        ("RGB", "PNG"),
        ("LA", "PNG"),
        ("RGBA", "PNG"),
        ("P", "PNG"),
        ("1", "PNG"),
    ],
)
def test_every_mode_decodes_to_rgb(mode: str, fmt: str) -> None:
    data = _encode(_image(mode), fmt)
    rgb = decode_rgb(data, path=f"x/{mode}.JPEG")  # the name says JPEG; the content decides
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    expected = np.asarray(_image(mode).convert("RGB"), dtype=np.int16)
    assert np.abs(rgb.astype(np.int16) - expected).mean() < 3


def test_sixteen_bit_grayscale_is_scaled_not_clipped() -> None:
    gray = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    rgb = decode_rgb(_encode(Image.fromarray(gray), "PNG"), path="x.png")
    assert rgb[0, :, 0].tolist() == [0, 1, 128, 255] and (rgb[..., 0] == rgb[..., 2]).all()


def test_a_plain_jpeg_decodes_like_pil() -> None:
    data = _encode(_image(size=(40, 24)))
    rgb = decode_rgb(data, path="x.JPEG")
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)
    assert rgb.shape == (24, 40, 3) and rgb.flags.c_contiguous
    assert np.abs(rgb.astype(np.int16) - expected).max() <= 2


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (_encode(_image())[:300], "(?i)cannot decode: .*truncated"),
        (_encode(_image(size=(64, 48)))[:-40], "(?i)cannot decode: .*truncated"),
        (_encode(_image("CMYK"))[:-40], "(?i)cannot decode: .*truncated"),
        (_encode(_image(), "PNG")[:-30], "(?i)cannot decode: .*truncated"),
        (b"<html><body>404 Not Found</body></html>", "not an image: unrecognised content"),
        (b"", "not an image: unrecognised content"),
    ],
    ids=["jpeg-header-only", "jpeg-cut", "cmyk-cut", "png-cut", "html", "empty"],
)
def test_bad_data_raises_bad_image_error_naming_path_and_reason(data: bytes, reason: str) -> None:
    with pytest.raises(BadImageError, match=reason) as e:
        decode_rgb(data, path="train/n01/broken.JPEG")
    assert str(e.value).startswith("train/n01/broken.JPEG: bad image")
    assert "--on-bad-image skip" in str(e.value)
    assert isinstance(e.value, DataError)
    copy = pickle.loads(pickle.dumps(e.value))  # crosses Ray task boundaries intact
    assert (copy.path, copy.reason, str(copy)) == (e.value.path, e.value.reason, str(e.value))


def test_draft_decodes_large_jpegs_smaller_keeping_the_shorter_side() -> None:
    data = _encode(_image(size=(256, 192)))
    small = decode_rgb(data, path="x.JPEG", draft_size=64)  # 192 // 64 = 3 -> scale 1/2
    assert small.shape == (96, 128, 3)
    smallest = decode_rgb(data, path="x.JPEG", draft_size=24)  # 1/8 keeps 24
    assert smallest.shape == (24, 32, 3)
    assert decode_rgb(data, path="x.JPEG", draft_size=100).shape == (192, 256, 3)  # < 2x: full
    png = _encode(_image(size=(256, 192)), "PNG")
    assert decode_rgb(png, path="x.png", draft_size=64).shape == (192, 256, 3)


# ------------------------------------------------------------------------------ decode_batch


def _batch(images: list[bytes]) -> dict[str, np.ndarray]:
    column = np.empty(len(images), dtype=object)
    column[:] = images
    return {
        "image": column,
        "label": np.arange(len(images)) + 10,
        "index": np.arange(len(images)) + 100,
        "path": np.array([f"train/n/{i}.JPEG" for i in range(len(images))], dtype=object),
    }


def test_decode_batch_leaves_bad_rows_out_under_skip(caplog: pytest.LogCaptureFixture) -> None:
    good = _encode(_image())
    batch = _batch([good, good[:200], _encode(_image("L")), b"not an image"])
    with caplog.at_level(logging.WARNING, logger="raymc.data.imagenet"):
        out = decode_batch(batch)
    assert out["label"].tolist() == [10, 12] and out["index"].tolist() == [100, 102]
    assert out["label"].dtype == out["index"].dtype == np.int64
    assert out["rgb"].dtype == object and len(out["rgb"]) == 2  # equal sizes stay one array each
    assert all(a.shape == (H, W, 3) and a.dtype == np.uint8 for a in out["rgb"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "train/n/1.JPEG" in warnings[0] and "truncated" in warnings[0].lower()
    assert "train/n/3.JPEG" in warnings[1] and "not an image" in warnings[1]


def test_decode_batch_raises_under_fail() -> None:
    batch = _batch([_encode(_image()), _encode(_image())[:200]])
    with pytest.raises(BadImageError, match="train/n/1.JPEG"):
        decode_batch(batch, on_bad_image="fail")
    with pytest.raises(ConfigError, match="'on_bad_image'.*skip, fail"):
        decode_batch(batch, on_bad_image="ignore")


def test_decode_batch_reads_paths_and_drafts(tmp_path: Path) -> None:
    big = _write(tmp_path / "big.JPEG", _encode(_image(size=(256, 192))))
    notes = _write(tmp_path / "notes.txt", b"hello")
    batch = {
        "path": np.array([str(big), str(notes)], dtype=object),
        "label": np.array([1, 2]),
        "index": np.array([5, 6]),
    }
    out = decode_batch(batch, draft_size=64)
    assert out["label"].tolist() == [1] and out["rgb"][0].shape == (96, 128, 3)
    with pytest.raises(BadImageError, match="notes.txt"):
        decode_batch(batch, on_bad_image="fail")


def test_image_folder_dataset_decodes_in_ray(ray_session, tmp_path: Path) -> None:
    root = _folder(tmp_path, {"n02": 2, "n01": 3}, {"n01": 1})
    _write(root / "train" / "n02" / "cut.JPEG", _encode(_image())[:200])
    index = imagenet.scan_image_folder(root)

    ds = imagenet.image_folder_dataset(index, "train")
    rows = sorted(ds.take_all(), key=lambda r: r["index"])
    expected = [
        {"path": r.path, "label": r.label, "wnid": r.wnid, "index": r.index, "split": "train"}
        for r in index.rows["train"]
    ]
    assert rows == expected
    decoded = ds.map_batches(decode_batch, batch_format="numpy", batch_size=2).take_all()
    assert sorted(r["index"] for r in decoded) == [0, 1, 2, 4, 5]  # 3 is cut.JPEG
    assert all(r["rgb"].shape == (H, W, 3) for r in decoded)
    with pytest.raises(ConfigError, match="'split'"):
        imagenet.image_folder_dataset(index, "test")
