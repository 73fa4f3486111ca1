"""Local paths and URIs (s3://, gs://, ...) alike: one place that resolves either to a pyarrow
filesystem, reads and writes files and JSON there, and never leaves a half-written file.

Local writes go to a temporary file in the same folder that then replaces the target
(`os.replace`); an object store's single upload is atomic by itself. This module does not import ray.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import pyarrow.fs

PathLike = str | os.PathLike
P = TypeVar("P", str, Path)


def is_uri(location: PathLike) -> bool:
    return "://" in os.fspath(location)


def as_uri(location: PathLike) -> str:
    """A URI as given; a local path made absolute (what Ray Train, Ray Data and pyarrow take)."""
    text = os.fspath(location)
    return text if is_uri(text) else str(Path(text).expanduser().resolve())


def join(location: PathLike, *names: str) -> str:
    return "/".join([os.fspath(location).rstrip("/"), *names])


def filesystem(location: PathLike) -> tuple[pyarrow.fs.FileSystem, str]:
    """The filesystem of a local path or URI, and the path within it."""
    return pyarrow.fs.FileSystem.from_uri(as_uri(location))


def _resolve(location: PathLike, fs: pyarrow.fs.FileSystem | None) -> tuple[pyarrow.fs.FileSystem, str]:
    """`location` within `fs` when one is given (e.g. a Ray checkpoint's), else resolved from it."""
    return (fs, os.fspath(location)) if fs is not None else filesystem(location)


def is_file(location: PathLike, *, fs: pyarrow.fs.FileSystem | None = None) -> bool:
    fs, path = _resolve(location, fs)
    return fs.get_file_info(path).type == pyarrow.fs.FileType.File


def read_bytes(location: PathLike, *, fs: pyarrow.fs.FileSystem | None = None) -> bytes:
    fs, path = _resolve(location, fs)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def read_json(location: PathLike, *, fs: pyarrow.fs.FileSystem | None = None) -> Any:
    return json.loads(read_bytes(location, fs=fs))


def write_bytes(location: P, data: bytes) -> P:
    """Write a whole file atomically and return its location: locally a temporary sibling
    (flushed to disk) replaces the target; on an object store one upload is atomic already."""
    if is_uri(location):
        fs, path = filesystem(location)
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as stream:
            stream.write(data)
        return location
    path = Path(location)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as file:  # plain open keeps the umask's permissions
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return location


def write_json(location: P, obj: Any) -> P:
    """Write obj as indented JSON (numpy numbers as Python ones, NaN and infinities as null)."""
    return write_bytes(location, json_bytes(obj))


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n").encode()


def jsonable(obj: Any) -> Any:
    """obj with numpy numbers as Python ones, non-finite floats as None, paths as strings."""
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, Mapping):
        return {str(key): jsonable(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(value) for value in obj]
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{obj!r} of type {type(obj).__name__} cannot be written as JSON")


def upload_folder(local_folder: PathLike, location: PathLike) -> None:
    """Copy a complete local folder (staged beforehand) into `location`, local or remote."""
    fs, path = filesystem(location)
    pyarrow.fs.copy_files(os.fspath(local_folder), path, destination_filesystem=fs)
