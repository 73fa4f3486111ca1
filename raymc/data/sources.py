"""Turn `--data` into a prepared Parquet folder: the cached demo set, a .mat prepared once, or as given."""

from __future__ import annotations

import os
from pathlib import Path

from raymc.config import TrainConfig
from raymc.data.demo import write_demo_nyu
from raymc.data.nyu import prepared_nyu_cache
from raymc.errors import DataError

DEMO_NYU_SAMPLES = 480
DEMO_NYU_SEED = 0


def cache_root() -> Path:
    """Where raymc keeps made and prepared data: $RAYMC_CACHE or ~/.cache/raymc."""
    return Path(os.environ.get("RAYMC_CACHE", Path.home() / ".cache" / "raymc")).expanduser()


def demo_nyu_mat() -> Path:
    """The demo NYU .mat file, written once (atomically, so an interrupted write is not reused)."""
    path = cache_root() / "demo" / f"nyu_demo_n{DEMO_NYU_SAMPLES}_seed{DEMO_NYU_SEED}.mat"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".partial-{os.getpid()}")
        write_demo_nyu(partial, n=DEMO_NYU_SAMPLES, seed=DEMO_NYU_SEED)
        os.replace(partial, path)
    return path


def resolve_data(config: TrainConfig) -> str:
    """The prepared folder (local path or URI) that training reads for this config."""
    if config.data is None:
        return str(prepared_nyu_cache(demo_nyu_mat(), protocol=config.protocol, seed=config.seed, cache_dir=cache_root()))
    if "://" in config.data:
        return config.data
    path = Path(config.data).expanduser()
    if not path.exists():
        raise DataError(f"--data {config.data}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() != ".mat":
            raise DataError(f"--data {config.data}: expected an NYU .mat file or a prepared Parquet folder")
        splits = Path(config.splits).expanduser() if config.splits else None
        return str(prepared_nyu_cache(path, splits=splits, protocol=config.protocol, seed=config.seed, cache_dir=cache_root()))
    if config.splits:
        raise DataError(f"--splits applies to a .mat file; {config.data} is already prepared (its split is fixed)")
    return str(path.resolve())
