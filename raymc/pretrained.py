"""`--pretrained`: start a model from ImageNet weights, a torchvision state_dict or a raymc run.

A torchvision ResNet's state_dict is key for key an SDResNet's (stochastic depth has no tensors), so
one mapping serves every source: each trunk of the model takes the source's trunk of the same
stream, a depth trunk borrowed from an RGB trunk takes conv1 averaged over the colour channels, and
the head (with MCResNet's fusion) loads only from the same model trained on the same classes. Every
worker loads the source itself: the same file gives every rank the same weights, nothing is broadcast.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow
import pyarrow.fs
import torch
import torchvision
from torch import Tensor, nn

from raymc import storage
from raymc.checkpoint import STATE_FILE
from raymc.errors import DataError
from raymc.models import model_family
from raymc.models.sdresnet import SDResNet
from raymc.trained import REQUIRED_KEYS, CheckpointError, load_payload

__all__ = ["IMAGENET", "PretrainedRecord", "Source", "imagenet_weights", "initialize", "locate", "read_source"]

IMAGENET = "imagenet"
COUNTER = "num_batches_tracked"  # BatchNorm's step counter: older torchvision files lack it, and it is no weight
_EXPECTED = (
    "pass imagenet, a torchvision state_dict .pth, or a raymc best_model.pt, run folder or checkpoint_epoch_NNNN folder"
)

StateDict = dict[str, Tensor]


@dataclass(frozen=True)
class PretrainedRecord:
    """What --pretrained loaded, in the model's tensor names: for the run's log and summary.json."""

    source: str  # --pretrained as the run used it
    origin: str  # the file the weights came from
    loaded: list[str]  # tensors the source gave
    new: list[str]  # tensors that start fresh (the head, MCResNet's fusion)

    def log_line(self) -> str:
        """`pretrained: N tensors from FILE, M new (head, fusion)`."""
        modules = sorted({name.split(".", 1)[0] for name in self.new})
        parts = f" ({', '.join(modules)})" if modules else ""
        return f"pretrained: {len(self.loaded)} tensors from {self.origin}, {len(self.new)} new{parts}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Source:
    """A source's weights and, for a raymc model, the model and classes they were trained as."""

    given: str  # --pretrained as given, for the error messages
    origin: str  # the file read
    state_dict: StateDict
    model: str | None = None  # registered model name; None: a torchvision ResNet
    classes: tuple[str, ...] | None = None

    @property
    def layout(self) -> type[nn.Module]:
        """The model class whose key names the weights have (a torchvision ResNet's are SDResNet's)."""
        return SDResNet if self.model is None else model_family(self.model).model_class


# ---------------------------------------------------------------- finding and reading the source


def _file_type(given: str) -> pyarrow.fs.FileType:
    """File or Directory; a location with nothing there is a one-line error."""
    try:
        filesystem, path = storage.filesystem(given)
        kind = filesystem.get_file_info(path).type
    except (OSError, pyarrow.ArrowException) as exc:
        raise DataError(f"--pretrained {given}: cannot read it ({' '.join(str(exc).split())})") from None
    if kind not in (pyarrow.fs.FileType.File, pyarrow.fs.FileType.Directory):
        raise DataError(f"--pretrained {given}: no such file or folder; {_EXPECTED}")
    return kind


def locate(source: str | None) -> str | None:
    """--pretrained as every worker can read it, checked on the driver before any worker starts: a
    local path made absolute (Ray Train runs each worker in a working directory of its own),
    imagenet and URIs as given."""
    if source is None or source == IMAGENET:
        return source
    _file_type(source)
    return storage.as_uri(source)


