"""pix2pix: the reference's step to float32 rounding, paired data, and its refusals."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import png
import pytest
import torch
from conftest import StandInInception, fixture_path, tiny_config
from PIL import Image
from test_cli import one_line_error, run_cli

from cyclegan.config import DemoSettings, NetConfig, TrainConfig
from cyclegan.data import formats
from cyclegan.data.check import check_data, format_report
from cyclegan.data.demo_scenes import make_demo_dataset
from cyclegan.data.paired import PairedDataset, find_pairs, scan_pairs
from cyclegan.demo import score
from cyclegan.errors import CycleGANError
from cyclegan.evaluation import metrics
from cyclegan.evaluation.report import write_report
from cyclegan.evaluation.scoring import evaluate
from cyclegan.evaluation.values import FID_NOTE
from cyclegan.models import build_model, checkpoints
from cyclegan.models.checkpoints import load_generator, translations
from cyclegan.networks import build_generator
from cyclegan.training.loop import train, training_data

# Recorded with ATen's AVX2 kernels on 2 threads (the fixture's README); oneDNN's convolutions were left to
# pick their own ISA. Adam turns last-bit differences into visibly different updates, so the replay runs in a
# child process pinned the same way. On an AVX-512 machine it then reproduces the recording bit for bit
# (measured: every loss, weight and running statistic equal); capping oneDNN at AVX2 as well, as an AVX2-only
# CPU would, moves the final weights by 7e-4 of their travel and the losses by 2e-6: the bounds allow that.
REPLAY_SCRIPT = """
import json, sys, torch
from cyclegan.config import TrainConfig
from cyclegan.models.pix2pix import Pix2Pix, Pix2PixTrainer
from cyclegan.networks import load_weights

torch.set_num_threads(2)
ref = torch.load(sys.argv[1], weights_only=True)
c = ref["config"]
cfg = TrainConfig.create(
    "pix2pix", ngf=c["ngf"], ndf=c["ndf"], netG=c["netG"], norm=c["norm"], dropout=c["dropout"],
    gan_mode=c["gan_mode"], lambda_L1=c["lambda_L1"], n_layers_D=c["n_layers_D"], crop_size=c["size"],
)
model = Pix2Pix(cfg.model).train()
for name, net in model.networks().items():
    load_weights(net, ref["init"][name])
trainer = model.trainer(cfg)
errors = []
for seed, (a, b), expected in zip(ref["step_seeds"], ref["inputs"], ref["losses"], strict=True):
    torch.manual_seed(seed)
    got = {k: v.item() for k, v in trainer.step(a, b).items()}
    errors.append(max(abs(got[k] - v) / abs(v) for k, v in expected.items()))
    assert abs(got["D"] - (got["D_fake"] + got["D_real"]) / 2) <= 1e-6 * got["D"]
weights = {}
for name, net in model.networks().items():
    state, final, init = net.state_dict(), ref["final"][name], ref["init"][name]
    floats = [k for k in final if final[k].is_floating_point()]
    gap = sum(((state[k] - final[k]) ** 2).sum() for k in floats) ** 0.5
    travel = sum(((init[k] - final[k]) ** 2).sum() for k in floats) ** 0.5
    stats = [k for k in floats if "running_" in k]
    weights[name] = {
        "ratio": float(gap / travel),
        "stats": max(float((state[k] - final[k]).abs().max()) for k in stats) if stats else 0.0,
        "counts": all(torch.equal(state[k], final[k]) for k in final if k not in floats),
    }
with torch.no_grad():
    gap = float((model.eval().G(ref["eval_input"]) - ref["eval_output"]).abs().max())
