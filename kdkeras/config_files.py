"""Reading option and experiment files: JSON or YAML holding one mapping, plain data only (no TensorFlow here, so
the command line can read them before anything heavy is imported)."""

from __future__ import annotations

import json


def read_mapping(path: str) -> dict:
    """A JSON or YAML file (by its ending) holding one mapping; YAML through `yaml.safe_load` (plain data only)."""
    import yaml

    try:
        with open(path) as f:
            values = yaml.safe_load(f) if path.endswith((".yaml", ".yml")) else json.load(f)
    except OSError as error:
        raise OSError(f"cannot read config {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON ({error})") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: invalid YAML ({' '.join(str(error).split())})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of names to values")
    return values
