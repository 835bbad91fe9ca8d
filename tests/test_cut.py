"""CUT and FastCUT: the reference's recorded runs replayed, training through train(), the one-way tools,
and bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import fixture_path, floats, tiny_config, training_state
from PIL import Image
from torchvision.transforms import functional as TF

from cyclegan.cli import main
from cyclegan.config import TrainConfig
from cyclegan.data.datasets import UnpairedDataset, scan_domain
from cyclegan.errors import CycleGANError
from cyclegan.models import build_model, checkpoints
from cyclegan.models.cut import CUT, FastCUT, GeneratorObjective
from cyclegan.models.cycle_gan import CycleGAN
from cyclegan.models.patchnce import SeededDraws, patch_nce_loss
from cyclegan.networks import generator_config_from_state_dict
from cyclegan.networks.antialias import Downsample, Upsample
from cyclegan.precision import Precision
from cyclegan.training import health
from cyclegan.training.hooks import Hook, RunState, Scalars
from cyclegan.training.loop import train
from cyclegan.training.runs import resume_config

# The recordings were made with AVX2 ATen kernels and 2 threads (oneDNN left to pick its own ISA, as the
# fixture README says): Adam turns last-bit differences into visible ones, so the replay runs in a child
# process set up the same way. The reference gathers PatchNCE's patches from channels-last permuted
# features; production gathers the same vectors without the permute (see patchnce.sample_patches), which
# changes the gradients' memory layout and, through a PyTorch CPU bug at batch size 1, their values: the
# replay restores the reference's gather to reproduce its arithmetic.
REPLAY_SCRIPT = """
import json, sys, torch
from cyclegan.config import TrainConfig
from cyclegan.models import patchnce
from cyclegan.models.cut import CUT, CUTTrainer
from cyclegan.networks import load_weights

torch.set_num_threads(2)
patchnce.sample_patches = lambda f, ids: f.permute(0, 2, 3, 1).flatten(1, 2)[:, ids, :].flatten(0, 1)

class Recorded:
    def __init__(self, flips, patch_ids):
        self.flips, self.patch_ids = iter(flips), iter(patch_ids)
    def flip(self):
        return next(self.flips) < 0.5
    def patches(self, positions, count):
        ids = next(self.patch_ids)
        assert [len(i) for i in ids] == [min(count, n) for n in positions]
        return ids

results = {}
for path in sys.argv[1:]:
    ref = torch.load(path, weights_only=True)
    c = ref["config"]
    options = {k: c[k] for k in ("ngf", "ndf", "netG", "netD")}
    cfg = TrainConfig.create(c["CUT_mode"].lower(), **options)
    model = CUT.registry[cfg.model.name](cfg.model)
    for name, net in model.networks().items():
        load_weights(net, ref["init"][name])
    used = ref["draws_before_step1"]  # by the reference's data-dependent initialisation
    draws = Recorded(ref["flips"][used["flips"]:], ref["patch_ids"][used["patch_ids"]:])
    trainer = CUTTrainer(model, cfg, draws=draws)
    losses = []
    for (a, b), expected in zip(ref["batches"][1:], ref["losses"], strict=True):
        got = trainer.step(a, b)
        losses.append(max(abs(got[k].item() - v) / abs(v) for k, v in expected.items()))
    weights = {
        name: max((net.state_dict()[k] - v).abs().max().item() for k, v in ref["final"][name].items())
        for name, net in model.networks().items()
    }
    x = ref["eval"]["input"]
    with torch.no_grad():
        output = (model.G.eval()(x) - ref["eval"]["G_output"]).abs().max().item()
        pairs = zip(model.G.features(x, cfg.model.layers), ref["eval"]["nce_features"], strict=True)
        features = max((f - r).abs().max().item() for f, r in pairs)
    results[cfg.model.name] = {"losses": losses, "weights": weights, "output": output, "features": features}
