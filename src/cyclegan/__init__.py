"""Unpaired and paired image-to-image translation: CycleGAN, CUT, FastCUT and pix2pix on one trainer.

The public API, importable from here: ``TrainConfig`` (and each model's options), ``train`` and
``resume_config``, ``Translator`` and ``load_translator``, ``evaluate``, ``plan``, ``write_report`` and
``run_demo``. Names are imported on first use, so ``import cyclegan`` (and the CLI's ``--help``) stays
fast: PyTorch loads only when something that needs it is touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_EXPORTS = {
    "TrainConfig": "cyclegan.config",
    "NetConfig": "cyclegan.config",
    "ModelOptions": "cyclegan.config",
    "CycleGANOptions": "cyclegan.config",
    "CUTOptions": "cyclegan.config",
    "FastCUTOptions": "cyclegan.config",
    "Pix2PixOptions": "cyclegan.config",
    "DemoSettings": "cyclegan.config",
    "CycleGANError": "cyclegan.errors",
    "train": "cyclegan.training.loop",
    "TrainResult": "cyclegan.training.loop",
    "resume_config": "cyclegan.training.runs",
    "plan": "cyclegan.training.planner",
    "Translator": "cyclegan.translation.translator",
    "load_translator": "cyclegan.translation.translator",
    "translate_files": "cyclegan.translation.bulk",
    "export_onnx": "cyclegan.translation.export",
    "evaluate": "cyclegan.evaluation.scoring",
    "write_report": "cyclegan.evaluation.report",
    "run_demo": "cyclegan.demo",
    "Model": "cyclegan.models.base",
    "build_model": "cyclegan.models.base",
}

__all__ = [
    "CUTOptions",
    "CycleGANError",
    "CycleGANOptions",
    "DemoSettings",
    "FastCUTOptions",
    "Model",
    "ModelOptions",
    "NetConfig",
    "Pix2PixOptions",
    "TrainConfig",
    "TrainResult",
    "Translator",
    "build_model",
    "evaluate",
    "export_onnx",
    "load_translator",
    "plan",
    "resume_config",
    "run_demo",
    "train",
    "translate_files",
    "write_report",
]

if TYPE_CHECKING:
    from cyclegan.config import (
        CUTOptions,
        CycleGANOptions,
        DemoSettings,
        FastCUTOptions,
        ModelOptions,
        NetConfig,
        Pix2PixOptions,
        TrainConfig,
    )
    from cyclegan.demo import run_demo
    from cyclegan.errors import CycleGANError
    from cyclegan.evaluation.report import write_report
    from cyclegan.evaluation.scoring import evaluate
    from cyclegan.models.base import Model, build_model
    from cyclegan.training.loop import TrainResult, train
    from cyclegan.training.planner import plan
    from cyclegan.training.runs import resume_config
    from cyclegan.translation.bulk import translate_files
    from cyclegan.translation.export import export_onnx
    from cyclegan.translation.translator import Translator, load_translator


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cyclegan' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
