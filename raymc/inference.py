"""Batch inference on Ray Data: a trained model scored over a whole data set by an actor pool.

Each actor of a `map_batches` actor pool rebuilds the model once from the checkpoint payload in
Ray's object store (so no node needs the checkpoint file), then scores the validation view of the
rows (`pipeline.eval_rows`, the preprocessing training validated on) through
`analysis.pathway_logits`. Evaluation returns one row of counts per batch (losses, hits, a
confusion matrix) that the driver adds up; prediction returns one row per sample.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import torch
from torch import Tensor, nn

from raymc.analysis import pathway_logits
from raymc.cluster import alive_nodes, check_shared_paths, init_ray
from raymc.data.pipeline import TRAIN_SPLIT, DataSource, data_spec, dataset_info, eval_rows
from raymc.data.sources import data_locations, resolve_data
from raymc.data.spec import DataSpec, to_model_inputs
from raymc.errors import ConfigError, DataError
from raymc.metrics import TOP_K, batch_counts, mean_class_accuracy, per_class_accuracy
from raymc.models import family_for_streams
from raymc.precision import Precision
from raymc.trained import CheckpointError, ModelInfo, model_from_payload

__all__ = [
    "TOP_K",
    "CountBatches",
    "InferenceData",
    "PredictBatches",
    "check_fits",
    "count_totals",
    "inference_data",
    "metrics_from_counts",
    "run_inference",
    "split_name",
]

INFERENCE_BATCH = 64  # rows per model call: small enough for ResNet-152 at 224 px on a CPU actor
HELD_OUT = ("test", "val")  # NYU calls its held-out split "test", ImageNet "val": either means it
CELLS, CELL_COUNTS = "confusion_cells", "confusion_counts"  # sparse confusion matrix of a batch


@dataclass(frozen=True)
class InferenceData:
    """A data set ready for a trained model: its preprocessed rows and what they hold."""

    rows: ray.data.Dataset  # pipeline.eval_rows: rgb, [depth], label, index
    spec: DataSpec
    split: str  # the data set's own name of the split read
    name: str  # the data as the user gave it, for messages
    source: DataSource  # where the rows are read from, to name a damaged shard when a read fails


def _data_config(info: ModelInfo, data: str | None):
    """The model's training settings (image size, validation resize, protocol, split seed) with
    `data` in place of the training data, and the model left for the data check to judge."""
    data = info.config.data if data is None else str(data)
    splits = info.config.splits if data is not None and data.lower().endswith(".mat") else None
    return dataclasses.replace(info.config, data=data, splits=splits, dataset="auto", model=None)


def check_fits(info: ModelInfo, spec: DataSpec, name: str) -> None:
    """Refuse data whose input streams or classes differ from the model's, naming both."""
    columns = tuple(stream.column for stream in spec.streams)
    where = info.path or "the model"
    if columns != info.input_streams:
        raise CheckpointError(
            f"{where} holds {info.name}, which takes {' + '.join(info.input_streams)} input, but {name} "
            f"provides {' + '.join(columns)}; use a checkpoint trained on this kind of data "
            f"(an {family_for_streams(len(columns)).name} model) or the data it was trained on"
        )
    if tuple(spec.classes) != info.classes:
        raise DataError(
            f"{name} has {spec.num_classes} classes ({', '.join(spec.classes[:4])}, ...), but {where} was trained "
            f"on {len(info.classes)} ({', '.join(info.classes[:4])}, ...); prepare the data with the model's "
            f"protocol (--protocol {info.config.protocol}) or use a checkpoint trained on these classes"
        )


def split_name(split: str | None, spec: DataSpec, name: str) -> str:
    """The data set's own name of the requested split: "test" and "val" both mean the held-out one."""
    if split is None or split in HELD_OUT:
        chosen, rows = spec.val_split, spec.num_val
    elif split == TRAIN_SPLIT:
        chosen, rows = TRAIN_SPLIT, spec.num_train
    else:
        raise ConfigError(f"--split {split!r}: use test (or val) for the held-out split, or train")
    if rows == 0:
        raise DataError(f"{name} has no rows in its {chosen} split; choose another --split or other data")
    return chosen