print(json.dumps(results))
"""


def test_cut_and_fastcut_reproduce_the_reference_runs() -> None:
    paths = [str(fixture_path(f"cut/{name}_b1.pt")) for name in ("cut", "fastcut")]
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"} | {"ATEN_CPU_CAPABILITY": "avx2"}
    done = subprocess.run(
        [sys.executable, "-c", REPLAY_SCRIPT, *paths], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert [len(results[m]["losses"]) for m in ("cut", "fastcut")] == [5, 6]
    for model, result in results.items():
        assert max(result["losses"]) <= 1e-6, model  # every loss of every step, to float32 rounding
        assert set(result["weights"]) == {"G", "D", "F"}
        assert max(result["weights"].values()) <= 1e-6, model  # the final weights of all three networks
        assert result["output"] <= 1e-6 and result["features"] <= 1e-6, model


def _small_cut(**options: object) -> tuple[TrainConfig, CUT]:
    """A CUT with a ResNet-6 generator, ngf/ndf 4 and a 16-channel head over 16 patches, from seed 0."""
    small = dict(ngf=4, ndf=4, netG="resnet_6blocks", netF_nc=16, num_patches=16)
    cfg = TrainConfig.create("cut", **small, **options)
    torch.manual_seed(0)
    return cfg, CUT(cfg.model)


def _objective(model: CUT) -> GeneratorObjective:
    """The generator's objective in fp32 on the CPU, its patches drawn from a fixed seed."""
    return GeneratorObjective(model, Precision.on("fp32", torch.device("cpu")), SeededDraws(1))


def _nce_gradients(model: CUT, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss, _ = _objective(model)(a, b, lambda fake: {})
    loss.backward()
    return {name: p.grad.clone() for name, p in model.G.named_parameters() if p.grad is not None}


def test_patchnce_gradients_of_a_batch_are_the_mean_of_each_images() -> None:
    """What DDP relies on, and what the reference's channels-last gather breaks at batch size 1 on CPU."""
    _, model = _small_cut(lambda_GAN=0)
    a, b = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    both = _nce_gradients(model, a, b)
    alone = [_nce_gradients(model, a[i : i + 1], b[i : i + 1]) for i in range(2)]
    for name in ("model.1.weight", "model.8.weight", "model.16.conv_block.5.weight", "model.23.weight"):
        mean = (alone[0][name] + alone[1][name]) / 2
        assert ((both[name] - mean).norm() / mean.norm()).item() < 1e-4, name


def test_negatives_from_the_whole_minibatch_are_the_other_patches_of_every_image() -> None:
    torch.manual_seed(0)
    n, temperature = 6, 0.07  # patches per image; two images
    query, key = (torch.nn.functional.normalize(torch.randn(2 * n, 8), dim=1) for _ in range(2))
    per_image = patch_nce_loss(query, key, 2, temperature)
    alone = [patch_nce_loss(query[i : i + n], key[i : i + n], 1, temperature) for i in (0, n)]
    torch.testing.assert_close(per_image, torch.cat(alone))
    pooled = patch_nce_loss(query, key, 1, temperature)
    # every key patch of both images is a negative, but a patch's own (masked to -10 as the reference does)
    logits = torch.cat(((query * key).sum(1, keepdim=True), (query @ key.T).fill_diagonal_(-10.0)), 1)
    logits = logits / temperature
    torch.testing.assert_close(pooled, torch.logsumexp(logits, 1) - logits[:, 0])
    assert (pooled > per_image).all()  # more negatives, each adding to the denominator


def _patchnce_losses(all_negatives: bool, batch: int) -> tuple[float, float]:
    _, model = _small_cut(lambda_GAN=0, nce_includes_all_negatives_from_minibatch=all_negatives)
    inputs = torch.Generator().manual_seed(1)
    a, b = (torch.rand(batch, 3, 32, 32, generator=inputs) * 2 - 1 for _ in range(2))
    with torch.no_grad():
        _, losses = _objective(model)(a, b, lambda fake: {})
    return losses["NCE"].item(), losses["NCE_Y"].item()


def test_negatives_from_the_minibatch_change_the_loss_only_for_a_batch_of_several() -> None:
    assert _patchnce_losses(True, 1) == _patchnce_losses(False, 1)
    pooled, per_image = _patchnce_losses(True, 2), _patchnce_losses(False, 2)
    assert pooled[0] > per_image[0] and pooled[1] > per_image[1]


def _cut_step(checkpointing: bool, precision: str) -> tuple[dict, dict, list[torch.dtype]]:
    """Losses and gradients of one CUT step on batch 2, and the dtypes G's first convolution gave."""
    cfg, model = _small_cut(checkpoint_activations=checkpointing, precision=precision)
    trainer = model.trainer(cfg)
    dtypes: list[torch.dtype] = []
    model.G.model[1].register_forward_hook(lambda module, x, y: dtypes.append(y.dtype))
    inputs = torch.Generator().manual_seed(1)
    a, b = (torch.rand(2, 3, 32, 32, generator=inputs) * 2 - 1 for _ in range(2))
    losses = floats(trainer.step(a, b))
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return losses, grads, dtypes


def test_a_checkpointed_cut_step_matches_the_plain_one_and_bf16_runs_under_autocast() -> None:
    plain_losses, plain_grads, plain_calls = _cut_step(False, "fp32")
    losses, grads, calls = _cut_step(True, "fp32")
    assert losses == pytest.approx(plain_losses, rel=1e-5)
    assert grads.keys() == plain_grads.keys() and {n.split(".")[0] for n in grads} == {"G", "D", "F"}
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-4, atol=1e-7, msg=name)
    assert len(calls) > len(plain_calls)  # the backward pass recomputed G's layers
    losses, _, calls = _cut_step(False, "bf16")
    assert set(calls) == {torch.bfloat16} and all(math.isfinite(v) for v in losses.values())


