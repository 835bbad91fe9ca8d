"""Layers the networks share: normalisation, padding, the convs' bias rule, and weight initialisation.

Each choice is a table entry (``--norm``, ``--padding``, ``--init_type`` pick from them), so a new kind is
one line here and an unknown name is a one-line error that lists the known ones.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from cyclegan.config import check_choice

NORMS: dict[str, Callable[[int], nn.Module]] = {
    # instance norm has no affine parameters and no running statistics, as in CycleGAN
    "instance": lambda c: nn.InstanceNorm2d(c, affine=False, track_running_stats=False),
    "batch": lambda c: nn.BatchNorm2d(c, affine=True, track_running_stats=True),
    "none": lambda c: nn.Identity(),
}

PADDINGS: dict[str, Callable[[int], nn.Module] | None] = {
    "reflect": nn.ReflectionPad2d,
    "replicate": nn.ReplicationPad2d,
    "zero": None,  # the convolution pads with zeros itself
}

INITS: dict[str, Callable[[nn.Parameter, float], object]] = {
    "normal": lambda w, gain: nn.init.normal_(w, 0.0, gain),
    "xavier": lambda w, gain: nn.init.xavier_normal_(w, gain=gain),
    "kaiming": lambda w, gain: nn.init.kaiming_normal_(w, a=0, mode="fan_in"),
    "orthogonal": lambda w, gain: nn.init.orthogonal_(w, gain=gain),
}


def choose(table: dict, name: str, flag: str) -> object:
    """The entry of ``table`` that ``flag`` names, or a one-line refusal listing the names."""
    check_choice(flag, name, table)
    return table[name]


def norm_layer(norm: str, channels: int) -> nn.Module:
    return choose(NORMS, norm, "--norm")(channels)  # type: ignore[operator]


def uses_bias(norm: str) -> bool:
    """Convs before a norm carry a bias only with instance norm (batch norm has its own shift).

    With ``norm='none'`` the reference also leaves the bias out; we keep that so its checkpoints load.
    """
    return norm == "instance"


def init_weights(net: nn.Module, init_type: str = "normal", gain: float = 0.02) -> None:
    """Conv and linear weights from the chosen distribution, biases zero, batch-norm scales N(1, gain)."""
    init = choose(INITS, init_type, "--init_type")
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            init(m.weight, gain)  # type: ignore[operator]
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
