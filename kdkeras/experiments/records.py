"""What a row's JSON records of the settings it ran with, and when a finished row still counts: its spec equals the
one the config gives now, ignoring what cannot change its result (label, seed list, keys added later at their
default)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

from kdkeras.experiments.config import ROW_DEFAULTS

# Row keys added after results were recorded (left out of a row's spec while at their `ROW_DEFAULTS` value).
_LATER_KEYS = ("teacher", "teacher_row", "teacher_mimicry", "teacher_cache", "unlabeled_examples", "mixed_fraction")
# Row keys that do not change what a row computes for one seed: its label, and which other seeds it runs.
_NOT_SETTINGS = ("label", "seeds")


def row_settings(row: dict) -> dict:
    """The row keys that decide one seed's result: not the label or seed list, and not a later key at its default
    (so rows finished before that key existed still match)."""
    return {k: v for k, v in row.items() if k not in _NOT_SETTINGS and not (k in _LATER_KEYS and v == ROW_DEFAULTS[k])}


def recorded_spec(record: dict) -> dict | None:
    """A row JSON's spec with its row settings filtered as `Experiment.row_spec` filters them (a row recorded
    while the label, seeds or a later key were still written out still matches)."""
    spec = record.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("row"), dict):
        return spec
    return {**spec, "row": row_settings(spec["row"])}


def fingerprint(spec: dict) -> str:
    """A short digest of a spec (a teacher's, a teacher row's) that a row's spec holds instead of the whole."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def train_settings(config) -> dict:
    """The parts of a `TrainConfig` that change the result (not where logs and checkpoints go), leaving out those
    at their default: a field added to `TrainConfig` later does not make every finished row stale."""
    from kdkeras.settings import result_settings

    defaults = {field.name: field.default for field in dataclasses.fields(config)}
    return {k: v for k, v in result_settings(config).items() if k == "seed" or v != defaults[k]}


def read_json(path: str):
    """A result file's content; None when it does not exist."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: unreadable result file ({error}); delete it to run that row again") from None
