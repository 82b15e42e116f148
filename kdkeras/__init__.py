"""kdkeras: teacher–student collaborative knowledge distillation (TSKD) for small image classifiers, on Keras 3."""

__version__ = "0.1.0"