def _options(**overrides: object) -> dict:
    """A CUT small and quick enough for a few steps per test, its health judged from the start."""
    return {
        "netF_nc": 16,
        "num_patches": 32,
        "health_every": 2,
        "health_warmup": 0,
        "sample_freq": 4,
    } | overrides


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    states, _, _ = checkpoints.read_weights(run_dir / "checkpoints" / "latest.safetensors")
    return {f"{n}.{k}": v for n, s in states.items() for k, v in s.items()}


def test_cut_stops_and_resumes_exactly_and_logs_samples_and_reports_its_losses(
    dataroot: Path, tmp_path: Path
) -> None:
    # 6 steps per epoch: resumed mid-epoch 1, the run crosses into the decay phase (resized, uncropped data)
    straight = train(
        tiny_config(dataroot, tmp_path / "a", "cut", max_steps=8, **_options()), show_progress=False
    )
    first = train(
        tiny_config(dataroot, tmp_path / "b", "cut", max_steps=5, **_options()), show_progress=False
    )
    cfg = tiny_config(dataroot, tmp_path / "b", "cut", max_steps=8, **_options())
    resumed = train(cfg, first.run_dir, show_progress=False, report=False)
    a, b = _weights(straight.run_dir), _weights(resumed.run_dir)
    assert {k.split(".")[0] for k in a} == {"G", "D", "F"} and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = training_state(resumed.run_dir / "checkpoints" / "latest.safetensors")["trainer"]
    assert set(state["optimizers"]) == {"G", "D"} and "draws" in state
    run = straight.run_dir
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert {"D", "D_real", "D_fake", "G_GAN", "NCE", "NCE_Y", "G"} <= set(rows[0])
    width, _ = Image.open(run / "samples" / "step_0000008.png").size
    assert width == 4 * (32 + 2) + 2  # real A, G(A), real B, G(B)
    assert "PatchNCE losses" in (run / "report.html").read_text()


def test_fastcut_trains_without_the_identity_terms(dataroot: Path, tmp_path: Path) -> None:
    result = train(tiny_config(dataroot, tmp_path, "fastcut", max_steps=4, **_options()), show_progress=False)
    assert result.stopped is None and result.progress.step == 4
    rows = [json.loads(line) for line in (result.run_dir / "log.jsonl").read_text().splitlines()]
    assert "NCE" in rows[0] and "NCE_Y" not in rows[0]
    assert Image.open(result.run_dir / "samples" / "step_0000004.png").size[0] == 3 * (32 + 2) + 2


