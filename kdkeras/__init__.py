"""kdkeras: teacher–student collaborative knowledge distillation (TSKD) for small image classifiers, on Keras 3.

    import kdkeras

    train, info = kdkeras.load_dataset("fashion_mnist", "train", 128, augment_images=True)
    student = kdkeras.build_model("ds_alexnet", info.input_shape, info.num_classes, width=0.5)
    distiller = kdkeras.Distiller(teacher, student, terms=kdkeras.terms.preset("kd_t1"))
    distiller.compile("adam", metrics=["accuracy"])
    distiller.fit(train, epochs=10)

or the whole recipe in one call: `kdkeras.distill(teacher, student, (x, y), epochs=10)` (`kdkeras.train` for a
model on the labels alone). The names load on first use, so `import kdkeras` (and the command line's `--help`)
does not start TensorFlow.
"""

import importlib

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "Distiller": "kdkeras.distiller",
    "build_model": "kdkeras.models",
    "load_dataset": "kdkeras.data",
    "from_arrays": "kdkeras.data",
    "train": "kdkeras.recipe",
    "distill": "kdkeras.recipe",
    "TrainConfig": "kdkeras.training",
    "load_model": "kdkeras.artifacts",
}
_MODULES = ("terms", "losses", "callbacks", "presets")

__all__ = sorted([*_EXPORTS, *_MODULES])


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _MODULES:
        return importlib.import_module(f"kdkeras.{name}")
    raise AttributeError(f"module 'kdkeras' has no attribute {name!r}")


def __dir__():
    return __all__