def _torch_load(location: str, given: str) -> Any:
    """A file's contents through torch.load(weights_only=True): no code from the file runs."""
    try:
        data = storage.read_bytes(location)
    except OSError as exc:  # an object store's common answers come as raymc errors already
        raise DataError(f"--pretrained {given}: cannot read {location} ({' '.join(str(exc).split())})") from None
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for files that are not (safe) tensor files
        raise DataError(
            f"--pretrained {given}: {location} is not a file torch.load reads with weights_only=True "
            f"({type(exc).__name__}); {_EXPECTED}"
        ) from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def imagenet_weights(model_name: str) -> tuple[torchvision.models.WeightsEnum, Path]:
    """torchvision's DEFAULT ImageNet weights of the model's ResNet depth (registered names end in
    resnetNN), and the file the torch hub cache keeps them in."""
    weights = torchvision.models.get_model_weights(model_name.split("_", 1)[1]).DEFAULT
    return weights, Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _imagenet(model_name: str) -> Source:
    """The hub cache's file, else torchvision's download into that cache; offline, an error saying
    where to put the file."""
    weights, path = imagenet_weights(model_name)
    if path.is_file():
        return Source(IMAGENET, str(path), _torch_load(str(path), IMAGENET))
    try:
        state_dict = weights.get_state_dict(progress=False, check_hash=True, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:  # no network (URLError is an OSError), or a damaged download
        raise DataError(
            f"--pretrained imagenet: {model_name} starts from {weights}, file {path.name}, which is not in the "
            f"torch hub cache and could not be downloaded ({' '.join(str(exc).split())}); download "
            f"{weights.url} into {path.parent} (the cache folder follows TORCH_HOME)"
        ) from None
    return Source(IMAGENET, str(path), state_dict)


def _raymc(given: str, payload: dict[str, Any], origin: str) -> Source:
    return Source(given, origin, payload["state_dict"], payload["model"], tuple(payload["classes"]))


def _raymc_folder(given: str) -> Source:
    """A run folder's best weights, or a checkpoint folder's weights of its epoch (state.pt), each
    with the model and classes its best_model.pt names."""
    try:
        payload, origin = load_payload(given)
    except CheckpointError as exc:
        raise DataError(f"--pretrained {exc}") from None
    state = storage.join(storage.as_uri(given), STATE_FILE)
    if storage.is_file(state):
        return _raymc(given, {**payload, "state_dict": _torch_load(state, given)["model"]}, state)
    return _raymc(given, payload, origin)


def _file(given: str) -> Source:
    """A torchvision state_dict or a raymc best_model.pt, told apart by their contents."""
    obj = _torch_load(given, given)
    origin = storage.as_uri(given)
    if _is_state_dict(obj):
        return Source(given, origin, obj)
    if isinstance(obj, dict) and all(key in obj for key in REQUIRED_KEYS):
        return _raymc(given, obj, origin)
    raise DataError(f"--pretrained {given}: neither a torchvision state_dict nor a raymc best_model.pt; {_EXPECTED}")


def read_source(given: str, model_name: str) -> Source:
    """The weights --pretrained names: the hub cache's for imagenet, else a file or a raymc folder."""
    if given == IMAGENET:
        return _imagenet(model_name)
    if _file_type(given) == pyarrow.fs.FileType.Directory:
        return _raymc_folder(given)
    return _file(given)


# ---------------------------------------------------------------- mapping the source onto the model


def _in_head(key: str, layout: type[nn.Module] | nn.Module) -> bool:
    return key.split(".", 1)[0] in layout.head_modules


def _trunks(source: Source) -> list[StateDict]:
    """Each stream's trunk of the source under torchvision's key names, in stream order."""
    layout = source.layout
    return [
        {
            key[len(prefix) :]: value
            for key, value in source.state_dict.items()
            if key.startswith(prefix) and not _in_head(key, layout)
        }
        for prefix in layout.trunk_prefixes
    ]


def _depth_trunk(rgb: StateDict) -> StateDict:
    """An RGB trunk for the one-channel depth stream: conv1 averaged over the three colour channels."""
    if "conv1.weight" not in rgb:  # not a ResNet trunk: the fit check names what is missing
        return rgb
    return {**rgb, "conv1.weight": rgb["conv1.weight"].mean(dim=1, keepdim=True)}


def _same_model(source: Source, model: nn.Module, model_name: str, classes: Sequence[str]) -> bool:
    """Whether the head loads too: the same model on the same classes, with the same head tensors
    (another fusion has others)."""
    if source.model != model_name or source.classes != tuple(classes):
        return False
    heads = [{k for k in sd if _in_head(k, model)} for sd in (source.state_dict, model.state_dict())]
    return heads[0] == heads[1]


def _mapped(source: Source, model: nn.Module, *, whole: bool) -> StateDict:
    """The source's tensors under the model's key names: all of them for the same model, else its trunks."""
    if whole:
        return dict(source.state_dict)
    trunks = _trunks(source)
    mapped: StateDict = {}
    for stream, prefix in enumerate(model.trunk_prefixes):
        trunk = trunks[stream] if stream < len(trunks) else _depth_trunk(trunks[0])
        mapped.update({prefix + key: value for key, value in trunk.items()})
    return mapped


def _check_fits(mapped: StateDict, model: nn.Module, source: Source, model_name: str) -> None:
    """Refuse weights that do not fit the model, naming the first tensor that does not."""
    target = model.state_dict()
    where = f"--pretrained {source.given}" + ("" if source.origin == source.given else f" ({source.origin})")
    for key, tensor in mapped.items():
        if key in target and tensor.shape != target[key].shape:
            raise DataError(
                f"{where}: tensor {key} has shape {tuple(tensor.shape)} in the source but {tuple(target[key].shape)} "
                f"in {model_name}; is it another ResNet depth?"
            )
    unused = [key for key in mapped if key not in target]
    if unused:
        raise DataError(
            f"{where}: {len(unused)} tensor(s) of the source have no place in {model_name} "
            f"({', '.join(unused[:3])}{', ...' if len(unused) > 3 else ''}); is it another ResNet depth?"
        )
    missing = [k for k in target if k not in mapped and not _in_head(k, model) and not k.endswith(COUNTER)]
    if missing:
        raise DataError(f"{where}: the source has no tensor for {missing[0]} of {model_name} ({len(missing)} missing)")


def initialize(
    model: nn.Module, source: str | None, *, model_name: str, classes: Sequence[str]
) -> PretrainedRecord | None:
    """Load --pretrained into a model just built (None without one); what it does not give keeps
    its fresh initialization."""
    if source is None:
        return None
    weights = read_source(source, model_name)
    mapped = _mapped(weights, model, whole=_same_model(weights, model, model_name, classes))
    _check_fits(mapped, model, weights, model_name)
    model.load_state_dict(mapped, strict=False)
    new = [key for key in model.state_dict() if key not in mapped and not key.endswith(COUNTER)]
    return PretrainedRecord(source=source, origin=weights.origin, loaded=list(mapped), new=new)