class Published(Hook):
    """Keeps what the other hooks publish, and the dtypes G's first convolution gives in the run."""

    name = "published"

    def start(self, run: RunState) -> None:
        self.events: list[object] = []
        self.dtypes: set[torch.dtype] = set()
        run.subscribe(self.events.append)
        run.model.G.model[1].register_forward_hook(lambda module, x, y: self.dtypes.add(y.dtype))


def test_cut_trains_in_bf16_with_checkpointing_and_its_health_is_judged_one_way(
    dataroot: Path, tmp_path: Path
) -> None:
    published = Published()
    options = _options(print_freq=1, health_patience=1)
    cfg = tiny_config(
        dataroot, tmp_path, "cut", max_steps=4, precision="bf16", checkpoint_activations=True, **options
    )
    result = train(cfg, hooks=[published], show_progress=False, report=False)
    assert result.stopped is None and result.progress.step == 4 and torch.bfloat16 in published.dtypes
    rows = [json.loads(line) for line in (result.run_dir / "log.jsonl").read_text().splitlines()]
    losses = [row for row in rows if "event" not in row]
    assert [row["step"] for row in losses] == [1, 2, 3, 4]
    assert all(math.isfinite(row[name]) for row in losses for name in CUT.loss_names)
    probes = [
        (e.step, set(e.values)) for e in published.events if isinstance(e, Scalars) and e.group == "health"
    ]
    assert probes == [(step, {"change_A", "gap_A", "diversity_A", "colour_A"}) for step in (2, 4)]  # G only
    # the tiny G's outputs barely differ at first: reported at the first check, once for its episode
    events = health.health_events(result.run_dir)
    assert [(e["step"], e["signal"], e["network"]) for e in events] == [(2, "mode_collapse", "G")]
    assert "a larger --lambda_NCE (now 1)" in events[0]["message"]
    state = training_state(result.checkpoint)["hooks"]["health"]
    assert state["first_cycle"] == {} and set(state["sums"]) == set(CUT.loss_names)  # no cycle loss
    # no cycle loss and no identity L1 term: those two signals never apply to CUT, whatever the numbers
    means = dict.fromkeys(CUT.loss_names, 0.5) | {"D": 0.001, "NCE_Y": 1000.0}
    stats = {"change_A": 0.0, "gap_A": 0.5, "diversity_A": 0.01, "colour_A": 0.9}
    found = health.find_problems(CUT.directions, means, stats, {"cycle_A": 1.0})
    assert set(found) == {"discriminator_wins/D", "generator_idle/G", "mode_collapse/G"}


def test_the_decay_phase_resizes_to_the_crop_instead_of_cropping(dataroot: Path, tmp_path: Path) -> None:
    cfg = tiny_config(dataroot, tmp_path, "cut", no_flip=True, seed=3)
    a = scan_domain(dataroot / "trainA", cfg, 3, 4)[0]
    dataset = UnpairedDataset(a, scan_domain(dataroot / "trainB", cfg, 3, 4)[0], cfg, 3, 4)
    whole = TF.to_tensor(TF.resize(Image.open(a.paths[0]), [32, 32], TF.InterpolationMode.BICUBIC)) * 2 - 1
    dataset.epoch = cfg.model.n_epochs - 1
    assert dataset[0]["A"].shape == whole.shape and not torch.allclose(dataset[0]["A"], whole, atol=1e-6)
    dataset.epoch = cfg.model.n_epochs
    assert torch.allclose(dataset[0]["A"], whole, atol=1e-6)


def _cut_checkpoint(path: Path, **options: object) -> tuple[Path, CUT]:
    torch.manual_seed(0)
    model = CUT(TrainConfig.create("cut", ngf=4, ndf=4, netG="resnet_6blocks", **options).model).eval()
    checkpoints.save_weights(path, model.networks(), model.options, {"step": 0})
    return path, model