print(json.dumps({"losses": errors, "weights": weights, "eval": gap}))
"""


def test_training_steps_reproduce_the_reference_pix2pix_run() -> None:
    path = fixture_path("pix2pix/pix2pix_shared.pt")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "OMP_NUM_THREADS": "2"}
    done = subprocess.run(
        [sys.executable, "-c", REPLAY_SCRIPT, str(path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    # where oneDNN runs AVX-512, as it did for the recording, nothing may differ at all
    exact = torch.backends.cpu.get_cpu_capability() == "AVX512"
    assert len(result["losses"]) == 5
    assert max(result["losses"]) <= (0.0 if exact else 1e-5)
    assert set(result["weights"]) == {"G", "D"}
    for name, got in result["weights"].items():
        assert got["ratio"] <= (0.0 if exact else 1e-3), name
        assert got["stats"] <= (0.0 if exact else 1e-4), name  # batch norm's running statistics
        assert got["counts"], name  # num_batches_tracked: G ran once per step, D three times
    assert result["eval"] <= (0.0 if exact else 1e-4)


def test_pix2pix_defaults_and_step_are_the_references() -> None:
    cfg = TrainConfig.create("pix2pix")
    options, net = cfg.model, cfg.model.net
    assert (net.netG, net.norm, net.dropout, net.netD, net.n_layers_D) == (
        "unet_256", "batch", True, "basic", 3,
    )  # fmt: skip
    assert (net.init_type, net.init_gain, net.antialias, net.antialias_up) == ("normal", 0.02, False, False)
    assert (options.gan_mode, options.lambda_L1, options.n_epochs, options.n_epochs_decay) == (
        "vanilla", 100.0, 100, 100,
    )  # fmt: skip
    assert (cfg.lr, cfg.beta1, cfg.batch_size, cfg.load_size, cfg.crop_size, cfg.direction) == (
        0.0002, 0.5, 1, 286, 256, "AtoB",
    )  # fmt: skip
    with pytest.raises(CycleGANError, match="--pool_size does not apply to --model pix2pix"):
        TrainConfig.create("pix2pix", pool_size=0)  # no image pool to size

    small = TrainConfig.create("pix2pix", ngf=4, ndf=4)  # the default networks, narrower
    model = build_model(small.model).train()
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.G.modules()) == 3  # the innermost U-Net levels
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.D.modules())
    assert model.pool_bytes_per_pixel() == 0
    trainer = model.trainer(small)
    events: list[tuple[str, torch.Tensor | None, torch.Tensor | None]] = []
    model.D.register_forward_hook(lambda m, i, o: events.append(("D", i[0], o)))
    model.G.register_forward_hook(lambda m, i, o: events.append(("G", i[0], o)))
    for name, optimizer in trainer.optimizers.items():
        optimizer.register_step_post_hook(
            lambda o, a, k, name=name: events.append((f"{name} step", None, None))
        )
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.rand(1, 3, 256, 256, generator=generator) * 2 - 1 for _ in range(2))
    losses = {k: v.item() for k, v in trainer.step(a, b).items()}
    # one G forward, D's update on it first (fake pair, then true pair), then G's against the updated D
    assert [e[0] for e in events] == ["G", "D", "D", "D step", "D", "G step"]
    (_, _, fake), (_, on_fake, d_fake), (_, on_real, d_real), _, (_, on_g, d_g), _ = events
    assert torch.equal(on_fake, torch.cat((a, fake), 1)) and torch.equal(on_real, torch.cat((a, b), 1))
    assert torch.equal(on_g, on_fake)  # the conditional D sees input and output: 6 channels
    bce = torch.nn.functional.binary_cross_entropy_with_logits  # the vanilla GAN loss
    expected = {
        "D_fake": bce(d_fake, torch.zeros_like(d_fake)),
        "D_real": bce(d_real, torch.ones_like(d_real)),
        "G_GAN": bce(d_g, torch.ones_like(d_g)),
        "G_L1": 100 * (fake - b).abs().mean(),
    }
    for name, value in expected.items():
        assert losses[name] == pytest.approx(value.item(), rel=1e-5), name
    assert losses["D"] == pytest.approx((losses["D_fake"] + losses["D_real"]) / 2, rel=1e-6)


def _write_pairs(root: Path, count: int, size: tuple[int, int] = (48, 40), side_by_side: bool = True) -> None:
    """Pairs whose B is the negative of A (255 - A, A below 128): any misaligned crop or flip would show.
    Side by side in root/ (A|B), else A in root/A/x.png and B in root/B/x.bmp (suffixes may differ)."""
    rng = np.random.default_rng(len(str(root)))
    for i in range(count):
        a = rng.integers(0, 128, (size[1], size[0], 3), dtype=np.uint8)
        if side_by_side:
            root.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.concatenate([a, 255 - a], 1)).save(root / f"{i}.png")
        else:
            for folder, image, suffix in ((root / "A", a, "png"), (root / "B", 255 - a, "bmp")):
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(folder / f"{i}.{suffix}")


def _items(cfg: TrainConfig, epochs: int = 3) -> list[dict]:
    a, b, _, _ = scan_pairs(cfg, multiple=4)
    dataset = PairedDataset(a, b, cfg, seed=5, multiple=4)
    items = []
    for epoch in range(epochs):
        dataset.epoch = epoch
        items += [dataset[i] for i in range(len(dataset))]
    return items


def test_both_images_of_a_pair_get_one_crop_and_flip_and_btoa_swaps_them(tmp_path: Path) -> None:
    _write_pairs(tmp_path / "aligned" / "train", 2)
    _write_pairs(tmp_path / "folders", 2, side_by_side=False)
    (tmp_path / "folders" / "A").rename(tmp_path / "folders" / "trainA")
    (tmp_path / "folders" / "B").rename(tmp_path / "folders" / "trainB")
    for layout in ("aligned", "folders"):
        for direction in ("AtoB", "BtoA"):
            cfg = TrainConfig.create(
                "pix2pix",
                dataroot=str(tmp_path / layout),
                preprocess="crop",
                crop_size=32,
                direction=direction,
            )
            items = _items(cfg)
            for item in items:
                assert item["A"].shape == item["B"].shape == (3, 32, 32)
                assert torch.allclose(item["B"], -item["A"], atol=1e-6), (layout, direction)
                assert (item["A"] < 0).all() == (direction == "AtoB")  # the input is the darker half
            crops = {tuple(item["A"][0, 0, :4].tolist()) for item in items[::2]}  # one image, three epochs
            assert len(crops) > 1, "the crop or flip never changed"
    again = _items(cfg)  # the same seed replays every crop and flip: what makes resume exact
    assert all(torch.equal(x["A"], y["A"]) for x, y in zip(items, again, strict=True))


def test_pix2pix_trains_on_pairs_resumes_exactly_and_is_scored_against_its_targets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "load_inception", lambda path=None, device="cpu": StandInInception())
    root = tmp_path / "data"
    _write_pairs(root / "train", 5)
    _write_pairs(root / "test", 2)
    Image.new("RGB", (97, 40)).save(root / "train" / "odd.png")
    # resnet_6blocks, batch norm and dropout (pix2pix's); dropout draws from the global RNG, which
    # checkpoints keep: the resumed run must match the uninterrupted one exactly
    straight = train(
        tiny_config(root, tmp_path / "a", "pix2pix", max_steps=6, eval_every=1),
        show_progress=False,
        report=False,
    )
    evaluations = (straight.run_dir / "eval_log.jsonl").read_text().splitlines()
    assert [set(json.loads(row)["metrics"]) for row in evaluations] == [{"FID A→B", "KID A→B"}]
    cfg = tiny_config(root, tmp_path / "b", "pix2pix", max_steps=3)
    first = train(cfg, show_progress=False, report=False)
    cfg.max_steps = 6
    resumed = train(cfg, first.run_dir, show_progress=False, report=False)
    weights = [checkpoints.read_weights(r.checkpoint)[0] for r in (straight, resumed)]
    for name in ("G", "D"):
        for key, value in weights[0][name].items():
            assert torch.equal(value, weights[1][name][key]), (name, key)
    assert capsys.readouterr().err.count("odd.png: its width 97 is odd") == 3  # once per run

    rows = [json.loads(line) for line in (resumed.run_dir / "log.jsonl").read_text().splitlines()]
    assert {"G_GAN", "G_L1", "D_real", "D_fake", "D"} <= set(rows[0])
    assert rows[0]["D"] == pytest.approx((rows[0]["D_real"] + rows[0]["D_fake"]) / 2, rel=1e-5)
    grid = np.asarray(Image.open(resumed.run_dir / "samples" / "step_0000006.png"), np.float64) / 255
    assert grid.shape == (70, 104, 3)  # two test pairs by input | output | target, 32 px and 2 px gaps
    inputs, targets = grid[2:34, 2:34], grid[2:34, 70:102]
    assert np.abs(targets - (1 - inputs)).max() <= 2 / 255  # the target is the input's own partner

    result = evaluate(
        resumed.run_dir, root, out_dir=tmp_path / "eval", inception=StandInInception(), kid_subsets=2,
        show_progress=False,
    )  # fmt: skip
    assert [(row.method, row.direction) for row in result.rows] == [
        ("pix2pix", "A→B"),
        ("untranslated input", "A→B"),
    ]
    assert {"PSNR", "SSIM", "FID", "KID"} <= set(result.columns)
    baseline = result.row("untranslated input", "A→B").scores
    assert baseline["SSIM"] < 0.5 and baseline["PSNR"] < 10  # B is A's negative
    with Image.open(tmp_path / "eval" / "triplets.png") as triplets:
        assert triplets.size == (3 * 154 + 2 * 4, 2 * 128 + 4)  # two rows of 48x40 images scaled to 128 px
    (tmp_path / "eval" / "triplets.png").rename(resumed.run_dir / "triplets.png")
    assert "input | output | target" in write_report(resumed.run_dir).read_text()


def test_released_style_pix2pix_generator_file_loads_and_translates(tmp_path: Path) -> None:
    """A reference ``latest_net_G.pth`` (a U-Net with batch norm and dropout) saved by PyTorch before 0.4.1,
    which did not save batch norm's step counter."""
    torch.manual_seed(0)
    net = build_generator(NetConfig(netG="unet_128", ngf=4, norm="batch", dropout=True))
    with torch.no_grad():
        net.train()(torch.randn(2, 3, 128, 128))  # running statistics away from their initial values
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "latest_net_G.pth")
    loaded, found = load_generator(tmp_path / "latest_net_G.pth")
    assert (found.netG, found.norm, found.ngf) == ("unet_128", "batch", 4)
    assert translations(tmp_path / "latest_net_G.pth") == ("AtoB",)
    x = torch.rand(1, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), net.eval()(x))


