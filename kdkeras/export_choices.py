"""What `kdkeras.export` can write: the export formats and the TFLite precisions.

Kept apart from `kdkeras.export`, which imports TensorFlow, so that the command line can offer these choices (and
answer `--help`) before TensorFlow is loaded.
"""

QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
FORMATS = ("saved_model", "tflite")


def check_quantization(quantize: str) -> None:
    """Raises a one-line `ValueError` unless `quantize` is one of `QUANTIZATIONS`."""
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization '{quantize}'; choose one of: {', '.join(QUANTIZATIONS)}")
