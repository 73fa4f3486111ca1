"""Every training setting in one dataclass, filled from defaults, YAML and CLI flags alike.

The command line is generated from the fields, so a setting has one name, one type, one default and
one help text. Each field answers to `--dash-name` and `--underscore_name`; booleans that default
to True are turned off with `--no-...`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from raymc.config_rules import validate
from raymc.errors import ConfigError
from raymc.flags import flag_names
from raymc.models import MODEL_NAMES
from raymc.seed_compat import SEED_SCRIPT_KEYS, apply_seed_script_keys


def setting(default: Any, help: str, *, group: str, choices: tuple | None = None, flag: str | None = None) -> Any:
    """A dataclass field carrying its CLI help, group, choices and optional extra flag name."""
    meta = {"help": help, "group": group, "choices": choices, "flag": flag}
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """What a training run needs; `python -m raymc.train --help` lists the same fields."""

    # data
    data: str | None = setting(
        None,
        "NYU Depth V2 .mat file, ImageNet folder (train/ and val/ of <wnid>/ folders), or a folder "
        "prepared by raymc.prepare (local path or URI such as s3://...); default: the demo NYU set, "
        "made once and cached",
        group="data",
    )
    dataset: str = setting(
        "auto", "what --data holds (auto: detect it)", group="data", choices=("auto", "nyu", "imagenet")
    )
    protocol: str = setting("nyu10", "NYU scene protocol", group="data", choices=("nyu10", "nyu27"))
    splits: str | None = setting(
        None, "NYU splits.mat (1-based trainNdxs/testNdxs); default: a seeded split grouped by room", group="data"
    )
    image_size: int = setting(224, "side of the square crops fed to the model", group="data")
    val_resize: int | None = setting(
        None,
        "validation: resize the shorter side to this, then centre-crop --image-size "
        "(default: image size / 0.875, i.e. 256 for 224)",
        group="data",
    )
    crop_scale: float = setting(0.08, "smallest area fraction a random resized crop may keep", group="data")
    on_bad_image: str = setting(
        "skip",
        "ImageNet: skip and log undecodable files, or fail naming the file",
        group="data",
        choices=("skip", "fail"),
    )
    decode_on: str = setting(
        "host",
        "ImageNet training images: decoded and augmented in Ray Data on CPUs (host), or read as JPEG bytes by "
        "Ray Data, which draws each image's crop, flip and jitter, and decoded and augmented batch by batch on "
        "the training device (device: nvJPEG on GPUs, the same code on CPU workers; the draws are the host "
        "path's; validation keeps the host decode)",
        group="data",
        choices=("host", "device"),
    )
    cache: bool = setting(
        False,
        "keep the decoded training set and the validation view in Ray's object store (materialized once)",
        group="data",
    )

    # model
    model: str | None = setting(
        None, "model name (default: mc_resnet18 for NYU, sd_resnet50 for ImageNet)", group="model", choices=MODEL_NAMES
    )
    fusion: str = setting("concat", "MCResNet stream fusion", group="model", choices=("concat", "weighted", "gated"))
    dropout: float = setting(0.0, "dropout before the classifier head", group="model")
    pL: float | None = setting(
        None,
        "sd_resnet: survival probability of the last block, decaying linearly from 1 "
        "(default: 0.5; 1.0 turns stochastic depth off)",
        group="model",
    )
    sd_mode: str = setting(
        "row",
        "sd_resnet: drop residual branches per sample (row) or per batch (batch, as in the paper)",
        group="model",
        choices=("row", "batch"),
    )
    pretrained: str | None = setting(
        None,
        "initialize the model from imagenet (torchvision's ImageNet weights of the same ResNet depth, "
        "read from the torch hub cache, downloaded into it when online), a torchvision state_dict .pth, or a "
        "raymc best_model.pt, run folder or checkpoint_epoch_NNNN folder (local path or URI); the depth trunk "
        "of an RGB source averages conv1 over the colour channels, and the head (and MCResNet's fusion) starts "
        "fresh unless the source is the same model with the same classes. Without explicit learning rates the "
        "pretrained trunks train at 0.1x the base rate (--lr or its default) and the head and fusion at the "
        "base rate (default: random initialization)",
        group="model",
    )

    compile: bool = setting(False, "torch.compile the model (first steps are slower while it compiles)", group="model")
    compile_backend: str | None = setting(
        None,
        "torch.compile backend (default: inductor on GPUs; aot_eager on CPUs, which compiles in seconds where "
        "inductor takes minutes)",
        group="model",
    )

    # optimisation
    epochs: int = setting(90, "number of epochs", group="optimisation")
    batch: int = setting(256, "global batch size per step, split evenly across workers", group="optimisation")
    lr: float | None = setting(
        None,
        "base learning rate (default: 0.1 x effective batch / 256 for SGD, 1e-3 x it for AdamW)",
        group="optimisation",
    )
    optimizer: str = setting("sgd", "optimizer", group="optimisation", choices=("sgd", "adamw"))
    momentum: float = setting(0.9, "SGD momentum", group="optimisation")
    nesterov: bool = setting(False, "use Nesterov momentum", group="optimisation")
    weight_decay: float = setting(1e-4, "weight decay", group="optimisation")
    norm_bias_weight_decay: bool = setting(
        True, "apply weight decay to normalisation weights and biases too", group="optimisation"
    )
    warmup_epochs: float = setting(5.0, "linear warmup length in epochs (then cosine decay)", group="optimisation")
    min_lr: float = setting(1e-6, "learning rate at the end of the cosine decay", group="optimisation")
    label_smoothing: float = setting(0.1, "label smoothing of the training loss", group="optimisation")
    mixup: float = setting(0.0, "mixup alpha on the device batch (0 turns mixup off)", group="optimisation")
    ema_decay: float | None = setting(
        None,
        "keep an exponential moving average of the weights and BatchNorm statistics with this decay (e.g. 0.999), "
        "validated every epoch beside the raw weights (val_*_ema columns); --monitor val_acc_ema etc. makes "
        "best_model.pt hold the average (default: off)",
        group="optimisation",
    )
    cutmix: float = setting(
        0.0,
        "CutMix alpha on the device batch: one box, the same in RGB and depth, pasted from the neighbouring "
        "sample, targets weighted by its area (0 turns CutMix off)",
        group="optimisation",
    )
    mix_switch_prob: float = setting(
        0.5, "with both --mixup and --cutmix: the chance that a batch uses CutMix (else mixup)", group="optimisation"
    )
    grad_clip_norm: float | None = setting(None, "clip the global gradient norm to this value", group="optimisation")
    grad_accum_steps: int = setting(
        1, "accumulate gradients over this many steps (effective batch = batch x steps)", group="optimisation"
    )
    stream1_lr: float | None = setting(None, "MCResNet: learning rate of the RGB trunk", group="optimisation")
    stream2_lr: float | None = setting(None, "MCResNet: learning rate of the depth trunk", group="optimisation")
    head_lr: float | None = setting(
        None,
        "learning rate of the classifier head (and MCResNet's fusion), apart from the trunks (default: the base "
        "rate, --lr or its default; with --pretrained the trunks then train at 0.1x the base rate unless "
        "--stream1-lr/--stream2-lr set them)",
        group="optimisation",
    )
    mixed_precision: bool = setting(
        True, "automatic mixed precision on GPUs (bf16 where supported; CPU runs in fp32)", group="optimisation"
    )
    amp_dtype: str = setting(
        "auto",
        "mixed-precision type: auto (bf16 on GPUs with native bf16, compute capability 8.0+ such as A100 and "
        "H100; fp16 with GradScaler on older ones such as V100 and T4), bf16, or fp16",
        group="optimisation",
        choices=("auto", "bf16", "fp16"),
    )

    # early stopping
    patience: int | None = setting(
        None, "stop after this many epochs without improvement of --monitor (default: off)", group="early stopping"
    )
    monitor: str = setting(
        "val_acc",
        "metric that decides the best epoch and early stopping",
        group="early stopping",
        choices=(
            "val_acc",
            "val_mean_class_acc",
            "val_acc5",
            "val_loss",
            *(f"{name}_ema" for name in ("val_acc", "val_mean_class_acc", "val_acc5", "val_loss")),
        ),
    )
    min_delta: float = setting(0.0, "smallest change of --monitor that counts as improvement", group="early stopping")

    # resources
    num_workers: int | None = setting(
        None, "Ray Train workers (default: one per GPU on a GPU cluster, else 2)", group="resources"
    )
    gpus_per_worker: float | None = setting(
        None, "GPUs per worker (default: 1 if the cluster has GPUs, else 0)", group="resources"
    )
    cpus_per_worker: float | None = setting(
        None,
        "CPUs per worker (default: half the cluster's CPUs shared by the workers, the rest "
        "left to Ray Data preprocessing)",
        group="resources",
    )

    max_failures: int = setting(
        0, "restart from the newest checkpoint after up to this many worker or node failures", group="resources"
    )
    shared_fs: bool = setting(
        False,
        "local paths (--data, --out, the demo cache) are mounted at the same place on every node; without it "
        "a cluster of several nodes takes only URIs (s3://, gs://, ...)",
        group="resources",
    )
    log_every_steps: int = setting(
        50,
        "every this many steps (and at an epoch's end) the workers look at their losses: the divergence check "
        "and the live gauges; between looks a step never waits for the device",
        group="resources",
    )
    preemption_check_steps: int = setting(
        50,
        "every this many steps the workers ask Ray Train whether a node is about to be preempted "
        "(a checkpoint is written at once if so); each check is a short barrier",
        group="resources",
    )

    # run
    seed: int = setting(42, "random seed (weights, augmentation, data order, split)", group="run")
    deterministic: bool = setting(
        False,
        "reproducible bit for bit on CPUs for a given seed and worker count, and a resumed run identical to an "
        "uninterrupted one: Ray Data keeps each worker's row order (ignoring locality), a resume inside an epoch "
        "skips the batches already trained on, torch uses deterministic algorithms; costs throughput (README)",
        group="run",
    )
    out: str = setting("./runs", "storage path: runs are written to OUT/NAME (local path or s3://...)", group="run")
    name: str | None = setting(
        None,
        "run name; running again with the same name resumes from its last checkpoint "
        "(default: model, data and a hash of the settings)",
        group="run",
    )

    @property
    def effective_batch(self) -> int:
        """Samples per optimizer step: what the learning-rate scaling rule is about."""
        return self.batch * self.grad_accum_steps

    @property
    def base_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        reference = 0.1 if self.optimizer == "sgd" else 1e-3
        return reference * self.effective_batch / 256

    def run_name(self) -> str:
        """The --name, or a stable name derived from the settings so a rerun resumes."""
        if self.name:
            return self.name
        data = Path(self.data.rstrip("/")).stem if self.data else "nyu_demo"
        return f"{self.model}-{data}-{self.fingerprint()[:8]}"

    def fingerprint(self) -> str:
        """Hash of the settings that change what is trained (not where it is written)."""
        relevant = {k: v for k, v in dataclasses.asdict(self).items() if k not in PLACEMENT_SETTINGS}
        return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Settings that say where and on what a run executes, not what it learns: a run may resume with
# other values of these.
# Every setting's name: the TrainConfig fields (flags, YAML keys and search parameters use them).
SETTING_NAMES: frozenset[str] = frozenset(f.name for f in dataclasses.fields(TrainConfig))

PLACEMENT_SETTINGS = (
    "out",
    "name",
    "num_workers",
    "gpus_per_worker",
    "cpus_per_worker",
    "max_failures",
    "preemption_check_steps",
    "log_every_steps",
    "shared_fs",
    "decode_on",  # where images are decoded: both places draw the same crops, flips and jitter
)


def changed_settings(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """The settings (placement aside) that differ between a run's recorded settings and these."""
    return sorted(k for k, v in now.items() if k in before and before[k] != v and k not in PLACEMENT_SETTINGS)


