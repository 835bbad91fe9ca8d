"""Exporting a generator to ONNX, and running an exported one with onnxruntime (no PyTorch model code needed).

The exported file documents its own contract in ONNX ``metadata_props``: the architecture, the direction, the
channels, the size multiple and the input/output scaling (for data that is not 8-bit, the intensity
windows as JSON under ``intensity``), so a deployment in any language can pad, scale and crop exactly as
:class:`cyclegan.translation.translator.Translator` does.

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. On torch 2.14 both it and the
dynamo exporter give graphs with dynamic batch, height and width that match PyTorch to about 1e-6 through
ReflectionPad2d and InstanceNorm at every size tried; this one needs no ``onnxscript``, traces in a fraction
of a second instead of seconds, works on every torch this package supports, and takes any sample size (the
dynamo exporter specialises dimensions traced at size 1, so U-Nets would need a sample twice their
multiple). It is deprecated upstream: when it goes, switch to ``dynamo=True`` with
``dynamic_shapes=({0: Dim("batch"), 2: Dim("h") * multiple, 3: Dim("w") * multiple},)``.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import json
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from cyclegan.config import DIRECTIONS, NetConfig, check_choice, parse_json_object
from cyclegan.data.datasets import pad_to_multiple
from cyclegan.data.images import to_image, to_tensor
from cyclegan.data.intensity import Conversion
from cyclegan.errors import CycleGANError, first_line
from cyclegan.files import atomic_write
from cyclegan.models.checkpoints import load_generator, resolve_checkpoint
from cyclegan.networks import MIN_SIZE, input_channels, size_multiple
from cyclegan.translation.translator import checkpoint_conversion

FORMAT = "cyclegan-onnx/1"
OPSET = 17
INPUT, OUTPUT = "image", "translation"
MAX_BYTES = 2**31 - 1  # protobuf's limit on one message: larger models would need ONNX external data
INSTALL_HINT = "pip install -e '.[export]'"


def require(module: str) -> ModuleType:
    """Import an optional dependency, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise CycleGANError(f"{module} is not installed; install the export extras: {INSTALL_HINT}") from None


def export_onnx(checkpoint: Path, out: Path, *, direction: str = "AtoB", overwrite: bool = False) -> Path:
    """Write the ``direction`` generator of ``checkpoint`` (run folder, .safetensors or reference .pth) to
    ``out`` as an ONNX model with dynamic batch, height and width; returns ``out``."""
    onnx = require("onnx")
    out = Path(out)
    source = resolve_checkpoint(Path(checkpoint))
    if out.is_dir():
        raise CycleGANError(f"--out {out} is a folder; give a file name such as {out / 'model.onnx'}")
    if out.resolve() == source.resolve():
        raise CycleGANError(f"--out would overwrite the checkpoint {source}; choose another file")
    if out.exists() and not overwrite:
        raise CycleGANError(f"{out} exists; pass --overwrite to replace it")
    generator, config = load_generator(source, direction)
    size = sum(p.numel() * p.element_size() for p in generator.state_dict().values())
    if size > MAX_BYTES:
        raise CycleGANError(f"the generator is {size / 2**30:.1f} GiB; one ONNX file holds at most 2 GiB")
    model = onnx.load_model_from_string(_trace(generator, size_multiple(config)))
    ends = (model.graph.input[0], model.graph.output[0])
    channels = [v.type.tensor_type.shape.dim[1].dim_value for v in ends]
    conversion = checkpoint_conversion(source, direction)
    onnx.helper.set_model_props(model, metadata(config, direction, channels[0], channels[1], conversion))
    model.doc_string = f"{config.netG} generator ({direction}); see metadata_props for the contract"
    onnx.checker.check_model(model)
    data = model.SerializeToString()

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    atomic_write(out, write)
    return out


def _trace(generator: nn.Module, multiple: int) -> bytes:
    side = max(multiple, MIN_SIZE)
    sample = torch.zeros(1, input_channels(generator), side, side)
    axes = {0: "batch", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the deprecation notice and tracer notes about shape checks
        warnings.simplefilter("ignore")
        torch.onnx.export(
            generator.eval(),
            (sample,),
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects too
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: axes, OUTPUT: axes},
        )
    return buffer.getvalue()