def test_bad_paired_input_is_one_line_each(tmp_path: Path) -> None:
    unpaired = tmp_path / "unpaired"
    for folder, name in (("trainA", "horse"), ("trainB", "zebra")):
        (unpaired / folder).mkdir(parents=True)
        Image.new("RGB", (40, 40)).save(unpaired / folder / f"{name}.png")
    cfg = tiny_config(unpaired, tmp_path / "out", "pix2pix")
    with pytest.raises(CycleGANError, match=r"share no file name.*use --model cycle_gan or cut"):
        train(cfg, show_progress=False)
    assert not (tmp_path / "out" / "run").exists()

    mixed = tmp_path / "mixed"
    _write_pairs(mixed / "train", 1)
    Image.new("RGB", (41, 20)).save(mixed / "train" / "odd.png")
    _write_pairs(mixed, 2, side_by_side=False)
    (mixed / "A").rename(mixed / "trainA")
    (mixed / "B").rename(mixed / "trainB")
    Image.new("RGB", (30, 20)).save(mixed / "trainB" / "0.bmp")  # now a partner of another size
    Image.new("RGB", (40, 40)).save(mixed / "trainA" / "alone.png")
    aligned = find_pairs(TrainConfig.create("pix2pix", dataroot=str(mixed)))[1]
    assert [(p.name, why) for p, why in aligned] == [
        ("odd.png", "its width 41 is odd: side by side, A and B must be halves of equal width")
    ]
    report = check_data(mixed)  # pix2pix takes the side-by-side images where there are both layouts
    assert report.pairing is not None and report.pairing.pairs == 1
    assert "train/odd.png: its width 41 is odd" in format_report(report)
    (mixed / "train" / "0.png").unlink()
    with pytest.raises(CycleGANError, match=r"no usable side-by-side A\|B image in .*odd\.png: its width 41"):
        find_pairs(TrainConfig.create("pix2pix", dataroot=str(mixed)))
    (mixed / "train" / "odd.png").unlink()
    (mixed / "train").rmdir()
    report = check_data(mixed)  # the folders: one pair left
    assert report.pairing is not None and report.pairing.pairs == 1
    text = format_report(report)
    assert "trainA/alone.png: has no partner of the same name in" in text
    assert "trainB/0.bmp: is 30x20 but its partner" in text and "partners must have one size" in text

    assert "it is an option of cycle_gan" in one_line_error(
        run_cli("train", "--model", "pix2pix", "--lambda_identity", "0.5", "--dataroot", str(mixed))
    )
    run = tmp_path / "cyclegan_run"
    run.mkdir()
    TrainConfig.create(dataroot=str(mixed), seed=1).save(run / "config.json")
    assert "--model cannot change when resuming (the run trains cycle_gan" in one_line_error(
        run_cli("train", "--resume", str(run), "--model", "pix2pix")
    )


