"""CLI: turn datasets into Parquet shards for training, or write small demo files.

    python -m raymc.prepare nyu --mat nyu_depth_v2_labeled.mat [--splits splits.mat] --out DIR
    python -m raymc.prepare demo-nyu --out demo.mat [--n 480] [--seed 0]
    python -m raymc.prepare imagenet --data-dir DIR --out OUT [--max-side N] [--on-bad-image skip]
    python -m raymc.prepare demo-imagenet --out DIR [--classes 10] [--per-class 20]

--out takes a local path or a URI (s3://bucket/prefix; an S3-compatible store through
AWS_ENDPOINT_URL): shard tasks write there directly, and a prepared data set on object storage is
published as a generation named by the prefix's _LATEST.json marker (raymc.data.publish).
Every flag accepts dashes or underscores (--test-fraction or --test_fraction).
Each subcommand is one `_add_<name>_parser` function whose parser sets `func`, the runner.
"""

from __future__ import annotations

import argparse
import logging
import sys

from raymc import storage
from raymc.data.demo import write_demo_imagenet, write_demo_nyu
from raymc.data.imagenet import BAD_IMAGE_POLICIES
from raymc.data.imagenet_prepare import BAD_IMAGES_FILE, prepare_imagenet
from raymc.data.nyu import DEFAULT_TEST_FRACTION, PROTOCOLS
from raymc.data.nyu_prepare import prepare_nyu
from raymc.data.publish import live_folder
from raymc.errors import cli_main
from raymc.flags import flag_names