def inference_data(info: ModelInfo, data: str | None, split: str | None, *, shared_fs: bool = False) -> InferenceData:
    """Resolve `data` (prepared folder, NYU .mat, ImageFolder; None: the model's training data),
    check that it fits the model, and return its preprocessed rows of `split`. Ray Data tasks on
    any node read it, so on a cluster of several nodes a local path needs `shared_fs`."""
    config = _data_config(info, data)
    init_ray()
    check_shared_paths(data_locations(config), shared_fs=shared_fs, nodes=alive_nodes())
    config, source = resolve_data(config)
    name = str(data) if data is not None else (info.config.data or "the demo NYU set")
    spec = data_spec(dataset_info(source))
    check_fits(info, spec, name)
    chosen = split_name(split, spec, name)
    rows = eval_rows(source, spec, chosen, config)
    return InferenceData(rows=rows, spec=spec, split=chosen, name=name, source=source)


class _ScoreBatches:
    """Base of the map_batches callables: the model is built once per actor, then run per batch."""

    def __init__(self, model: ray.ObjectRef | dict[str, Any], spec: DataSpec) -> None:
        payload = ray.get(model) if isinstance(model, ray.ObjectRef) else model
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model: nn.Module = model_from_payload(payload).to(self.device)
        self.classes = np.asarray(payload["classes"], dtype=object)
        self.spec = spec
        self.precision = Precision.choose(self.device, self.model.raymc_info.config)

    @torch.inference_mode()
    def outputs(self, batch: dict[str, np.ndarray]) -> tuple[dict[str, Tensor], Tensor]:
        """({pathway: float32 logits}, labels) of a batch, on the actor's device, in eval mode."""
        # Ray hands read-only zero-copy views; torch wants writable memory.
        tensors = {
            s.column: torch.from_numpy(np.require(batch[s.column], requirements=("C", "W"))) for s in self.spec.streams
        }
        inputs = to_model_inputs(tensors, self.spec, self.device, channels_last=self.device.type == "cuda")
        with self.precision.autocast(self.device):
            logits = pathway_logits(self.model, inputs)
        labels = torch.from_numpy(np.array(batch["label"], dtype=np.int64)).to(self.device)
        return {name: out.float() for name, out in logits.items()}, labels


class CountBatches(_ScoreBatches):
    """map_batches callable for evaluation: one output row of counts per input batch.

    The confusion matrix travels as its non-zero cells (at most one per sample), not as C x C
    counts: for ImageNet a dense matrix per batch would be 8 MB."""

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        outputs, labels = self.outputs(batch)
        counts = batch_counts(outputs, labels, self.spec.num_classes)
        confusion = counts.pop("confusion").flatten().cpu()
        cells = confusion.nonzero().flatten()
        return pa.table(
            {
                **{key: pa.array([value.item()], type=pa.float64()) for key, value in counts.items()},
                CELLS: pa.array([cells.tolist()], type=pa.list_(pa.int64())),
                CELL_COUNTS: pa.array([confusion[cells].tolist()], type=pa.list_(pa.int64())),
            }
        )


class PredictBatches(_ScoreBatches):
    """map_batches callable for prediction: one output row per sample (ids, label, top-k classes).

    Returns an Arrow table so the top-k columns are plain fixed-size lists, readable from Parquet
    by any tool (numpy columns would become Ray's tensor extension type)."""

    def __init__(self, model: ray.ObjectRef | dict[str, Any], spec: DataSpec, *, probs: bool = False) -> None:
        super().__init__(model, spec)
        self.probs = probs

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        outputs, labels = self.outputs(batch)
        probabilities = torch.softmax(outputs["full"], dim=1)
        top = probabilities.topk(min(TOP_K, probabilities.shape[1]), dim=1)
        top_labels, label = top.indices.cpu().numpy(), labels.cpu().numpy()
        columns = {
            "index": pa.array(np.asarray(batch["index"], dtype=np.int64)),
            "label": pa.array(label),
            "true_class": pa.array(self.classes[label], type=pa.string()),
            "pred": pa.array(top_labels[:, 0]),
            "pred_class": pa.array(self.classes[top_labels[:, 0]], type=pa.string()),
            "correct": pa.array(top_labels[:, 0] == label),
            "top5_label": _list_column(top_labels),
            "top5_class": _list_column(self.classes[top_labels], pa.string()),
            "top5_prob": _list_column(top.values.cpu().numpy()),
        }
        if self.probs:
            columns["probs"] = _list_column(probabilities.cpu().numpy())
        return pa.table(columns)


