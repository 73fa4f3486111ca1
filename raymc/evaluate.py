"""`python -m raymc.evaluate --checkpoint PATH [--data PATH] [--split test] [--out DIR]`.

Scores a checkpoint on a split with `raymc.api.evaluate` (Ray Data batch inference), prints the
metrics and writes OUT/metrics.json, OUT/per_class.csv and OUT/plots/ (confusion matrix,
pathways, a grid of predictions).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from raymc.api import callable_module, evaluate, load_model, open_data, show_predictions
from raymc.config import flag_names
from raymc.errors import cli_main
from raymc.outputs import _write_bytes, _write_figure, _write_json, confusion_figure, pathways_figure

SPLITS = ("test", "val", "train")


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, --data, --split and --batch-size: shared with raymc.predict."""
    parser.add_argument(
        *flag_names("checkpoint"), required=True, metavar="PATH",
        help="best_model.pt, a Ray checkpoint folder (checkpoint_epoch_NNNN) or a run folder (local or URI)",
    )  # fmt: skip
    parser.add_argument(
        *flag_names("data"), metavar="PATH",
        help="prepared Parquet folder, NYU .mat file or ImageFolder (default: the data the model was trained on)",
    )  # fmt: skip
    parser.add_argument(
        *flag_names("split"), choices=SPLITS,
        help="test or val: the held-out split, whichever name the data uses (default); or train",
    )  # fmt: skip
    parser.add_argument(*flag_names("batch_size"), type=int, metavar="N", help="rows per model call (default: 64)")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m raymc.evaluate",
        description="Evaluate a trained checkpoint with Ray Data batch inference: loss, top-1/top-5, "
        "mean class and per-class accuracy, confusion matrix, pathway accuracy, a grid of predictions.",
    )
    add_inference_arguments(parser)
    parser.add_argument(*flag_names("out"), default="eval", metavar="DIR", help="output folder (default: ./eval)")
    return parser


def per_class_frame(metrics: dict[str, Any]) -> pd.DataFrame:
    """One row per class: samples, correct, accuracy (empty where the split has no sample)."""
    confusion = metrics["confusion"]
    return pd.DataFrame(
        {
            "class": metrics["classes"],
            "samples": [sum(row) for row in confusion],
            "correct": [row[i] for i, row in enumerate(confusion)],
            "accuracy": list(metrics["per_class_acc"].values()),
        }
    )


def write_evaluation(out: str | Path, metrics: dict[str, Any], predictions: Figure) -> list[Path]:
    """Write metrics.json, per_class.csv and the plots under out; return the paths written."""
    out = Path(out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    title = {"model": metrics["model"], "dataset": metrics["data"]}
    written = [
        _write_json(out / "metrics.json", metrics),
        _write_bytes(out / "per_class.csv", per_class_frame(metrics).to_csv(index=False).encode()),
        _write_figure(out / "plots" / "confusion_matrix.png", confusion_figure(metrics["confusion"], metrics["classes"], title)),
        _write_figure(out / "plots" / "predictions.png", predictions),
    ]
    if metrics["pathways"]:
        figure = pathways_figure(metrics["pathways"], num_classes=len(metrics["classes"]))
        written.append(_write_figure(out / "plots" / "pathways.png", figure))
    return written


def _print_metrics(metrics: dict[str, Any]) -> None:
    print(f"{metrics['model']} ({metrics['checkpoint']}) on {metrics['data']}, {metrics['split']} split, "
          f"{metrics['num_samples']} samples")  # fmt: skip
    print("  ".join(f"{key} {metrics[key]:.4f}" for key in ("loss", "acc", "acc5", "mean_class_acc") if key in metrics))
    if metrics["pathways"]:
        print("pathways: " + "  ".join(f"{name} {value:.4f}" for name, value in metrics["pathways"].items()))


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    model = load_model(args.checkpoint)
    data = open_data(model, args.data, args.split)
    metrics = evaluate(model, data, batch_size=args.batch_size)
    written = write_evaluation(args.out, metrics, show_predictions(model, data))
    _print_metrics(metrics)
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


def cli() -> None:
    sys.exit(main())


# `import raymc.evaluate` rebinds raymc.evaluate to this module: calling it still runs the API function.
callable_module(__name__, evaluate)

if __name__ == "__main__":
    cli()