def test_a_cut_generator_translates_one_way_and_its_reference_pth_loads(tmp_path: Path) -> None:
    path, model = _cut_checkpoint(tmp_path / "cut.safetensors")
    x = torch.rand(1, 3, 24, 40) * 2 - 1
    with torch.no_grad():
        expected = model.G(x)
        assert checkpoints.translations(path) == ("AtoB",)
        generator, net = checkpoints.load_generator(path)
        assert net.antialias and net.antialias_up and torch.equal(generator(x), expected)
        reference = tmp_path / "latest_net_G.pth"  # the reference saves G alone, with its filt buffers
        torch.save(model.G.state_dict(), reference)
        assert "model.7.filt" in model.G.state_dict()
        generator, net = checkpoints.load_generator(reference)
        assert (net.antialias, net.antialias_up) == (True, True) and torch.equal(generator(x), expected)
    assert generator_config_from_state_dict(model.G.state_dict()) == net


def test_a_cut_generator_exports_to_onnx_and_serves_one_direction(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from cyclegan.translation.export import export_onnx

    path, model = _cut_checkpoint(tmp_path / "cut.safetensors")
    onnx_path = export_onnx(path, tmp_path / "cut.onnx")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for shape in ((1, 3, 32, 48), (2, 3, 20, 12)):
        x = torch.rand(shape) * 2 - 1
        (y,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            assert (torch.from_numpy(y) - model.G(x)).abs().max().item() < 1e-5
    assert main(["export", str(path), "--out", str(tmp_path / "b.onnx"), "--direction", "BtoA"]) == 2

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from cyclegan.translation import serve

    with TestClient(serve.create_app(path)) as client:
        assert client.get("/info").json()["directions"] == ["AtoB"]
        Image.new("RGB", (20, 16), "red").save(tmp_path / "x.png")
        image = {"image": ("x.png", (tmp_path / "x.png").read_bytes(), "image/png")}
        assert client.post("/translate", files=image).status_code == 200
        refused = client.post("/translate", files=image, data={"direction": "BtoA"})
        assert refused.status_code == 400 and "AtoB" in refused.json()["error"]


@pytest.mark.parametrize(
    ("antialias", "antialias_up"), [(True, True), (False, True), (True, False), (False, False)]
)
def test_the_no_antialias_options_leave_out_the_blur_layers(antialias: bool, antialias_up: bool) -> None:
    _, model = _small_cut(antialias=antialias, antialias_up=antialias_up)

    def count(net: torch.nn.Module, kind: type) -> int:
        return sum(isinstance(m, kind) for m in net.modules())

    assert (count(model.G, Downsample), count(model.G, Upsample)) == (2 * antialias, 2 * antialias_up)
    assert (count(model.D, Downsample), count(model.D, Upsample)) == (3 * antialias, 0)
    found = generator_config_from_state_dict(model.G.state_dict())
    assert (found.antialias, found.antialias_up) == (antialias, antialias_up)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():  # PatchNCE's head fits the features of the layers of this layout
        assert model.G(x).shape == x.shape and model.D(x).shape[:2] == (2, 1)
        _, losses = _objective(model)(x, x.flip(0), lambda fake: {})
    assert math.isfinite(losses["NCE"].item()) and math.isfinite(losses["NCE_Y"].item())


def test_cut_without_antialiasing_has_cyclegans_layout_and_the_cli_flags_set_it(
    dataroot: Path, tmp_path: Path
) -> None:
    args = ["train", "--model", "cut", "--no_antialias", "--no_antialias_up", "--dataroot", str(dataroot)]
    args += ["--checkpoints_dir", str(tmp_path), "--name", "run", "--ngf", "4", "--ndf", "4", "--netG"]
    args += ["resnet_6blocks", "--netF_nc", "16", "--num_patches", "16", "--load_size", "36"]
    args += ["--crop_size", "32", "--num_workers", "0", "--max_steps", "1", "--device", "cpu"]
    assert main(args) == 0
    net = TrainConfig.load(tmp_path / "run" / "config.json").model.net
    assert (net.antialias, net.antialias_up) == (False, False)
    path = tmp_path / "run" / "checkpoints" / "latest.safetensors"
    states = checkpoints.read_weights(path)[0]
    cyclegan = CycleGAN(TrainConfig.create(ngf=4, ndf=4, netG="resnet_6blocks").model)

    def shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in state.items()}

    assert shapes(states["G"]) == shapes(cyclegan.G_A.state_dict())  # CycleGAN's ResNet, key for key
    assert shapes(states["D"]) == shapes(cyclegan.D_A.state_dict())
    _, found = checkpoints.load_generator(path)
    assert (found.antialias, found.antialias_up) == (False, False)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TrainConfig.create("cut", lambda_A=5.0), "--lambda_A does not apply to --model cut"),
        (lambda: TrainConfig.create("cycle_gan", nce_layers="0,4"), "--nce_layers does not apply"),
        (lambda: TrainConfig.create("fastcut", num_patches=0).model.validate(), "--num_patches must be"),
        (lambda: TrainConfig.create("cut", nce_layers="0,4,x").model.validate(), "comma-separated"),
        (
            lambda: build_model(TrainConfig.create("cut", ngf=4, nce_layers="0,40").model),
            "layer numbers 0-31",
        ),
        (lambda: build_model(TrainConfig.create("cut", ngf=4, netG="unet_128").model), "a ResNet generator"),
        (lambda: TrainConfig.create("cut", lambda_GAN=0, lambda_NCE=0).model.validate(), "learn nothing"),
        (lambda: TrainConfig.create("fastcut", nce_idt=True).model.validate(), "--nce_idt is CUT's"),
    ],
)
def test_bad_options_are_refused_in_one_line(make: Callable[[], object], message: str) -> None:
    with pytest.raises(CycleGANError, match=message) as err:
        make()
    assert "\n" not in str(err.value)