def test_a_pair_whose_partners_differ_in_size_is_skipped_with_one_warning_in_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "data"
    _write_pairs(root, 3, side_by_side=False)
    (root / "A").rename(root / "trainA")
    (root / "B").rename(root / "trainB")
    Image.new("RGB", (30, 20)).save(root / "trainB" / "1.bmp")  # trainA/1.png is 48x40
    result = train(tiny_config(root, tmp_path / "out", "pix2pix", n_epochs_decay=0), show_progress=False)
    err = capsys.readouterr().err
    assert err.count("warning: skipping") == 1
    assert (
        f"warning: skipping {root / 'trainB' / '1.bmp'}: is 30x20 but its partner {root / 'trainA' / '1.png'}"
        " is 48x40: partners must have one size"
    ) in err
    assert result.skipped_files == {str(root / "trainB" / "1.bmp")}
    assert result.stopped is None and result.progress.step == 2  # one epoch: the two good pairs
    rows = [json.loads(line) for line in (result.run_dir / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [2] and np.isfinite(rows[0]["G_L1"])


def test_the_demo_trains_pix2pix_on_paired_renders_and_scores_it(tmp_path: Path) -> None:
    data = make_demo_dataset(tmp_path / "data_paired", n_train=3, n_test=2, size=32, paired=True)
    settings = DemoSettings(out=tmp_path, model="pix2pix", steps=2, size=32, ngf=4, ndf=4, device="cpu")
    result = train(settings.train_config(data), show_progress=False, report=False)
    assert result.run_dir.name == "day2night_pix2pix"
    table = score(result.run_dir, data, torch.device("cpu"))
    assert [(row.method, row.direction) for row in table.rows] == [
        ("pix2pix", "A→B"),
        ("colour transfer", "A→B"),
        ("untranslated input", "A→B"),
    ]


def _write_png16_pairs(folder: Path, count: int, seed: int) -> list[np.ndarray]:
    """Side-by-side 16-bit grey pairs A|B of 40x36 halves, B = 60000 - A; returns the A halves."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    halves = []
    for i in range(count):
        a = rng.integers(5000, 30000, (36, 40), dtype=np.uint16)
        image = np.concatenate([a, 60000 - a], 1)
        with open(folder / f"{i}.png", "wb") as f:
            png.Writer(80, 36, greyscale=True, bitdepth=16).write(f, image)
        halves.append(a)
    return halves


def test_pix2pix_trains_on_sixteen_bit_pairs_translates_back_and_scores_in_their_range(
    tmp_path: Path,
) -> None:
    root = tmp_path / "data"
    _write_png16_pairs(root / "train", 3, seed=1)
    tests = _write_png16_pairs(root / "test", 2, seed=2)
    cfg = tiny_config(
        root, tmp_path / "runs", "pix2pix", input_nc=1, output_nc=1, window_a="0,40000", max_steps=2
    )
    dataset, _ = training_data(cfg)
    assert (dataset.intensities.a.window, dataset.intensities.b.window) == ((0.0, 40000.0), (0.0, 65535.0))
    for i in range(len(dataset)):  # mapped side by side, then one resize, crop and flip for both
        item = dataset[i]
        assert item["A"].shape == item["B"].shape == (1, 32, 32)
        raw = (item["A"].double() + 1) * 20000 + (item["B"].double() + 1) * 32767.5  # A + (60000 - A)
        assert torch.allclose(raw, torch.full_like(raw, 60000.0), atol=0.05)
    run = train(cfg, show_progress=False, report=False).run_dir

    source = tmp_path / "in" / "x.png"
    source.parent.mkdir()
    shutil.copy(root / "test" / "0.png", source)
    assert (
        run_cli("translate", str(source), "--checkpoint", str(run), "--out", str(tmp_path / "out")).returncode
        == 0
    )
    assert formats.probe(tmp_path / "out" / "x.png").kind == formats.Kind("uint16", 1)

    result = evaluate(run, root, out_dir=tmp_path / "eval", show_progress=False)
    assert "FID" not in result.columns and {"PSNR", "SSIM"} <= set(result.columns)
    assert result.notes[0] == FID_NOTE
    assert formats.probe(tmp_path / "eval" / "AtoB" / "0.png").kind == formats.Kind("uint16", 1)
    # the do-nothing baseline in the data's own units: A through A's window against B through B's
    expected = [
        10 * np.log10(1 / np.mean((a / 40000 - (60000 - a.astype(float)) / 65535) ** 2)) for a in tests
    ]
    assert result.row("untranslated input", "A→B").scores["PSNR"] == pytest.approx(
        np.mean(expected), abs=1e-9
    )
    with Image.open(tmp_path / "eval" / "triplets.png") as triplets:
        shown = np.asarray(triplets.convert("L"), np.float64)
    assert shown.shape == (2 * 128 + 4, 3 * 142 + 2 * 4)  # two test pairs of 40x36 halves scaled to 128 px
    inputs = shown[:128, :142]  # the first input, through --window_a 0,40000 rather than the full 16 bits
    assert inputs.mean() == pytest.approx(tests[0].mean() / 40000 * 255, abs=2)