# Settings the demo run uses unless the user sets them: small images, few epochs, fast on 2 CPUs.
DEMO_DEFAULTS: dict[str, Any] = {
    "image_size": 64,
    "epochs": 8,
    "batch": 32,
    "lr": 0.05,
    "warmup_epochs": 1.0,
    "label_smoothing": 0.0,
    "crop_scale": 0.35,
}


def _field_type(f: dataclasses.Field) -> type:
    """The concrete type of a field, with `X | None` reduced to X."""
    hint = typing.get_type_hints(TrainConfig)[f.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per TrainConfig field, grouped as in --help. Unset flags stay absent."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        group = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        kind = _field_type(f)
        if kind is bool:
            if f.default:
                names = flag_names("no_" + f.name)
                group.add_argument(*names, dest=f.name, action="store_false", help=meta["help"])
            else:
                group.add_argument(*flag_names(f.name), dest=f.name, action="store_true", help=meta["help"])
            continue
        default_text = "" if f.default is None or "default:" in meta["help"] else f" (default: {f.default})"
        group.add_argument(
            *flag_names(f.name),
            dest=f.name,
            type=kind,
            choices=meta["choices"],
            metavar=None if meta["choices"] else f.name.upper(),
            help=meta["help"] + default_text,
        )


def coerce(name: str, value: Any, source: str) -> Any:
    """Convert a YAML value to the field's type, naming the key and file when it cannot be."""
    f = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    if value is None:
        return None
    kind = _field_type(f)
    try:
        if kind is bool:
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: key '{name}' must be {kind.__name__}, got {value!r}") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file of TrainConfig keys (dash or underscore spelling)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML ({exc.__class__.__name__}): fix the syntax") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"--config {path}: expected a mapping of setting: value at the top level")
    values = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name in SEED_SCRIPT_KEYS:
            values[name] = value
            continue
        if name not in SETTING_NAMES:
            raise ConfigError(
                f"--config {path}: unknown key '{key}'; valid keys are the flags of "
                f"`python -m raymc.train --help` (e.g. {', '.join(sorted(SETTING_NAMES)[:6])}, ...)"
            )
        values[name] = coerce(name, value, str(path))
    return values


def build_config(
    cli_values: dict[str, Any], *, yaml_path: str | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Merge defaults < demo defaults (when no --data) < YAML < CLI flags < overrides, then validate."""
    values: dict[str, Any] = {}
    file_values = load_yaml(yaml_path) if yaml_path else {}
    given = apply_seed_script_keys({**file_values, **cli_values, **(overrides or {})})
    if given.get("data") is None:
        values.update(DEMO_DEFAULTS)
    values.update(given)
    config = TrainConfig(**values)
    validate(config)
    return config


def with_params(
    base: TrainConfig, params: Mapping[str, Any], *, name: str | None = None, source: str = "search space"
) -> TrainConfig:
    """`base` with some settings changed (a trial's parameters), each coerced to its field's type
    and the result validated as flags are."""
    values = base.to_dict()
    values.update({key: coerce(key, value, source) for key, value in params.items()})
    if name is not None:
        values["name"] = name
    return build_config(values)