def test_two_way_requests_and_another_model_are_refused_for_a_cut_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = _cut_checkpoint(tmp_path / "cut.safetensors")
    with pytest.raises(CycleGANError, match="a cut model translates AtoB only, not BtoA"):
        checkpoints.load_generator(path, "BtoA")
    run = tmp_path / "run"
    run.mkdir()
    TrainConfig.create("cut", dataroot=str(tmp_path), seed=1).save(run / "config.json")
    with pytest.raises(CycleGANError, match="--model cannot change when resuming"):
        resume_config(run, {"model": "cycle_gan"})
    assert main(["train", "--model", "cut", "--dataroot", str(tmp_path), "--lambda_identity", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--lambda_identity does not apply to --model cut" in err


def test_fastcut_is_cut_with_the_papers_fastcut_options() -> None:
    cut, fast = TrainConfig.create("cut").model, TrainConfig.create("fastcut").model
    assert (cut.n_epochs, cut.n_epochs_decay, cut.lambda_NCE, cut.nce_idt, cut.flip_equivariance) == (
        200, 200, 1.0, True, False,
    )  # fmt: skip
    assert (fast.n_epochs, fast.n_epochs_decay, fast.lambda_NCE, fast.nce_idt, fast.flip_equivariance) == (
        150, 50, 10.0, False, True,
    )  # fmt: skip
    assert (cut.nce_T, cut.num_patches, cut.netF_nc, cut.layers) == (0.07, 256, 256, (0, 4, 8, 12, 16))
    assert (cut.net.antialias, cut.net.antialias_up, cut.net.init_type) == (True, True, "xavier")
    assert issubclass(FastCUT, CUT) and FastCUT.name == "fastcut"


def test_the_demo_scores_a_one_sided_model_one_way(tmp_path: Path) -> None:
    from cyclegan.demo import DemoSettings, run_demo
    from cyclegan.evaluation.results import ResultTable

    settings = DemoSettings(out=tmp_path, steps=3, size=32, ngf=4, ndf=4, device="cpu", model="fastcut")
    page = run_demo(settings, show_progress=False)
    assert page == tmp_path / "day2night_fastcut" / "report.html"
    scores = ResultTable.load(page.parent / "demo.json")
    assert {(row.method, row.direction) for row in scores.rows} == {
        (method, "A→B") for method in ("FastCUT", "colour transfer", "untranslated input")
    }
