"""What the settings must satisfy together; each broken rule is named by its flag, with the fix."""

from __future__ import annotations

from typing import TYPE_CHECKING

from raymc.errors import ConfigError
from raymc.flags import flag_names
from raymc.models import model_family

if TYPE_CHECKING:
    from raymc.config import TrainConfig


def validate(config: TrainConfig) -> None:
    """Reject settings that cannot work, naming the flag and the fix."""
    positive = (
        "epochs",
        "batch",
        "num_workers",
        "grad_accum_steps",
        "image_size",
        "preemption_check_steps",
        "log_every_steps",
    )
    for name in positive:
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise ConfigError(f"{flag_names(name)[0]} must be at least 1, got {getattr(config, name)}")
    for name in ("lr", "stream1_lr", "stream2_lr", "head_lr", "grad_clip_norm", "cpus_per_worker"):
        value = getattr(config, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{flag_names(name)[0]} must be positive, got {value}")
    for name in ("weight_decay", "warmup_epochs", "min_lr", "dropout", "min_delta", "mixup", "cutmix"):
        if getattr(config, name) < 0:
            raise ConfigError(f"{flag_names(name)[0]} must not be negative, got {getattr(config, name)}")
    if config.ema_decay is not None and not 0 < config.ema_decay < 1:
        raise ConfigError(f"--ema-decay must be in (0, 1), got {config.ema_decay}")
    if config.monitor.endswith("_ema") and config.ema_decay is None:
        raise ConfigError(f"--monitor {config.monitor} needs --ema-decay (the averaged weights it scores)")
    if not 0 <= config.mix_switch_prob <= 1:
        raise ConfigError(f"--mix-switch-prob must be in [0, 1], got {config.mix_switch_prob}")
    if not 0 <= config.label_smoothing < 1:
        raise ConfigError(f"--label-smoothing must be in [0, 1), got {config.label_smoothing}")
    if not 0 < config.crop_scale <= 1:
        raise ConfigError(f"--crop-scale must be in (0, 1], got {config.crop_scale}")
    if not 0 <= config.dropout < 1:
        raise ConfigError(f"--dropout must be in [0, 1), got {config.dropout}")
    if config.patience is not None and config.patience < 1:
        raise ConfigError(
            f"--patience must be at least 1 (leave it out to turn early stopping off), got {config.patience}"
        )
    if config.gpus_per_worker is not None and config.gpus_per_worker < 0:
        raise ConfigError(f"--gpus-per-worker must not be negative, got {config.gpus_per_worker}")
    if config.max_failures < 0:
        raise ConfigError(f"--max-failures must not be negative, got {config.max_failures}")
    if config.name is not None and (
        not config.name or config.name in (".", "..") or any(c in config.name for c in "/\\")
    ):
        raise ConfigError(f"--name {config.name!r} must be a plain folder name (no '/', '\\', '.' or '..')")
    if config.val_resize is not None and config.val_resize < config.image_size:
        raise ConfigError(f"--val-resize {config.val_resize} must be at least --image-size {config.image_size}")
    if config.pL is not None and not 0 < config.pL <= 1:
        raise ConfigError(f"--pL must be in (0, 1] (1.0 turns stochastic depth off), got {config.pL}")
    if config.model and (config.stream1_lr or config.stream2_lr) and not model_family(config.model).takes("stream1_lr"):
        raise ConfigError(f"--stream1-lr/--stream2-lr apply to two-stream mc_resnet models, not {config.model}")
    nyu = config.dataset == "nyu" or config.data is None or config.data.lower().endswith(".mat")  # no data: demo NYU
    if nyu:
        check_decode_on(config, "nyu")


def check_decode_on(config: TrainConfig, kind: str) -> None:
    """--decode-on device decodes JPEGs on the training device: ImageNet's (NYU's rows hold pixels).
    Checked with the flags where --data shows the kind, and again once the data is found."""
    if config.decode_on == "device" and kind != "imagenet":
        raise ConfigError(f"--decode-on device decodes ImageNet JPEGs, but {kind} data has none: use --decode-on host")
