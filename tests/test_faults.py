"""The faults an adversarial suite and a review found: hostile metadata, absurd sizes, races, lost signals,
peers that die, servers that say too much. Each is one line, a clean stop or the right answer now."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import StandInInception, tiny_config, write_images
from safetensors import safe_open
from safetensors.torch import save_file

from cyclegan import distributed, files
from cyclegan.cli import main
from cyclegan.config import CycleGANOptions, NetConfig
from cyclegan.distributed import World, session
from cyclegan.errors import CycleGANError
from cyclegan.evaluation.scoring import evaluate
from cyclegan.layout import CHECKPOINTS, LATEST, PREVIOUS
from cyclegan.models.checkpoints import resolve_checkpoint, save_weights
from cyclegan.models.cycle_gan import CycleGAN
from cyclegan.networks import build_generator
from cyclegan.training.hooks import Hook
from cyclegan.training.interrupts import Interrupts
from cyclegan.training.loop import _check_names, train
from cyclegan.translation import tiling
from cyclegan.translation.bulk import translate_files
from cyclegan.translation.tiling import estimate_memory
from cyclegan.translation.translator import Translator

DEEP = "[" * 100_000 + "]" * 100_000
NET = NetConfig(ngf=4, ndf=4, netG="resnet_6blocks")


def generator() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_generator(NET).eval()


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-step run: checkpoints at steps 1 (previous) and 2 (latest). The run chose its own seed."""
    tmp = tmp_path_factory.mktemp("run")
    write_images(tmp / "data" / "trainA", 2, (36, 36), seed=1)
    write_images(tmp / "data" / "trainB", 2, (36, 36), seed=2)
    cfg = tiny_config(tmp / "data", tmp / "runs", seed=None, max_steps=2, save_latest_freq=1)
    result = train(cfg, show_progress=False, report=False)
    assert cfg.seed is None  # the caller's config is left as it was
    assert json.loads((result.run_dir / "config.json").read_text())["seed"] is not None
    return result.run_dir


