"""The networks: generators and discriminators registered by name, their layers and weight loading.

Importing the package registers every built-in architecture.
"""

from cyclegan.networks import patchgan, resnet, unet  # noqa: F401  (registration)
from cyclegan.networks.checkpointing import set_checkpointing
from cyclegan.networks.registry import (
    DISCRIMINATORS,
    GENERATORS,
    MIN_SIZE,
    build_discriminator,
    build_generator,
    input_channels,
    size_multiple,
)
from cyclegan.networks.weights import check_weights, generator_config_from_state_dict, load_weights

__all__ = [
    "DISCRIMINATORS",
    "GENERATORS",
    "MIN_SIZE",
    "build_discriminator",
    "build_generator",
    "check_weights",
    "generator_config_from_state_dict",
    "input_channels",
    "load_weights",
    "set_checkpointing",
    "size_multiple",
]
