"""The demo ImageNet folder: layout, ImageNet's odd files, determinism, a learnable class cue."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from raymc import prepare
from raymc.data.demo import write_demo_imagenet
from raymc.data.imagenet import decode_rgb, scan_image_folder
from raymc.errors import ConfigError

CLASSES, PER_CLASS, VAL_PER_CLASS, SIZE = 6, 5, 3, (40, 30)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "imagenet"
    return write_demo_imagenet(out, classes=CLASSES, per_class=PER_CLASS, val_per_class=VAL_PER_CLASS, image_size=SIZE)


def _kind(path: Path) -> str:
    """What a file really is, by content."""
    data = path.read_bytes()
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    try:
        with Image.open(path) as img:
            img.load()
            return f"jpeg-{img.mode}" if img.format == "JPEG" else img.format
    except UnidentifiedImageError:
        return "not-an-image"
    except OSError:
        return "truncated"


def test_layout_is_an_image_folder_of_wnids(demo: Path) -> None:
    train = sorted(p.name for p in (demo / "train").iterdir())
    assert train == sorted(p.name for p in (demo / "val").iterdir()) and len(train) == CLASSES
    assert all(re.fullmatch(r"n\d{8}", wnid) for wnid in train)
    for wnid in train:
        names = [p.name for p in (demo / "train" / wnid).iterdir()]
        assert all(re.fullmatch(rf"{wnid}_\d+\.JPEG", n) for n in names)
        assert PER_CLASS <= len(names) <= PER_CLASS + 1  # + the truncated or non-image file
        val = [p.name for p in (demo / "val" / wnid).iterdir()]
        assert len(val) == VAL_PER_CLASS
        assert all(re.fullmatch(r"ILSVRC2012_val_\d{8}\.JPEG", n) for n in val)
    assert len(list((demo / "train").rglob("*.JPEG"))) == CLASSES * PER_CLASS + 2


def test_train_holds_each_odd_file_once_and_val_none(demo: Path) -> None:
    kinds = [_kind(p) for p in sorted((demo / "train").rglob("*.JPEG"))]
    odd = sorted(k for k in kinds if k != "jpeg-RGB")
    assert odd == ["jpeg-CMYK", "jpeg-L", "not-an-image", "png", "truncated"]
    assert {_kind(p) for p in (demo / "val").rglob("*.JPEG")} == {"jpeg-RGB"}


def test_odd_but_valid_files_are_usable_samples_of_their_class(demo: Path) -> None:
    """CMYK, grayscale and PNG samples decode to RGB showing their class's stripe direction."""
    index = scan_image_folder(demo)
    for row in index.rows["train"]:
        if _kind(Path(row.path)) in ("jpeg-CMYK", "jpeg-L", "png"):
            rgb = decode_rgb(Path(row.path).read_bytes(), path=row.path)
            assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8
            assert _vertical_stripes(rgb) == (row.label % 2 == 1)


def _vertical_stripes(rgb: np.ndarray) -> bool:
    """Stripes running top to bottom change along the width, not the height."""
    gray = rgb.astype(np.float64).mean(axis=2)
    return np.abs(np.diff(gray, axis=1)).mean() > np.abs(np.diff(gray, axis=0)).mean()


def _features(rgb: np.ndarray) -> np.ndarray:
    """Brightness-free colour (chromaticity) and stripe direction: what jitter leaves intact."""
    pixels = rgb.reshape(-1, 3).astype(np.float64)
    chroma = (pixels / (pixels.sum(axis=1, keepdims=True) + 1)).mean(axis=0)
    return np.append(chroma, float(_vertical_stripes(rgb))) * 10


def test_classes_are_learnable_from_colour_and_stripes(demo: Path) -> None:
    """A nearest-centroid classifier on two simple cues gets the val set right."""
    index = scan_image_folder(demo)
    feats = {}
    for split in ("train", "val"):
        rows = [r for r in index.rows[split] if _kind(Path(r.path)) == "jpeg-RGB"]
        x = np.stack([_features(decode_rgb(Path(r.path).read_bytes(), path=r.path)) for r in rows])
        feats[split] = x, np.array([r.label for r in rows])
    x, y = feats["train"]
    centroids = np.stack([x[y == c].mean(axis=0) for c in range(CLASSES)])
    val_x, val_y = feats["val"]
    predicted = np.linalg.norm(val_x[:, None] - centroids[None], axis=2).argmin(axis=1)
    assert (predicted == val_y).mean() == 1.0


def test_sizes_vary_around_image_size(demo: Path) -> None:
    sizes = np.array([Image.open(p).size for p in (demo / "val").rglob("*.JPEG")])
    low, high = np.floor(np.array(SIZE) * 0.8), np.ceil(np.array(SIZE) * 1.2)
    assert (sizes >= low).all() and (sizes <= high).all()
    assert len({tuple(s) for s in sizes}) > 1


def _files(folder: Path) -> dict[str, bytes]:
    files = (p for p in folder.rglob("*") if p.is_file())
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in files}


def test_the_same_seed_gives_the_same_bytes(demo: Path, tmp_path: Path) -> None:
    kwargs = {"classes": CLASSES, "per_class": PER_CLASS, "val_per_class": VAL_PER_CLASS}
    kwargs["image_size"] = SIZE
    again = write_demo_imagenet(tmp_path / "again", **kwargs)
    assert _files(again) == _files(demo)
    other = write_demo_imagenet(tmp_path / "other", seed=1, **kwargs)
    assert set(_files(other)) != set(_files(demo))


def test_cli_writes_the_demo_with_either_spelling(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dashed = ["--classes", "3", "--per-class", "2", "--val-per-class", "1", "--seed", "4"]
    underscored = ["--classes", "3", "--per_class", "2", "--val_per_class", "1", "--seed", "4"]
    assert prepare.main(["demo-imagenet", "--out", str(tmp_path / "a"), *dashed]) == 0
    assert str(tmp_path / "a") in capsys.readouterr().out
    assert prepare.main(["demo-imagenet", "--out", str(tmp_path / "b"), *underscored]) == 0
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert len(_files(tmp_path / "a")) == 3 * 2 + 2 + 3 * 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"classes": 0},
        {"per_class": 0},
        {"classes": 1, "per_class": 2},
        {"image_size": (8, 8)},
        {"quality": 0},
    ],
)
def test_sizes_too_small_are_refused(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ConfigError, match="'"):
        write_demo_imagenet(tmp_path / "demo", **kwargs)
