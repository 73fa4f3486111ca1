"""`python -m raymc.predict --checkpoint PATH [--data PATH] [--split test] --out FILE.parquet`.

Writes one row per sample (see `raymc.api.predict` for the columns), sorted by `index`, as a
single Parquet file, e.g. for `pandas.read_parquet`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from raymc import storage
from raymc.api import add_inference_arguments, load_model, open_data, predict
from raymc.data.pipeline import naming_damaged_shards
from raymc.errors import ConfigError, cli_main
from raymc.flags import flag_names


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m raymc.predict",
        description="Predict the class of every sample of a split with Ray Data batch inference "
        "and write the predictions (top-5 classes and probabilities) to a Parquet file.",
    )
    add_inference_arguments(parser)
    parser.add_argument(*flag_names("out"), required=True, metavar="FILE", help="Parquet file to write")
    parser.add_argument("--probs", action="store_true", help="also write every class's probability")
    return parser


def write_predictions(predictions: ray.data.Dataset, out: str | Path) -> int:
    """Collect the predictions, sort them by index and write one Parquet file atomically; return the row count."""
    if not storage.is_uri(out) and Path(out).is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name such as {Path(out) / 'predictions.parquet'}")
    table = pa.concat_tables(ray.get(predictions.to_arrow_refs())).sort_by("index")
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    storage.write_bytes(out, buffer.getvalue().to_pybytes())
    return table.num_rows


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    model = load_model(args.checkpoint)
    data = open_data(model, args.data, args.split, shared_fs=args.shared_fs)
    with naming_damaged_shards(data.source):
        rows = write_predictions(predict(model, data, batch_size=args.batch_size, probs=args.probs), args.out)
    print(f"wrote {rows} predictions to {args.out}")
    return 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
