"""Turn `--data` into something the pipeline reads: a prepared Parquet folder or an ImageFolder tree.

The demo NYU set is made once and a .mat file is prepared once, both into the cache; prepared
folders and ImageFolder trees are read where they are.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from raymc import storage
from raymc.cluster import alive_nodes, check_shared_paths
from raymc.config import TrainConfig
from raymc.data.demo import write_demo_nyu
from raymc.data.imagenet import scan_image_folder
from raymc.data.nyu_prepare import prepared_nyu_cache
from raymc.data.pipeline import DataSource, read_dataset_info
from raymc.data.publish import INFO_FILE, MARKER_FILE
from raymc.errors import ConfigError, DataError
from raymc.models import family_for_streams, model_family
from raymc.pretrained import locate

DEMO_NYU_SAMPLES = 480
DEMO_NYU_SEED = 0
DEFAULT_MODELS = {"nyu": "mc_resnet18", "imagenet": "sd_resnet50"}


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


def _prepared_mat(mat: Path, config: TrainConfig) -> DataSource:
    splits = Path(config.splits).expanduser() if config.splits else None
    folder = prepared_nyu_cache(mat, splits=splits, protocol=config.protocol, seed=config.seed, cache_dir=cache_root())
    return DataSource("nyu", str(folder))


def _find_source(config: TrainConfig) -> DataSource:
    if config.data is None:
        return _prepared_mat(demo_nyu_mat(), config)
    if storage.is_uri(config.data):
        if config.data.lower().endswith(".mat"):
            raise DataError(
                f"--data {config.data}: an NYU .mat file on object storage is prepared once, not by each run: "
                f"`python -m raymc.prepare nyu --mat {config.data} --out <prefix>`, then --data <prefix>"
            )
        return _folder_source(config.data)
    path = Path(config.data).expanduser()
    if not path.exists():
        raise DataError(f"--data {config.data}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() != ".mat":
            raise DataError(f"--data {config.data}: expected an NYU .mat file, an ImageFolder or a prepared folder")
        return _prepared_mat(path, config)
    return _folder_source(str(path.resolve()))


def _folder_source(folder: str) -> DataSource:
    """A prepared folder (dataset_info.json, or on an object store its publication marker) or an
    ImageFolder tree (a train/ folder), local or on an object store, both read where they are."""
    entries = storage.names(folder)
    if "train" in entries and not {INFO_FILE, MARKER_FILE} & set(entries):
        return DataSource("imagenet", folder, folder_index=scan_image_folder(folder))
    if storage.is_uri(folder) or INFO_FILE in entries:
        return DataSource(read_dataset_info(folder).get("dataset", "nyu"), folder)
    raise DataError(
        f"--data {folder}: neither a prepared folder (no dataset_info.json) nor an ImageFolder "
        f"(no train/ folder); prepare it with `python -m raymc.prepare` or point at the right folder"
    )


def data_locations(config: TrainConfig) -> dict[str, str]:
    """What Ray tasks on any node read of a run's data, by the flag that names it: the data, and
    the cache a demo set or .mat file is prepared into."""
    locations = {} if config.data is None else {"--data": config.data}
    if config.data is None or config.data.lower().endswith(".mat"):
        locations["the data cache (RAYMC_CACHE)"] = str(cache_root())
    return locations


def shared_locations(config: TrainConfig) -> dict[str, str]:
    """What a run's Ray tasks and workers on any node read or write, by the flag that names it: its
    data locations, the run folder's storage path and the pretrained weights."""
    locations = {"--out": config.out, **data_locations(config)}
    if config.pretrained not in (None, "imagenet"):  # imagenet: each node reads its own torch hub cache
        locations["--pretrained"] = config.pretrained
    return locations


def check_shared_storage(config: TrainConfig) -> None:
    """On a cluster of several nodes, refuse local paths the other nodes cannot see (unless --shared-fs)."""
    check_shared_paths(shared_locations(config), shared_fs=config.shared_fs, nodes=alive_nodes())


def resolve_data(config: TrainConfig) -> tuple[TrainConfig, DataSource]:
    """Locate the data and fill the settings that depend on it (dataset kind, default model)."""
    source = _find_source(config)
    if config.splits and config.data and not config.data.lower().endswith(".mat"):
        raise DataError(f"--splits applies to an NYU .mat file; {config.data} already has its split")
    if config.dataset not in ("auto", source.kind):
        raise ConfigError(f"--dataset {config.dataset}, but --data {config.data} holds {source.kind} data")
    model = config.model or DEFAULT_MODELS[source.kind]
    streams_needed = 2 if source.kind == "nyu" else 1
    if model_family(model).num_streams != streams_needed:
        raise ConfigError(
            f"--model {model} does not fit {source.kind} data ({streams_needed} input stream(s)); "
            f"use an {family_for_streams(streams_needed).name} model"
        )
    return dataclasses.replace(config, dataset=source.kind, model=model, pretrained=locate(config.pretrained)), source
