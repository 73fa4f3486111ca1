"""What `pip install .` (not editable) gives a user: a wheel holding the default search spaces,
which an installed raymc finds from any folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out, source = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("source")
    # Built from a copy of what a clean clone holds: a build/ folder left in the checkout by an
    # earlier build could put modules deleted since into the wheel.
    for name in ("raymc", "tune_spaces"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        check=True,
        timeout=300,
    )
    (built,) = out.glob("raymc-*.whl")
    return built


def test_the_wheel_holds_the_default_search_spaces_and_every_package(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"raymc/tune_spaces/demo_nyu.py", "raymc/tune_spaces/mcresnet_nyu.py"} <= names
    assert "raymc/ray_data_logging.yaml" in names  # Ray Data's workers read it (raymc.quiet)
    packages = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "raymc").rglob("__init__.py")}
    assert {f"{package}/__init__.py" for package in packages} <= names


def test_an_installed_raymc_finds_its_default_space_from_any_folder(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        timeout=300,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = (
        "import raymc; from raymc.tune.space import find_space; print(raymc.__file__); print(find_space('demo_nyu'))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=elsewhere,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    assert all(Path(line).is_relative_to(target) for line in found), found
    assert found[1].endswith("raymc/tune_spaces/demo_nyu.py")