def get_args_parser() -> argparse.ArgumentParser:
    """The parser with one subcommand per dataset or demo."""
    parser = argparse.ArgumentParser(prog="python -m raymc.prepare", description="Prepare datasets for raymc training.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_nyu_parser(subparsers)
    _add_demo_nyu_parser(subparsers)
    _add_imagenet_parser(subparsers)
    _add_demo_imagenet_parser(subparsers)
    return parser


def _add_nyu_parser(subparsers: argparse._SubParsersAction) -> None:
    """`nyu`: nyu_depth_v2_labeled.mat (+ splits.mat) -> Parquet shards + dataset_info.json."""
    p = subparsers.add_parser("nyu", help="NYU Depth V2 labeled .mat -> Parquet shards")
    p.add_argument(*flag_names("mat"), required=True, help="nyu_depth_v2_labeled.mat (MATLAB v7.3)")
    p.add_argument(
        *flag_names("splits"),
        default=None,
        help="official splits.mat (trainNdxs, testNdxs); without it, a seeded split that keeps every room on one side",
    )
    p.add_argument(*flag_names("protocol"), default="nyu10", choices=sorted(PROTOCOLS))
    p.add_argument(*flag_names("seed"), type=int, default=0, help="seed of the grouped split")
    p.add_argument(
        *flag_names("test_fraction"),
        dest="test_fraction",
        type=float,
        default=DEFAULT_TEST_FRACTION,
        help="test share of the grouped split (default 654/1449)",
    )
    p.add_argument(
        *flag_names("image_size"),
        dest="image_size",
        type=int,
        default=None,
        help="scale the shorter side down to this many pixels (default: full size)",
    )
    _add_output_arguments(p)
    p.set_defaults(func=_run_nyu)


def _add_output_arguments(p: argparse.ArgumentParser) -> None:
    """--out and --overwrite of a data set preparer."""
    p.add_argument(*flag_names("out"), required=True, help="output folder or URI prefix (s3://bucket/prefix)")
    p.add_argument(*flag_names("overwrite"), action="store_true", help="replace an existing --out")


def _add_demo_nyu_parser(subparsers: argparse._SubParsersAction) -> None:
    """`demo-nyu`: a small learnable .mat in the real NYU layout."""
    p = subparsers.add_parser("demo-nyu", help="write a small demo NYU Depth V2 .mat")
    p.add_argument(*flag_names("out"), required=True, help="the .mat file to write (local path or URI)")
    p.add_argument(*flag_names("n"), type=int, default=480, help="number of frames")
    p.add_argument(*flag_names("seed"), type=int, default=0)
    p.add_argument(*flag_names("height"), type=int, default=120)
    p.add_argument(*flag_names("width"), type=int, default=160)
    p.set_defaults(func=_run_demo_nyu)


def _add_imagenet_parser(subparsers: argparse._SubParsersAction) -> None:
    """`imagenet`: ImageFolder train/ + val/ -> Parquet shards + dataset_info.json."""
    p = subparsers.add_parser("imagenet", help="ImageNet ImageFolder -> Parquet shards")
    p.add_argument(
        *flag_names("data_dir"),
        dest="data_dir",
        required=True,
        help="folder holding train/<wnid>/*.JPEG and val/<wnid>/*.JPEG",
    )
    p.add_argument(
        *flag_names("max_side"),
        dest="max_side",
        type=int,
        default=None,
        help="scale images down to this many pixels on the long side (JPEG quality 90); "
        "default: keep the original images",
    )
    p.add_argument(
        *flag_names("on_bad_image"),
        dest="on_bad_image",
        default="skip",
        choices=BAD_IMAGE_POLICIES,
        help=f"truncated, undecodable or non-image files: skip (listed in {BAD_IMAGES_FILE}) "
        "or fail (stop, naming the file)",
    )
    _add_output_arguments(p)
    p.set_defaults(func=_run_imagenet)


def _add_demo_imagenet_parser(subparsers: argparse._SubParsersAction) -> None:
    """`demo-imagenet`: a small learnable ImageFolder with ImageNet's odd and bad files."""
    p = subparsers.add_parser("demo-imagenet", help="write a small demo ImageNet ImageFolder")
    p.add_argument(*flag_names("out"), required=True, help="the folder to write (local path or URI)")
    p.add_argument(*flag_names("classes"), type=int, default=10, help="number of classes")
    p.add_argument(*flag_names("per_class"), dest="per_class", type=int, default=20)
    p.add_argument(*flag_names("val_per_class"), dest="val_per_class", type=int, default=5)
    p.add_argument(*flag_names("seed"), type=int, default=0)
    p.add_argument(*flag_names("width"), type=int, default=160, help="mean image width (+-20%%)")
    p.add_argument(*flag_names("height"), type=int, default=120, help="mean image height (+-20%%)")
    p.add_argument(*flag_names("quality"), type=int, default=90, help="JPEG quality")
    p.set_defaults(func=_run_demo_imagenet)


def _run_nyu(args: argparse.Namespace) -> None:
    """Prepare NYU and print the counts per split."""
    info = prepare_nyu(
        args.mat,
        args.out,
        splits=args.splits,
        protocol=args.protocol,
        seed=args.seed,
        test_fraction=args.test_fraction,
        overwrite=args.overwrite,
        image_size=args.image_size,
    )
    print(
        f"prepared {info['num_samples']} NYU Depth V2 samples ({info['protocol']}, "
        f"{info['split_source']} split, {info['image_height']}x{info['image_width']}) in {args.out}"
    )
    for split, counts in info["counts"].items():
        per_class = ", ".join(f"{name} {n}" for name, n in counts.items())
        print(f"  {split:5s} {sum(counts.values()):5d}: {per_class}")


def _run_demo_nyu(args: argparse.Namespace) -> None:
    """Write the demo .mat and say where."""
    path = write_demo_nyu(args.out, n=args.n, seed=args.seed, height=args.height, width=args.width)
    print(f"wrote a demo NYU Depth V2 file ({args.n} frames, {args.height}x{args.width}) to {path}")


def _run_imagenet(args: argparse.Namespace) -> None:
    """Prepare ImageNet and print the counts per split and the bad files left out."""
    info = prepare_imagenet(
        args.data_dir,
        args.out,
        max_side=args.max_side,
        on_bad_image=args.on_bad_image,
        overwrite=args.overwrite,
    )
    print(f"prepared {info['num_samples']} images of {len(info['classes'])} classes in {args.out}")
    for split, counts in info["counts"].items():
        print(f"  {split:5s} {sum(counts.values()):8d}")
    if info["bad_images"]:
        listing = storage.join(live_folder(args.out), BAD_IMAGES_FILE)
        print(f"left out {info['bad_images']} bad files, listed in {listing}")


def _run_demo_imagenet(args: argparse.Namespace) -> None:
    """Write the demo ImageFolder and say where."""
    path = write_demo_imagenet(
        args.out,
        classes=args.classes,
        per_class=args.per_class,
        val_per_class=args.val_per_class,
        seed=args.seed,
        image_size=(args.width, args.height),
        quality=args.quality,
    )
    print(
        f"wrote a demo ImageNet folder ({args.classes} classes, {args.per_class} train and "
        f"{args.val_per_class} val images per class) to {path}"
    )


@cli_main
def main(argv: list[str] | None = None) -> int:
    """Run one subcommand."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args.func(args)
    return 0


def cli() -> None:
    """Console entry point."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
