"""Tiny demo NYU data prepared once for every integration test (real .mat layout, real preparation)."""

from __future__ import annotations

import pytest

from raymc.data.demo import write_demo_nyu
from raymc.data.nyu_prepare import prepare_nyu


@pytest.fixture(scope="session")
def tiny_nyu(tmp_path_factory, ray_session) -> str:
    """A prepared Parquet folder of 96 demo frames at 48 x 64 pixels."""
    root = tmp_path_factory.mktemp("tiny_nyu")
    mat = write_demo_nyu(root / "nyu_tiny.mat", n=96, seed=1, height=48, width=64)
    prepare_nyu(mat, root / "prepared", seed=1)
    return str(root / "prepared")
