"""Per-sample transforms run in Ray Data (CPU), and mixup / CutMix run on the training device.

RGB and depth get one geometric transform call on `tv_tensors`, so both see the same crop and
flip; depth travels as a `Mask`, which torchvision resizes with nearest-neighbour interpolation,
keeping metric values and 0 = missing intact. Photometric jitter touches RGB only.
Every sample's randomness is a function of (seed, epoch, sample index) (raymc.data.draws): crops
differ every epoch, repeat for a given seed, and do not depend on how Ray Data batches rows.
A batch's draws (crop boxes, flips, jitter) are made apart from the pixels (`TrainView.sample`), so
that --decode-on device draws them in Ray Data from the images' headers and applies them on the
training device after decoding there (raymc.data.device_decode), with the same `TrainView.apply`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision import transforms, tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from raymc.data import draws
from raymc.data.draws import TrainParams

# Brightness +-40%, contrast and saturation x0.8-1.2: the seed script's jitter.
COLOR_JITTER = {"brightness": 0.4, "contrast": 0.2, "saturation": 0.2}


class TrainView:
    """RandomResizedCrop(image_size, scale=(crop_scale, 1)) + horizontal flip for every stream,
    then ColorJitter(COLOR_JITTER) for RGB, split into drawing the parameters and applying them.

    `sample` draws as those transforms' `get_params` do, for a whole batch (raymc.data.draws);
    `apply` applies one sample's draws with torchvision's functional ops, on whatever device the
    image is on. The jitter runs on float pixels: on uint8, each
    of its three adjustments converts to float and back (0.64 ms of a 224 px image's augmentation
    instead of 0.43 ms).
    """

    def __init__(self, image_size: int, crop_scale: float) -> None:
        self.size = [image_size, image_size]
        self.scale = [crop_scale, 1.0]
        jitter = transforms.ColorJitter(**COLOR_JITTER)  # its ranges of the factors (hue stays off)
        self._jitter = (jitter.brightness, jitter.contrast, jitter.saturation)

    def sample(
        self, seed: int, epoch: int, indices: np.ndarray, heights: np.ndarray, widths: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The draws of samples `indices` in `epoch` for images of heights x widths, as columns
        (raymc.data.draws; `TrainParams.at` gives one row)."""
        return draws.sample(seed, epoch, indices, heights, widths, scale=self.scale, jitter=self._jitter)

    def apply(
        self, params: TrainParams, image: torch.Tensor, depth: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """(rgb (3,S,S) uint8[, depth (1,S,S)]) of `image` (3,H,W) uint8 and `depth` (1,H,W): depth is
        cropped as a Mask (nearest neighbour, keeping metres and 0 = missing) and not jittered."""
        views = [tv_tensors.Image(image), *([] if depth is None else [tv_tensors.Mask(depth)])]
        box = (params.top, params.left, params.height, params.width)
        views = [F.resized_crop(v, *box, size=self.size, antialias=True) for v in views]
        if params.flip:
            views = [F.horizontal_flip(v) for v in views]
        rgb = F.to_dtype(views[0], torch.float32, scale=True)
        adjust = {0: (F.adjust_brightness, params.brightness), 1: (F.adjust_contrast, params.contrast)}
        adjust[2] = (F.adjust_saturation, params.saturation)
        for fn_id in params.jitter_order:
            if fn_id in adjust:
                fn, factor = adjust[fn_id]
                rgb = fn(rgb, factor)
        rgb = F.to_dtype(rgb, torch.uint8, scale=True)
        return tuple(v.as_subclass(torch.Tensor) for v in (rgb, *views[1:]))


def val_short_side(image_size: int, resize: int | None) -> int:
    """The shorter side validation images are resized to: --val-resize, else image size / 0.875."""
    return resize or round(image_size / 0.875)


def eval_transform(image_size: int, resize: int | None) -> v2.Transform:
    """Resize the shorter side (256 for 224 by default), then centre-crop: the standard validation view."""
    return v2.Compose([v2.Resize(val_short_side(image_size, resize), antialias=True), v2.CenterCrop(image_size)])


def _as_tv_tensors(rgb: np.ndarray, depth: np.ndarray | None) -> tuple:
    image = tv_tensors.Image(torch.from_numpy(_torch_ready(rgb)).permute(2, 0, 1))
    if depth is None:
        return (image,)
    return image, tv_tensors.Mask(torch.from_numpy(_torch_ready(depth))[None])


def _torch_ready(array: np.ndarray) -> np.ndarray:
    """`array` as torch.from_numpy takes it without a warning: contiguous and writable. Rows read
    from Ray's object store (--cache) are read-only views, which are copied."""
    return np.require(array, requirements=("C", "W"))


def _stack(samples: list[tuple], batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {"rgb": np.stack([s[0].numpy() for s in samples]), "label": batch["label"].astype(np.int64)}
    if len(samples[0]) > 1:
        out["depth"] = np.stack([s[1].numpy() for s in samples]).astype(np.float32)
    return out


def augment_batch(
    batch: dict[str, np.ndarray], *, seed: int, epoch: int, image_size: int, crop_scale: float
) -> dict[str, np.ndarray]:
    """Training view of a batch of rows {rgb (N,H,W,3) uint8, [depth (N,H,W) float32], label, index}.

    Returns rgb (N,3,S,S) uint8, depth (N,1,S,S) float32 metres when present, label int64.
    """
    view = TrainView(image_size, crop_scale)
    depths = batch.get("depth")
    heights, widths = np.asarray([image.shape[:2] for image in batch["rgb"]]).reshape(-1, 2).T
    drawn = view.sample(seed, epoch, batch["index"], heights, widths)
    samples = []
    for i in range(len(batch["index"])):
        image, *depth = _as_tv_tensors(batch["rgb"][i], None if depths is None else depths[i])
        samples.append(view.apply(TrainParams.at(drawn, i), image, *depth))
    return _stack(samples, batch)


def eval_batch(batch: dict[str, np.ndarray], *, image_size: int, resize: int | None) -> dict[str, np.ndarray]:
    """Validation view of a batch: same layout as `augment_batch`, no randomness."""
    transform = eval_transform(image_size, resize)
    depths = batch.get("depth")
    samples = []
    for i in range(len(batch["label"])):
        views = transform(*_as_tv_tensors(batch["rgb"][i], None if depths is None else depths[i]))
        samples.append(views if isinstance(views, tuple) else (views,))
    return _stack(samples, batch)


def mixup(
    inputs: Sequence[torch.Tensor], targets: torch.Tensor, *, alpha: float, num_classes: int
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Mix every input stream with one shared lambda and permutation; returns soft targets.

    Soft targets go straight into `CrossEntropyLoss(label_smoothing=...)`, which smooths them
    once, so the mixed and smoothed target of each sample still sums to 1.
    """
    one_hot = torch.nn.functional.one_hot(targets, num_classes).to(inputs[0].dtype)
    if alpha <= 0:
        return list(inputs), one_hot
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(targets.shape[0], device=targets.device)
    mixed = [lam * x + (1 - lam) * x[perm] for x in inputs]
    return mixed, lam * one_hot + (1 - lam) * one_hot[perm]


def cutmix(
    inputs: Sequence[torch.Tensor], targets: torch.Tensor, *, alpha: float, num_classes: int
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Paste one box from each sample's neighbour in the batch into every input stream; returns
    soft targets weighted by the box's area.

    torchvision's v2.CutMix draws one box per call for every image it is given, which is exactly
    what RGB-D needs (the box must cut the same pixels from RGB and depth, or their geometry no
    longer lines up), so both streams go through one call as tv_tensors.Image. It pairs each sample
    with the one before it in the batch (the batch is shuffled) and draws from torch's generator,
    which the checkpoints restore.
    """
    streams = {f"stream{i}": tv_tensors.Image(x) for i, x in enumerate(inputs)}
    out = v2.CutMix(alpha=alpha, num_classes=num_classes)({**streams, "labels": targets})
    return [out[name].as_subclass(torch.Tensor) for name in streams], out["labels"].to(inputs[0].dtype)


def mix_batch(
    inputs: Sequence[torch.Tensor],
    targets: torch.Tensor,
    *,
    mixup_alpha: float,
    cutmix_alpha: float,
    switch_prob: float,
    num_classes: int,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Mixup or CutMix for one batch: with both on, CutMix with probability `switch_prob`, as timm
    switches per batch; either alone, that one; neither, the inputs with one-hot targets.

    raymc's own mixup is kept rather than v2.MixUp: it mixes with a random permutation, and its
    draws are what earlier checkpoints' generator states replay.
    """
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or float(torch.rand(())) < switch_prob)
    if use_cutmix:
        return cutmix(inputs, targets, alpha=cutmix_alpha, num_classes=num_classes)
    return mixup(inputs, targets, alpha=mixup_alpha, num_classes=num_classes)
