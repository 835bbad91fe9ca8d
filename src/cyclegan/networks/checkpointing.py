"""Activation checkpointing: networks that keep only some activations and recompute the rest in backward.

Used for ``--checkpoint_activations``: the same gradients in less memory, for some more time per step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class Checkpointed(nn.Module):
    """A network that can trade compute for memory: with ``checkpoint_activations`` set (a plain attribute,
    so module trees and ``state_dict`` keys stay the reference's), training forwards keep only the inputs of
    their segments and recompute the rest in the backward pass. Gradients are the same; set it with
    :func:`set_checkpointing`."""

    checkpoint_activations = False

    def checkpointing(self) -> bool:
        return self.checkpoint_activations and self.training and torch.is_grad_enabled()


def set_checkpointing(net: nn.Module, on: bool) -> None:
    """Turn activation checkpointing on or off in every part of ``net`` that supports it."""
    for module in net.modules():
        if isinstance(module, Checkpointed):
            module.checkpoint_activations = on


def run_checkpointed(modules: Iterable[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """``modules`` applied in turn, keeping only ``x`` for the backward pass (the rest is recomputed there).

    Leading in-place activations run outside the checkpoint: they change ``x`` itself, so replaying them on
    it would apply them twice. Dropout replays the same mask (the RNG state is restored for the recompute),
    autocast is replayed as it was, and batch-norm running statistics are not updated a second time.
    """
    layers = list(modules)
    start = 0
    while start < len(layers) and getattr(layers[start], "inplace", False):
        x = layers[start](x)
        start += 1
    segment = layers[start:]
    if not segment:
        return x
    stats = [b for layer in segment for b in layer.buffers()]
    if not stats or torch.compiler.is_compiling():  # a compiled graph's recomputation updates nothing
        return checkpoint(_chain, segment, x, use_reentrant=False)
    return checkpoint(
        _chain, segment, x, use_reentrant=False, context_fn=lambda: (contextlib.nullcontext(), _kept(stats))
    )


def _chain(layers: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        x = layer(x)
    return x


@contextlib.contextmanager
def _kept(buffers: list[torch.Tensor]) -> Iterator[None]:
    """Restores the buffers (running statistics) a recomputation would update again."""
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved, strict=True):
                buffer.copy_(value)
