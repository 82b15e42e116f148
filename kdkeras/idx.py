"""Reader for the IDX format of MNIST and Fashion-MNIST (`train-images-idx3-ubyte.gz` …).

Format (LeCun et al., http://yann.lecun.com/exdb/mnist/): two zero bytes, a type code, the number of dimensions,
then one big-endian uint32 per dimension, then the data in row-major order, big-endian.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np

_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IDXError(ValueError):
    """A file that is not a complete IDX file; the message names the file and what is wrong."""


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parses the bytes of an (uncompressed) IDX file into an array.

    Args:
        data: the file content.
        source: the file name, for error messages.

    Returns:
        The array, in native byte order.

    Raises:
        IDXError: for a bad magic number, an unknown type code, or a data length that does not match the header.
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise IDXError(f"{source}: not an IDX file (bad magic number)")
    type_code, ndim = data[2], data[3]
    if type_code not in _DTYPES:
        raise IDXError(f"{source}: unknown IDX type code 0x{type_code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXError(f"{source}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _DTYPES[type_code]
    expected = math.prod(shape) * dtype.itemsize
    found = len(data) - header
    if found != expected:
        what = "truncated" if found < expected else "has trailing bytes"
        raise IDXError(f"{source}: {what}: header says shape {shape} ({expected} bytes of data), file holds {found}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file, gzip-compressed (`.gz`) or not.

    Raises:
        IDXError: when the file is not a valid or complete (gzip) IDX file.
        FileNotFoundError: when it does not exist.
    """
    path = os.fspath(path)
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise IDXError(f"{path}: corrupt or truncated gzip file ({error})") from None
    return parse_idx(data, path)
