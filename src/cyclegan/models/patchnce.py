"""CUT's patch-wise contrastive loss (PatchNCE) and the pieces it needs: the projection head that samples
and embeds feature patches, and the source of its random draws.

A patch of the output G(x) is pulled towards the patch of the input x at the same place (its positive) and
pushed away from the other sampled patches of the same image (its negatives), in the embedding of a small
MLP per generator layer. Names, arithmetic and order of operations follow the reference implementation
(``PatchSampleF``, ``Normalize``, ``PatchNCELoss``), so its weights load and its numbers are reproduced.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

EPSILON = 1e-7  # added to the norm before dividing, as the reference's Normalize does
TINY = 1e-30  # squared lengths below this count as zero (their rows are zero for all purposes)


class Draws(Protocol):
    """Where CUT's random choices come from: a trainer takes one, so a test can replay recorded draws."""

    def flip(self) -> bool:
        """Whether to flip this step's input for flip equivariance (one draw per training forward)."""
        ...

    def patches(self, positions: Sequence[int], count: int) -> list[torch.Tensor]:
        """For one PatchNCE loss: per layer, up to ``count`` distinct indices below that layer's number of
        positions (height x width), as a CPU LongTensor."""
        ...


class SeededDraws:
    """The draws of a run: one seeded CPU generator, whose state a checkpoint keeps (resume is exact)."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def flip(self) -> bool:
        return bool(torch.rand((), generator=self.generator) < 0.5)

    def patches(self, positions: Sequence[int], count: int) -> list[torch.Tensor]:
        return [torch.randperm(n, generator=self.generator)[:count] for n in positions]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class PatchSampleF(nn.Module):
    """The projection head: per feature layer ``i``, an MLP ``mlp_i`` (linear, ReLU, linear, ``channels``
    wide) applied to the sampled patches' feature vectors, whose outputs are L2-normalised.

    Built from the generator's feature channels (the reference creates it at the first forward pass; here
    the channels come from a shape-only pass, so the head exists with the model, like any network).
    """

    def __init__(self, in_channels: Sequence[int], channels: int = 256) -> None:
        super().__init__()
        for i, c in enumerate(in_channels):
            self.add_module(
                f"mlp_{i}", nn.Sequential(nn.Linear(c, channels), nn.ReLU(), nn.Linear(channels, channels))
            )

    def forward(
        self, features: Sequence[torch.Tensor], patch_ids: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Per layer, the embedded patches at ``patch_ids`` of every image: (images x patches) x channels,
        image by image, in float32."""
        out = []
        for i, (feature, ids) in enumerate(zip(features, patch_ids, strict=True)):
            patches = sample_patches(feature, ids.to(feature.device))
            out.append(l2_normalize(self.get_submodule(f"mlp_{i}")(patches).float()))
        return out


def sample_patches(feature: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The feature vectors at positions ``ids`` (of the flattened height x width) of each image:
    (images x patches) x channels, image by image.

    The reference gathers them from the features permuted to channels-last, whose gradient then reaches the
    generator in channels-last strides; PyTorch 2.14's CPU instance-norm backward computes wrong gradients
    from those at batch size 1 (tests/test_cut.py shows it). Gathering along the flattened positions gives
    the same vectors, bit for bit, and a contiguous gradient.
    """
    return feature.flatten(2)[:, :, ids].transpose(1, 2).flatten(0, 1)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows divided by their length (plus ``EPSILON``), as the reference computes it, except that a row of
    zeros (an MLP whose ReLUs are all off, common on flat image regions) gets a zero gradient, not the
    reference's NaN (the square root's infinite slope at 0 times 0); other rows are unchanged, bit for bit."""
    return x.div(x.pow(2).sum(1, keepdim=True).clamp_min(TINY).pow(0.5) + EPSILON)


def patch_nce_loss(query: torch.Tensor, key: torch.Tensor, images: int, temperature: float) -> torch.Tensor:
    """The InfoNCE loss of each query patch (rows of ``query``, image by image) against its positive, the
    key patch at the same place, and the other key patches of its image as negatives (of all ``images``
    together when ``images`` is 1). Keys carry no gradient. Returns one loss per patch."""
    n, dim = query.shape
    key = key.detach()
    positive = torch.bmm(query.view(n, 1, -1), key.view(n, -1, 1)).view(n, 1)
    query, key = query.view(images, -1, dim), key.view(images, -1, dim)
    patches = query.size(1)
    negative = torch.bmm(query, key.transpose(2, 1))
    # a patch against itself is the positive, not a negative: exp(-10) is as good as leaving it out
    negative.masked_fill_(torch.eye(patches, device=query.device, dtype=torch.bool)[None], -10.0)
    logits = torch.cat((positive, negative.view(-1, patches)), dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(n, dtype=torch.long, device=query.device), reduction="none")
