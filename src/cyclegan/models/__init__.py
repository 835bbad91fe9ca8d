"""The models, registered by name: ``--model cycle_gan`` (the default), and every other registered one.

Importing the package registers every built-in model.
"""

from cyclegan.models import cut, cycle_gan, pix2pix  # noqa: F401  (registration)
from cyclegan.models.base import (
    Direction,
    Model,
    Trainer,
    build_model,
    check_training_size,
    evaluating,
    model_type,
)

__all__ = ["Direction", "Model", "Trainer", "build_model", "check_training_size", "evaluating", "model_type"]
