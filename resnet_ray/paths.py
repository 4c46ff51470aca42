"""Paths as a person types them: `~` and relative paths are resolved against the directory the
command runs in, once, when its options are parsed; a URI stays a URI. These are argparse
`type=` functions, so every later step, Ray's processes included, sees absolute paths."""

from __future__ import annotations

import argparse
import os

# The schemes pyarrow's filesystems open (Ray Train's storage and Ray Data's reads go
# through them); anything else pyarrow rejects with "Unrecognized filesystem type".
URI_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "file")
BUILTIN = "builtin:"


def is_uri(value: str) -> bool:
    return "://" in str(value)


def _local(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return os.path.abspath(os.path.expanduser(value))


def local(value: str) -> str:
    """A local file or directory (an export, a model directory, a photo, a YAML file)."""
    if is_uri(value):
        raise argparse.ArgumentTypeError(f"expected a local path, got the URI {value!r}")
    return _local(value)


def output(value: str) -> str:
    """A local directory a command writes (created with its parents if need be): refused at
    once, before anything runs, where a file stands in its way or it cannot be written."""
    path = local(value)
    if os.path.exists(path) and not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"expected a directory to write into; {path} is a file")
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"expected a directory to write into; {parent} is a "
                                         f"file, so {path} cannot be made")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"expected a directory to write into; {parent} is "
                                         f"not writable")
    return path


def location(value: str) -> str:
    """Where a run writes: a local directory (as output()) or a URI of a filesystem pyarrow
    opens (--storage)."""
    return _uri(value) if is_uri(value) else output(value)


def _uri(value: str) -> str:
    scheme = value.split("://", 1)[0].lower()
    if scheme not in URI_SCHEMES:
        schemes = ", ".join(f"{s}://" for s in URI_SCHEMES)
        raise argparse.ArgumentTypeError(
            f"expected a local path or a URI of one of {schemes}; got {value!r}")
    return value


def data(value: str) -> str:
    """--data: builtin:NAME, a URI of a filesystem pyarrow opens, or a local path."""
    if value.startswith(BUILTIN):
        return value
    return _uri(value) if is_uri(value) else _local(value)


def local_or_builtin(value: str) -> str:
    """A local .h5 file or builtin:NAME (evaluate's --data)."""
    return value if value.startswith(BUILTIN) else local(value)


TYPES = (local, output, location, data, local_or_builtin)


def shown(path) -> str:
    """A path as a person reads it back: relative to the directory the command runs in when it
    lies below it (as it was most likely typed), else absolute; a URI as it is."""
    text = str(path)
    if is_uri(text) or not os.path.isabs(text):
        return text
    try:
        rel = os.path.relpath(text)
    except OSError:  # the working directory is gone (a job's, once Ray removed it)
        return text
    return text if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel
