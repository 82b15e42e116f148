"""Keras Applications as teachers: `build_model("applications:MobileNetV3Small", input_shape, classes,
weights="imagenet")` (CLI: `kdkeras train --model applications:MobileNetV3Small --weights imagenet`), the
architecture without its ImageNet head, global average pooling and a new dense head for the dataset's classes.

The model takes the dataset's images as kdkeras feeds them (pixels in [0, 255], any size and gray or RGB): in front
of the architecture it converts them to RGB, resizes those smaller than the architecture's minimum up to it, and
applies the preprocessing the ImageNet weights expect (where the architecture does not include it). Fine-tune it with
`kdkeras train` (a lower `--lr` keeps more of what ImageNet taught), then let it teach: it has no `stageN` layers,
so it teaches through its output (the default terms), not feature hints.
"""

from __future__ import annotations

import os
import re

import keras
from keras import layers

PREFIX = "applications:"

# What each family does to [0, 255] RGB pixels before its ImageNet weights (keras.applications' preprocess_input):
# included in the architecture itself, scaled to [-1, 1] ("tf"), or Caffe's BGR with the ImageNet mean removed.
_PREPROCESSING = {
    "tf": ("InceptionResNetV2", "InceptionV3", "MobileNet", "MobileNetV2", "NASNetLarge", "NASNetMobile",
           "ResNet101V2", "ResNet152V2", "ResNet50V2", "Xception"),
    "torch": ("DenseNet121", "DenseNet169", "DenseNet201"),
    "caffe": ("ResNet101", "ResNet152", "ResNet50", "VGG16", "VGG19"),
}  # fmt: skip
# Smallest input each architecture takes (32×32 for the rest); NASNet's ImageNet weights need their own size.
_MIN_SIZE = {"InceptionResNetV2": 75, "InceptionV3": 75, "Xception": 71, "NASNetMobile": 224, "NASNetLarge": 331}


def names() -> list[str]:
    """The architectures `keras.applications` offers, e.g. `MobileNetV3Small`."""
    return sorted(name for name in dir(keras.applications) if name[:1].isupper())


def application(name: str, input_shape, num_classes: int, weights: str | None = None) -> keras.Model:
    """The Keras Application `name` as a classifier of `num_classes` for `input_shape` images.

    Args:
        name: a `keras.applications` architecture (`names()`).
        weights: None (random initialization), `"imagenet"` (downloaded once into `~/.keras/models/`), or the path of
            a weights file of the architecture without its top (what Keras would download).

    Raises:
        ValueError: for an unknown name, or ImageNet weights that cannot be had (the message says where to put
            the file).
    """
    if name not in names():
        raise ValueError(f"unknown Keras Application '{name}'; choose one of: {', '.join(names())}")
    if weights not in (None, "imagenet") and not os.path.isfile(weights):
        raise ValueError(f"weights must be none, imagenet or a weights file; {weights} is no file")
    from kdkeras.adapters import ImageConversion

    height, width, _ = (int(d) for d in input_shape)
    size = _MIN_SIZE.get(name, 32)
    fixed = name.startswith("NASNet")  # Its ImageNet weights exist for one input size only.
    shape = (size, size, 3) if fixed else (max(height, size), max(width, size), 3)
    images = keras.Input(tuple(int(d) for d in input_shape), name="images")
    x = ImageConversion(shape, name="to_rgb")(images)
    for layer in _preprocessing(name):
        x = layer(x)
    try:
        base = getattr(keras.applications, name)(include_top=False, weights=weights, input_shape=shape, pooling="avg")
    except Exception as error:  # Keras raises URL, OS and value errors for weights it cannot fetch or read.
        if weights == "imagenet":
            file = re.search(r"https?://\S+/([^/\s:]+\.h5)", str(error))
            raise ValueError(
                f"{name}: its ImageNet weights could not be downloaded (no internet?): put Keras' file "
                f"{file.group(1) if file else '(notop weights)'} into ~/.keras/models/, or pass a weights file as "
                "--weights"
            ) from None
        raise ValueError(f"{name}: {type(error).__name__}: {str(error).strip().splitlines()[0]}") from None
    logits = layers.Dense(int(num_classes), name="logits")(base(x))
    return keras.Model(images, logits, name=name.lower())


def _preprocessing(name: str) -> list[layers.Layer]:
    """The pixel scaling `name`'s ImageNet weights were trained with, as layers (saved with the model)."""
    mode = next((mode for mode, family in _PREPROCESSING.items() if name in family), "included")
    if mode == "tf":
        return [layers.Rescaling(1 / 127.5, offset=-1.0, name="to_minus1_1")]
    if mode == "torch":
        std = (0.229, 0.224, 0.225)
        return [
            layers.Rescaling(1 / 255, name="to_0_1"),
            layers.Normalization(mean=(0.485, 0.456, 0.406), variance=[s * s for s in std], name="imagenet_norm"),
        ]
    if mode == "caffe":  # RGB -> BGR, then the ImageNet mean of each BGR channel removed.
        return [
            ReverseChannels(name="to_bgr"),
            layers.Normalization(mean=(103.939, 116.779, 123.68), variance=(1.0, 1.0, 1.0), name="imagenet_mean"),
        ]
    return []  # The architecture scales its input itself.


@keras.saving.register_keras_serializable(package="kdkeras")
class ReverseChannels(layers.Layer):
    """RGB to BGR (Caffe's channel order, which the ResNet and VGG ImageNet weights expect)."""

    def call(self, images):
        return keras.ops.flip(images, axis=-1)