@pytest.fixture
def run_copy(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def test_two_hooks_of_one_name_are_refused() -> None:
    with pytest.raises(CycleGANError, match="two hooks are named 'hook'"):
        _check_names([Hook(), Hook()])


def test_a_torn_latest_is_passed_over_by_translate_eval_export_and_serve_as_by_resume(
    run_copy: Path, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from cyclegan.translation import serve
    from cyclegan.translation.export import export_onnx

    latest = run_copy / CHECKPOINTS / LATEST
    latest.write_bytes(latest.read_bytes()[:1000])
    assert resolve_checkpoint(run_copy) == run_copy / CHECKPOINTS / PREVIOUS
    assert Translator.load(run_copy).translate_tensor(torch.zeros(3, 8, 8)).shape == (3, 8, 8)
    write_images(tmp_path / "data" / "testA", 2, (16, 16), seed=3)
    write_images(tmp_path / "data" / "testB", 2, (16, 16), seed=4)
    options = dict(inception=StandInInception(), kid_subsets=2, show_progress=False)
    assert evaluate(run_copy, tmp_path / "data", out_dir=tmp_path / "eval", **options).rows
    assert export_onnx(run_copy, tmp_path / "model.onnx").is_file()
    with TestClient(serve.create_app(run_copy)) as client:
        assert client.get("/info").status_code == 200


def _rewrite_metadata(path: Path, key: str, value: str) -> None:
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        metadata = f.metadata() | {key: value}
    save_file(tensors, str(path), metadata)


@pytest.mark.parametrize(
    ("key", "translates"),
    [("info", False), ("model_config", False), ("model", False), ("training_state", True)],
)
def test_metadata_nested_100000_deep_is_one_line_in_translate_and_resume(
    run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, translates: bool
) -> None:
    (run_copy / CHECKPOINTS / PREVIOUS).unlink()
    _rewrite_metadata(run_copy / CHECKPOINTS / LATEST, key, DEEP)
    write_images(tmp_path / "in", 1, (16, 16))
    translate = [
        "translate",
        str(tmp_path / "in"),
        "--checkpoint",
        str(run_copy),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(translate) == (0 if translates else 2)  # translating never reads the training state
    if not translates:
        assert "cyclegan translate: error:" in one_error_line(capsys)
    capsys.readouterr()
    assert main(["train", "--resume", str(run_copy)]) == 2
    assert "cyclegan train: error:" in one_error_line(capsys)


def test_a_config_nested_100000_deep_is_one_line_on_resume(
    run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (run_copy / "config.json").write_text(DEEP)
    assert main(["train", "--resume", str(run_copy)]) == 2
    assert "config.json" in one_error_line(capsys)


def test_absurd_sizes_and_world_sizes_are_one_line(
    dataroot: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    huge, tiny = "9" * 400, ["--ngf", "4", "--ndf", "4", "--device", "cpu"]
    train = ["train", "--dataroot", str(dataroot), "--checkpoints_dir", str(tmp_path / "runs")]
    translate = ["translate", str(dataroot), "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o")]
    cases = [
        ([*train, "--memory_budget", huge], "a memory size must be between 1 byte and 1 EiB"),
        ([*translate, "--max_memory", huge], "a memory size must be between 1 byte and 1 EiB"),
        (["plan", *tiny, "--memory", huge], "a memory size must be between 1 byte and 1 EiB"),
        (["plan", *tiny, "--probe_sizes", "-64", "64"], "--probe_sizes must be positive, got -64"),
        (["plan", *tiny, "--crop_size", "999999996", "--batch_size", "1000000000000"], "do not fit"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in one_error_line(capsys)
    monkeypatch.setenv("WORLD_SIZE", "0")
    for argv in (train, translate):
        assert main(argv) == 2
        assert "WORLD_SIZE must be at least 1" in one_error_line(capsys)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "o").exists()


def test_an_onnx_model_whose_metadata_lies_is_refused_in_one_line(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from cyclegan.translation.export import export_onnx, load_onnx_translator

    checkpoint = tmp_path / "m.safetensors"
    model = CycleGAN(CycleGANOptions(net=NET))
    save_weights(checkpoint, model.networks(), model.options, {"step": 0})
    exported = export_onnx(checkpoint, tmp_path / "m.onnx")
    assert load_onnx_translator(exported, "AtoB").in_channels == 3
    lies = {
        "in_channels": ("1", "in_channels 1, but the model takes 3-channel images"),
        "size_multiple": ("0", "size_multiple 0, but a resnet_6blocks needs 4"),
        "model_config": ("{broken", "damaged metadata"),
        "direction": ("sideways", "direction must be AtoB or BtoA"),
    }
    for key, (value, message) in lies.items():
        proto = onnx.load(str(exported))
        for prop in proto.metadata_props:
            if prop.key == key:
                prop.value = value
        onnx.save(proto, str(tmp_path / "lie.onnx"))
        with pytest.raises(CycleGANError, match=r"lie\.onnx: ") as refused:
            load_onnx_translator(tmp_path / "lie.onnx", "AtoB")
        assert message in str(refused.value) and "\n" not in str(refused.value)


def test_outputs_inside_the_input_folder_never_become_inputs(tmp_path: Path) -> None:
    write_images(tmp_path / "in", 2, (16, 16))
    translator, out = Translator(generator(), NET), tmp_path / "in" / "out"
    for _ in range(2):
        done = translate_files([tmp_path / "in"], translator, out, show_progress=False)
    assert len(done.written) == 0 and len(done.skipped) == 2
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["img_000.png", "img_001.png"]


def test_eval_of_a_one_to_three_channel_model_skips_identity_with_a_note(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = NetConfig(ngf=4, ndf=4, netG="resnet_6blocks", input_nc=1, output_nc=3)
    model = CycleGAN(CycleGANOptions(net=net, lambda_identity=0))
    save_weights(tmp_path / "m.safetensors", model.networks(), model.options, {"step": 0})
    write_images(tmp_path / "data" / "testA", 2, (32, 32), seed=1)
    write_images(tmp_path / "data" / "testB", 2, (32, 32), seed=2)
    result = evaluate(
        tmp_path / "m.safetensors", tmp_path / "data", out_dir=tmp_path / "o", inception=StandInInception(),
        kid_subsets=2, show_progress=False,
    )  # fmt: skip
    for direction in ("A→B", "B→A"):
        scores = result.row("CycleGAN", direction).scores
        assert scores["identity L1"] is None and scores["cycle L1"] is not None
    assert any("identity L1 omitted: A images have 1 channel(s) and B images 3" in n for n in result.notes)


def test_a_batch_stays_within_the_memory_budget_and_plans_are_traced_once_per_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    net, x = generator(), torch.rand(3, 3, 32, 40) * 2 - 1
    batches: list[int] = []
    net.register_forward_pre_hook(lambda _, args: batches.append(len(args[0])))
    plain = Translator(net, NET).translate_tensor(x)
    two = estimate_memory(net, 32, 40) + (estimate_memory(net, 32, 40) - tiling.ALLOCATOR_CACHE[1])
    traces = 0
    trace = tiling._graph

    def counted(module: torch.nn.Module) -> tiling._Graph:
        nonlocal traces
        traces += 1
        return trace(module)

    monkeypatch.setattr(tiling, "_graph", counted)
    limited = Translator(net, NET, max_memory=two)
    batches.clear()
    assert torch.allclose(limited.translate_tensor(x), plain, atol=1e-6)
    assert batches == [2, 1]  # two images' activations fit the budget, three would not
    traced = traces
    limited.translate_tensor(x)
    assert traces == traced  # the same size again: the cached plan


def test_atomic_write_never_changes_the_umask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(mask: int) -> int:
        raise AssertionError("os.umask sets the umask of every thread, racing with their file creations")

    monkeypatch.setattr(os, "umask", forbidden)
    files.atomic_write_text(tmp_path / "a.txt", "x")
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~files.UMASK


def test_a_loader_failure_after_a_stop_request_ends_the_epoch_instead_of_the_run() -> None:
    def batches() -> Iterator[int]:
        yield 1
        raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Terminated.")

    interrupts = Interrupts()
    with pytest.raises(RuntimeError, match="killed by signal"):
        list(interrupts.until_stopped(batches()))
    interrupts.count = 1  # a signal for the whole process group
    assert list(interrupts.until_stopped(batches())) == [1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peer(rank: int, ports: list[int], out: str) -> None:
    """One of two gloo processes: an error of its own passes through its session unchanged; a peer that
    dies in the middle of DDP's gradient all-reduce is a one-line error."""
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    os.environ["MASTER_PORT"] = str(ports[0])
    lines = []
    try:
        with session("cpu", 30):
            raise RuntimeError("this process's own bug")
    except RuntimeError as err:
        lines.append(f"{type(err).__name__}: {err}")
    os.environ["MASTER_PORT"] = str(ports[1])
    try:
        with session("cpu", 30) as world:
            net = world.wrap(torch.nn.Linear(2, 2))
            net(torch.ones(1, 2)).sum().backward()
            if rank == 1:
                os._exit(0)
            net(torch.ones(1, 2)).sum().backward()
    except CycleGANError as err:
        lines.append(f"{type(err).__name__}: {err}")
    Path(out, f"rank{rank}.txt").write_text("\n".join(lines))


def test_a_collective_failure_is_known_by_where_it_happened(tmp_path: Path) -> None:
    mp.spawn(_peer, args=([_free_port(), _free_port()], str(tmp_path)), nprocs=2)
    own, peer = (tmp_path / "rank0.txt").read_text().splitlines()
    assert own == "RuntimeError: this process's own bug"
    assert peer.startswith("CycleGANError: another training process stopped or did not answer within")


def test_a_failed_gradient_all_reduce_marks_the_world(monkeypatch: pytest.MonkeyPatch) -> None:
    """gloo fails DDP's all-reduce in backward() with a plain RuntimeError: the hook notes it on the world."""

    def lost(_: object, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        future: torch.futures.Future[torch.Tensor] = torch.futures.Future()
        future.set_exception(RuntimeError("Connection closed by peer"))
        return future

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        world = World(0, 1, torch.device("cpu"), distributed=True)
        net = world.wrap(torch.nn.Linear(2, 2))
        assert not world.collective_failed(RuntimeError("this process's own bug"))
        monkeypatch.setattr(distributed, "allreduce_hook", lost)
        with pytest.raises(RuntimeError, match="Connection closed by peer") as caught:
            net(torch.ones(1, 2)).sum().backward()
        assert world.collective_failed(caught.value)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    model = CycleGAN(CycleGANOptions(net=NET))
    save_weights(path, model.networks(), model.options, {"step": 0})
    return path


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_serve_answers_too_large_with_413_and_hides_unexpected_errors(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from cyclegan.translation import serve

    image = write_images(Path(checkpoint.parent, "in"), 1, (64, 64))[0].read_bytes()
    upload = {"files": {"image": ("img.png", image, "image/png")}}
    options = serve.ServeOptions(max_memory=2**20)  # below what even 64-pixel tiles of this model need
    with TestClient(serve.create_app(checkpoint, options=options)) as client:
        answer = client.post("/translate", **upload)
        assert answer.status_code == 413 and "even in 64-pixel tiles" in answer.json()["error"]
        for failure in (RuntimeError("at /secret/path"), CycleGANError("not a size problem")):

            def failing(translator: Translator, batch: torch.Tensor, failure: Exception = failure) -> None:
                raise failure

            monkeypatch.setattr(serve, "run_model", failing)
            log = Records()
            serve.LOG.addHandler(log)
            try:
                answer = client.post("/translate", **upload)
            finally:
                serve.LOG.removeHandler(log)
            assert answer.status_code == 500 and answer.json() == {"error": "internal error"}
            [record] = log.records  # the detail, in one line, for the server's log only
            assert str(failure) in record.getMessage() and record.exc_info is None


def test_serve_takes_a_client_gone_mid_upload_quietly(
    checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("fastapi")
    from cyclegan.translation import serve

    app = serve.create_app(checkpoint)
    incoming = [
        {
            "type": "http.request",
            "body": b'--x\r\nContent-Disposition: form-data; name="image"',
            "more_body": True,
        },
        {"type": "http.disconnect"},
    ]
    sent: list[dict] = []

    async def receive() -> dict:
        return incoming.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "POST", "path": "/translate", "raw_path": b"/translate", "root_path": "",
        "query_string": b"", "headers": [(b"content-type", b"multipart/form-data; boundary=x")],
        "http_version": "1.1", "scheme": "http", "server": ("test", 80), "client": ("test", 1),
    }  # fmt: skip
    with caplog.at_level(logging.ERROR):
        asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 400 and not caplog.records
