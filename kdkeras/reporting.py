"""What every report shares: its Markdown tables, the description of the machine its numbers come from, and plot
styles that tell many curves apart."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence], numeric: Sequence[bool] | None = None) -> str:
    """A Markdown table; cells are written with `str`, so format numbers before passing them.

    Args:
        header: the column titles.
        rows: one sequence of cells per row, as many as `header`.
        numeric: per column, whether it is right-aligned (numbers); default all left-aligned.
    """
    numeric = list(numeric) if numeric is not None else [False] * len(header)
    if len(numeric) != len(header):
        raise ValueError(f"markdown_table: {len(header)} columns but {len(numeric)} alignment flags")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if right else "---" for right in numeric) + "|"]
    for row in rows:
        cells = [str(cell) for cell in row]
        if len(cells) != len(header):
            raise ValueError(f"markdown_table: a row has {len(cells)} cells, the header {len(header)}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> dict:
    """What the numbers were measured on: CPU cores, processor, GPUs, Python, TensorFlow and Keras versions."""
    import keras
    import tensorflow as tf

    return {
        "cpu_cores": os.cpu_count(),
        "processor": platform.machine(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def machine_text(info: dict | None = None) -> str:
    """`machine()` in one line, e.g. "2 CPU cores (x86_64), no GPU, TensorFlow 2.21.0, Keras 3.15.1"."""
    info = info or machine()
    gpus = f"{info['gpus']} GPU(s)" if info["gpus"] else "no GPU"
    versions = f"TensorFlow {info['tensorflow']}, Keras {info['keras']}"
    return f"{info['cpu_cores']} CPU cores ({info['processor']}), {gpus}, {versions}"


def distinct_styles(key: str, values: list):
    """An endless iterator of `{key: value, "color": colour}` styles (e.g. `key="marker"`), no two alike until every
    pair is used: the ten tab10 colours with the first value, then with the next one, and so on."""
    import matplotlib.pyplot as plt
    from cycler import cycler

    return (cycler(**{key: values}) * cycler(color=plt.get_cmap("tab10").colors))()
