from __future__ import annotations

import pytest
import torch
from conftest import fixture_path

from cyclegan.config import NetConfig
from cyclegan.errors import CycleGANError
from cyclegan.networks import (
    build_discriminator,
    build_generator,
    generator_config_from_state_dict,
    load_weights,
)
from cyclegan.networks.resnet import ResnetBlock


def reference_entries() -> dict:
    return torch.load(fixture_path("reference_networks.pt"), weights_only=True)["entries"]


def build_like(kind_name: str, width: int) -> torch.nn.Module:
    kind, name = kind_name.split(":")
    if kind == "G":
        return build_generator(NetConfig(netG=name, ngf=width))
    return build_discriminator(NetConfig(netD=name, ndf=width), 3)


@pytest.mark.parametrize("which", ["state_dict", "legacy_state_dict"])
def test_reference_weights_load_strictly_and_reproduce_outputs(which: str) -> None:
    for kind_name, entry in reference_entries().items():
        net = build_like(kind_name, entry["width"])
        load_weights(net, entry[which])
        net.eval()
        with torch.no_grad():
            out = net(entry["input"])
        assert out.shape == entry["output"].shape, kind_name
        assert (out - entry["output"]).abs().max().item() <= 1e-5, kind_name


def test_state_dict_keys_are_the_references() -> None:
    for kind_name, entry in reference_entries().items():
        assert set(build_like(kind_name, entry["width"]).state_dict()) == set(entry["state_dict"]), kind_name


def test_generator_architecture_is_read_from_weights() -> None:
    for kind_name, entry in reference_entries().items():
        kind, name = kind_name.split(":")
        if kind != "G":
            continue
        for which in ("state_dict", "legacy_state_dict"):
            cfg = generator_config_from_state_dict(entry[which])
            assert (cfg.netG, cfg.ngf, cfg.norm, cfg.input_nc, cfg.output_nc) == (
                name,
                entry["width"],
                "instance",
                3,
                3,
            )


def test_parameter_counts_match_the_paper_networks() -> None:
    assert sum(p.numel() for p in build_generator(NetConfig()).parameters()) == 11_378_179
    assert sum(p.numel() for p in build_discriminator(NetConfig(), 3).parameters()) == 2_764_737


@pytest.mark.parametrize("norm", ["instance", "batch", "none"])
@pytest.mark.parametrize("net_g", ["resnet_6blocks", "unet_128"])
def test_architecture_round_trips_through_its_weights(norm: str, net_g: str) -> None:
    cfg = NetConfig(netG=net_g, ngf=4, norm=norm, input_nc=1, output_nc=3)
    inferred = generator_config_from_state_dict(build_generator(cfg).state_dict())
    assert (inferred.netG, inferred.ngf, inferred.norm, inferred.input_nc, inferred.output_nc) == (
        net_g,
        4,
        norm,
        1,
        3,
    )


@pytest.mark.parametrize("padding", ["reflect", "replicate", "zero"])
def test_resnet_keeps_any_size_divisible_by_four(padding: str) -> None:
    net = build_generator(NetConfig(ngf=4, netG="resnet_6blocks", padding=padding, dropout=True)).eval()
    with torch.no_grad():
        y = net(torch.randn(1, 3, 36, 52))
    assert y.shape == (1, 3, 36, 52)
    block = next(m for m in net.modules() if isinstance(m, ResnetBlock))
    nn = torch.nn
    padded = {"reflect": nn.ReflectionPad2d, "replicate": nn.ReplicationPad2d, "zero": nn.Conv2d}[padding]
    assert type(block.conv_block[0]) is padded  # zero: the convolution pads itself


@pytest.mark.parametrize("init_type", ["normal", "xavier", "kaiming", "orthogonal"])
def test_init_types_give_zero_bias_and_scaled_weights(init_type: str) -> None:
    net = build_discriminator(NetConfig(ndf=8, init_type=init_type, init_gain=0.02, norm="batch"), 3)
    first = net.model[0]
    assert torch.count_nonzero(first.bias) == 0
    assert 0 < first.weight.std().item() < (0.5 if init_type == "kaiming" else 0.05)
    bn = net.model[3]
    assert abs(bn.weight.mean().item() - 1.0) < 0.05


def test_discriminator_variants_output_patch_maps() -> None:
    x = torch.randn(1, 3, 64, 64)
    assert build_discriminator(NetConfig(ndf=4), 3)(x).shape == (1, 1, 6, 6)
    assert build_discriminator(NetConfig(ndf=4, netD="n_layers", n_layers_D=2), 3)(x).shape == (
        1,
        1,
        14,
        14,
    )
    assert build_discriminator(NetConfig(ndf=4, netD="pixel"), 3)(x).shape == (1, 1, 64, 64)


def test_wrong_weights_give_one_line_errors() -> None:
    net = build_generator(NetConfig(ngf=4))
    other = build_generator(NetConfig(ngf=8)).state_dict()
    with pytest.raises(CycleGANError, match="shape") as err:
        load_weights(net, other)
    assert "\n" not in str(err.value)
    disc = build_discriminator(NetConfig(ndf=4), 3).state_dict()
    with pytest.raises(CycleGANError, match="missing"):
        load_weights(net, disc)
    with pytest.raises(CycleGANError, match="not a CycleGAN generator"):
        generator_config_from_state_dict(disc)


def test_anti_aliased_layers_keep_the_size_rules_and_compile() -> None:
    net = build_generator(NetConfig(ngf=4, netG="resnet_6blocks", antialias=True, antialias_up=True))
    x = torch.randn(1, 3, 36, 52, requires_grad=True)
    assert net(x).shape == x.shape and net.size_multiple == 4
    assert build_discriminator(NetConfig(ndf=4, antialias=True), 3)(x).shape == (1, 1, 2, 4)
    up = net.model[18]  # compiled, its padding takes another road (a torch.compile stride bug): same gradient
    y = torch.randn(1, 16, 8, 8, requires_grad=True)
    up(y).square().sum().backward()
    eager, y.grad = y.grad, None
    torch.compile(up)(y).square().sum().backward()
    assert (y.grad - eager).abs().max().item() < 1e-5