def _list_column(table: np.ndarray, type: pa.DataType | None = None) -> pa.FixedSizeListArray:
    """An (N, K) array as an Arrow column of N lists of K values."""
    return pa.FixedSizeListArray.from_arrays(pa.array(table.reshape(-1), type=type), table.shape[1])


def _pool_options() -> dict[str, Any]:
    """One actor per GPU when the cluster has GPUs (preprocessing stays in CPU tasks), else up to
    one single-CPU actor per CPU (Ray Data fuses the preprocessing into them); the pool starts at
    one actor and grows with the backlog."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return {"num_gpus": 1, "compute": ray.data.ActorPoolStrategy(min_size=1, max_size=gpus)}
    actors = max(1, int(resources.get("CPU", 1)))
    return {"num_cpus": 1, "compute": ray.data.ActorPoolStrategy(min_size=1, max_size=actors)}


def run_inference(
    scorer: type[_ScoreBatches],
    payload: dict[str, Any],
    data: InferenceData,
    *,
    batch_size: int | None = None,
    **scorer_kwargs: Any,
) -> ray.data.Dataset:
    """data.rows mapped through `scorer` by an actor pool; the payload travels through the object store."""
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    return data.rows.map_batches(
        scorer,
        fn_constructor_args=(ray.put(payload), data.spec),
        fn_constructor_kwargs=scorer_kwargs,
        batch_size=batch_size or INFERENCE_BATCH,
        batch_format="numpy",
        **_pool_options(),
    )


def count_totals(counted: ray.data.Dataset, num_classes: int) -> dict[str, Any]:
    """Add up CountBatches' per-batch rows on the driver; the confusion matrix comes back dense."""
    totals: dict[str, Any] = {}
    confusion = np.zeros(num_classes * num_classes, dtype=np.int64)
    for batch in counted.iter_batches(batch_size=None, batch_format="pyarrow"):
        for name in batch.column_names:
            if name not in (CELLS, CELL_COUNTS):
                totals[name] = totals.get(name, 0.0) + pc.sum(batch[name]).as_py()
        cells = pc.list_flatten(batch[CELLS]).to_numpy()
        np.add.at(confusion, cells, pc.list_flatten(batch[CELL_COUNTS]).to_numpy())
    if totals:
        totals["confusion"] = confusion.reshape(num_classes, num_classes)
    return totals


def metrics_from_counts(totals: dict[str, np.ndarray], classes: tuple[str, ...]) -> dict[str, Any]:
    """Rates from summed counts: loss, acc, acc5, mean_class_acc, per_class_acc, confusion, pathways."""
    if not totals or totals["samples"] == 0:
        raise DataError("no rows were scored: every image of the split was skipped as unreadable")
    confusion = torch.as_tensor(totals["confusion"], dtype=torch.int64)
    samples = float(totals["samples"])
    metrics: dict[str, Any] = {
        "num_samples": int(samples),
        "loss": float(totals["loss"]) / samples,
        "acc": float(totals["top1"]) / samples,
    }
    if "top5" in totals:
        metrics["acc5"] = float(totals["top5"]) / samples
    metrics["mean_class_acc"] = mean_class_accuracy(confusion)
    metrics["per_class_acc"] = dict(zip(classes, per_class_accuracy(confusion).tolist()))
    metrics["confusion"] = confusion.tolist()
    pathway_names = [key for key in totals if key.endswith("_only")]
    metrics["pathways"] = (
        {"full": metrics["acc"], **{name: float(totals[name]) / samples for name in pathway_names}}
        if pathway_names
        else None
    )
    return metrics
