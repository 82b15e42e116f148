"""kdkeras.idx: the IDX reader on generated files, valid and broken."""

import gzip

import numpy as np
import pytest
from conftest import idx_bytes

from kdkeras.idx import IDXError, parse_idx, read_idx


def test_parse_idx_round_trips_uint8():
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(parse_idx(idx_bytes(array)), array)


def test_parse_idx_reads_big_endian_int32():
    data = (
        bytes([0, 0, 0x0C, 1]) + (2).to_bytes(4, "big") + (1).to_bytes(4, "big") + (-2).to_bytes(4, "big", signed=True)
    )
    np.testing.assert_array_equal(parse_idx(data), [1, -2])


def test_read_idx_gzip_and_plain(tmp_path):
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    (tmp_path / "plain").write_bytes(idx_bytes(array))
    with gzip.open(tmp_path / "packed.gz", "wb") as f:
        f.write(idx_bytes(array))
    np.testing.assert_array_equal(read_idx(tmp_path / "plain"), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "packed.gz"), array)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x01\x00\x08\x01", "bad magic"),
        (bytes([0, 0, 0x07, 1]) + (1).to_bytes(4, "big") + b"\x00", "unknown IDX type"),
        (bytes([0, 0, 0x08, 2]) + (1).to_bytes(4, "big"), "truncated IDX header"),
        (bytes([0, 0, 0x08, 1]) + (5).to_bytes(4, "big") + b"\x00\x01", "truncated: header says shape \\(5,\\)"),
        (bytes([0, 0, 0x08, 1]) + (1).to_bytes(4, "big") + b"\x00\x01", "trailing bytes"),
    ],
)
def test_parse_idx_rejects_broken_data(data, message):
    with pytest.raises(IDXError, match=message):
        parse_idx(data, "f.idx")


def test_read_idx_names_a_truncated_gzip_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(idx_bytes(np.zeros((50, 28, 28), np.uint8)))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(IDXError, match=f"{path}: corrupt or truncated gzip"):
        read_idx(path)