def metadata(
    config: NetConfig,
    direction: str,
    in_channels: int,
    out_channels: int,
    conversion: Conversion | None = None,
) -> dict[str, str]:
    """The contract a caller needs, as ONNX string metadata."""
    multiple = size_multiple(config)
    min_size = max(multiple, MIN_SIZE)
    conversion = conversion or Conversion()
    source, target = conversion.source, conversion.target
    scaling = (
        "pixel / 127.5 - 1 (range [-1, 1]; RGB or grey)"
        if source.eight_bit
        else f"2 * (v - {source.low!r}) / ({source.high!r} - {source.low!r}) - 1 clipped to [-1, 1], v the"
        " source domain's values"
    )
    unscaling = (
        "pixel = round((y + 1) * 127.5), clipped to 0..255"
        if target.eight_bit
        else f"v = (y + 1) / 2 * ({target.high!r} - {target.low!r}) + {target.low!r}, the target domain's"
        f" values (written as {target.dtype})"
    )
    contract = {
        "format": FORMAT,
        "model_config": json.dumps(dataclasses.asdict(config)),
        "direction": direction,
        "in_channels": str(in_channels),
        "out_channels": str(out_channels),
        "size_multiple": str(multiple),
        "min_size": str(min_size),
        "input": (
            f"{INPUT}: float32 N x {in_channels} x H x W, {scaling}; H and W must be multiples of {multiple}"
            f" and at least {min_size}: reflect-pad the bottom and right edges up to that size and crop the"
            " output back"
        ),
        "output": f"{OUTPUT}: float32 N x {out_channels} x H x W in [-1, 1]; {unscaling}",
    }
    return contract if conversion.eight_bit else contract | {"intensity": conversion.to_json()}


class OnnxTranslator:
    """An exported generator run by onnxruntime, with the interface of
    :class:`cyclegan.translation.translator.Translator`."""

    def __init__(self, path: Path, device: torch.device | str = "cpu") -> None:
        ort = require("onnxruntime")
        path, self.device = Path(path), torch.device(device)
        if not path.is_file():
            raise CycleGANError(f"model not found: {path}")
        try:
            self.session = ort.InferenceSession(str(path), providers=_providers(ort, self.device))
        except Exception as err:  # onnxruntime raises its own types for unreadable or invalid models
            raise CycleGANError(f"cannot load {path} as an ONNX model: {first_line(err)}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("format") != FORMAT:
            raise CycleGANError(f"{path} was not written by cyclegan export (no {FORMAT} metadata)")
        try:
            self.config = NetConfig(**parse_json_object(meta["model_config"]))
            self.direction = meta["direction"]
            self.in_channels, self.multiple = int(meta["in_channels"]), int(meta["size_multiple"])
        except (KeyError, ValueError, TypeError) as err:
            raise CycleGANError(f"{path}: damaged metadata ({first_line(err)})") from None
        self.conversion = (
            Conversion.from_json(meta["intensity"], str(path)) if "intensity" in meta else Conversion()
        )
        try:
            self._check_contract()
        except CycleGANError as err:
            raise CycleGANError(f"{path}: invalid metadata: {err}") from None

    def _check_contract(self) -> None:
        """The metadata comes from a file anyone could have edited: it must describe the graph it is in
        (its channels) and the architecture it names (its size multiple), as checkpoint metadata must."""
        self.config.validate()
        if self.direction not in DIRECTIONS:
            raise CycleGANError(f"direction must be AtoB or BtoA, got {self.direction!r}")
        graph = self.session.get_inputs()[0].shape
        takes = graph[1] if len(graph) == 4 else None
        if self.in_channels != takes:
            raise CycleGANError(f"in_channels {self.in_channels}, but the model takes {takes}-channel images")
        if takes not in (1, 3):
            raise CycleGANError(f"the model takes {takes}-channel images; only 1 and 3 are supported")
        if self.multiple != size_multiple(self.config):
            raise CycleGANError(
                f"size_multiple {self.multiple}, but a {self.config.netG} needs {size_multiple(self.config)}"
            )

    def translate_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """C×H×W (or N×C×H×W) in [-1, 1] -> the translation, same spatial size, on the CPU."""
        padded, (h, w) = pad_to_multiple(x.detach().float().cpu(), self.multiple, MIN_SIZE)
        batch = padded if padded.dim() == 4 else padded.unsqueeze(0)
        try:
            (y,) = self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(batch.numpy())})
        except Exception as err:  # onnxruntime's failures are its own exception types
            if "alloc" not in str(err).lower():
                raise
            raise CycleGANError(f"not enough memory to translate a {w}x{h} image with onnxruntime") from None
        y = torch.from_numpy(y)[..., :h, :w]
        return y if x.dim() == 4 else y[0]

    def __call__(self, image: Image.Image) -> Image.Image:
        return to_image(self.translate_tensor(to_tensor(image)))


def _providers(ort: ModuleType, device: torch.device) -> list[Any]:
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise CycleGANError(
            "this onnxruntime has no CUDA support (install onnxruntime-gpu), or pass --device cpu"
        )
    return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]


def load_onnx_translator(path: Path, direction: str, device: torch.device | str = "cpu") -> OnnxTranslator:
    """An OnnxTranslator, refusing a model exported for the other direction (it holds one generator)."""
    check_choice("--direction", direction, DIRECTIONS)
    translator = OnnxTranslator(path, device)
    if translator.direction != direction:
        raise CycleGANError(
            f"{path} holds the {translator.direction} generator; pass --direction {translator.direction}"
        )
    return translator
