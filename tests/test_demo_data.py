"""The demo dataset must be deterministic, unpaired for training, paired for testing, and not solvable
by a global colour map, or the `cyclegan demo` scores would mean nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cyclegan.data.demo_scenes import (
    DAY_GLASS,
    channel_stats,
    colour_transfer,
    make_demo_dataset,
    random_scene,
    render,
)
from cyclegan.errors import CycleGANError

SMALL = {"n_train": 24, "n_test": 12, "size": 64}
SPLITS = ("trainA", "trainB", "testA", "testB")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "data", seed=3, **SMALL)


def load(root: Path, split: str) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted((root / split).glob("*.png"))])


def file_digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def luminance(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float64) @ np.array([0.2126, 0.7152, 0.0722])


def lit_windows(day: np.ndarray) -> np.ndarray:
    """Pixels of 2×2 blocks of clear glass: windows, never an anti-aliased roof edge that happens to match."""
    glass = np.abs(day.astype(int) - np.rint(np.array(DAY_GLASS) * 255)).max(axis=-1) <= 1
    blocks = glass[:-1, :-1] & glass[1:, :-1] & glass[:-1, 1:] & glass[1:, 1:]
    windows = np.zeros_like(glass)
    for dy in (0, 1):
        for dx in (0, 1):
            windows[dy : dy + blocks.shape[0], dx : dx + blocks.shape[1]] |= blocks
    return windows


def lights_up(day: np.ndarray, night: np.ndarray) -> bool:
    """True when every clear-glass window of `day` is clearly brighter in `night`: the pairing signature."""
    windows = lit_windows(day)
    return bool(windows.any()) and bool((luminance(night)[windows] > luminance(day)[windows] + 20).all())


def best_affine_rmse(source: np.ndarray, target: np.ndarray) -> float:
    """RMS error (grey levels) of the least-squares per-channel map target ≈ a·source + b for one image."""
    x, y = source.reshape(-1, 3).astype(np.float64), target.reshape(-1, 3).astype(np.float64)
    fitted = np.empty_like(y)
    for c in range(3):
        design = np.stack([x[:, c], np.ones(len(x))], axis=1)
        coefficients, *_ = np.linalg.lstsq(design, y[:, c], rcond=None)
        fitted[:, c] = design @ coefficients
    return float(np.sqrt(((fitted - y) ** 2).mean()))


@pytest.mark.parametrize("size", [32, 64, 128])
def test_render_size_and_type(size: int) -> None:
    scene = random_scene(np.random.default_rng(0))
    day, night = render(scene, night=False, size=size), render(scene, night=True, size=size)
    assert day.shape == night.shape == (size, size, 3)
    assert day.dtype == night.dtype == np.uint8
    assert luminance(night).mean() < luminance(day).mean() - 50


def test_layout_and_names(dataset: Path) -> None:
    for split, n in zip(SPLITS, (24, 24, 12, 12), strict=True):
        names = sorted(p.name for p in (dataset / split).iterdir())
        assert names == [f"{i:04d}.png" for i in range(n)]
        assert load(dataset, split).shape == (n, 64, 64, 3)
    assert (dataset / "demo_dataset.json").is_file()


def test_same_seed_gives_identical_files_and_other_seeds_differ(dataset: Path, tmp_path: Path) -> None:
    again = make_demo_dataset(tmp_path / "again", seed=3, **SMALL)
    assert file_digests(again) == file_digests(dataset)
    other = file_digests(make_demo_dataset(tmp_path / "other", seed=4, **SMALL))
    reference = file_digests(dataset)
    assert all(other[name] != reference[name] for name in reference if name.endswith(".png"))


def test_test_pairs_show_the_same_scene(dataset: Path) -> None:
    day, night = load(dataset, "testA"), load(dataset, "testB")
    assert all(lights_up(d, n) for d, n in zip(day, night, strict=True))
    mismatched = [lights_up(day[i], night[j]) for i in range(len(day)) for j in range(len(night)) if i != j]
    assert sum(mismatched) <= 0.05 * len(mismatched)
    # Lit windows, lamps and the moon are the only things brighter at night: a few percent of the image.
    brighter = (luminance(night) > luminance(day) + 20).mean(axis=(1, 2))
    assert brighter.max() < 0.1


def test_training_domains_are_unpaired_and_disjoint_from_test(dataset: Path) -> None:
    train_a, train_b = load(dataset, "trainA"), load(dataset, "trainB")
    consistent = [lights_up(a, b) for a in train_a for b in train_b]
    assert sum(consistent) <= 0.02 * len(consistent)
    digests = file_digests(dataset)
    for train, test in (("trainA", "testA"), ("trainB", "testB")):
        train_digests = {v for k, v in digests.items() if k.startswith(train)}
        assert not train_digests & {v for k, v in digests.items() if k.startswith(test)}


def test_no_global_affine_colour_map_translates_day_to_night(dataset: Path) -> None:
    day, night = load(dataset, "testA"), load(dataset, "testB")
    for d, n in zip(day, night, strict=True):
        assert best_affine_rmse(d, n) > 18
        assert best_affine_rmse(n, d) > 18
    # Per-image RGB mean/std matching is such an affine map, so the baseline cannot do better.
    mean, std = channel_stats(load(dataset, "trainB"))
    moved = colour_transfer(day, mean, std).astype(np.float64)
    assert np.sqrt(((moved - night) ** 2).mean()) > 18


def test_colour_transfer_matches_target_statistics() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(40, 220, size=(5, 32, 32, 3)).astype(np.uint8)
    images[..., 2] //= 2
    target_mean, target_std = np.array([100.0, 130.0, 90.0]), np.array([20.0, 12.0, 30.0])
    moved = colour_transfer(images, target_mean, target_std)
    assert moved.shape == images.shape and moved.dtype == np.uint8
    for image in moved:
        mean, std = channel_stats(image)
        np.testing.assert_allclose(mean, target_mean, atol=0.6)
        np.testing.assert_allclose(std, target_std, atol=0.6)
    single = colour_transfer(images[0], target_mean, target_std)
    np.testing.assert_array_equal(single, moved[0])


def test_rerun_reuses_the_dataset_without_rewriting(tmp_path: Path) -> None:
    root = make_demo_dataset(tmp_path / "data", n_train=3, n_test=2, size=32)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert make_demo_dataset(tmp_path / "data", n_train=3, n_test=2, size=32) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps
    assert list(tmp_path.iterdir()) == [root]  # no scratch folder left behind


def test_existing_empty_folder_is_filled(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    root = make_demo_dataset(tmp_path / "data", n_train=2, n_test=1, size=32)
    assert len(list((root / "testB").iterdir())) == 1


def test_refuses_to_touch_a_foreign_or_different_folder(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(CycleGANError, match="not empty"):
        make_demo_dataset(foreign, n_train=2, n_test=1, size=32)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    made = make_demo_dataset(tmp_path / "data", n_train=2, n_test=1, size=32)
    with pytest.raises(CycleGANError):
        make_demo_dataset(made, seed=1, n_train=2, n_test=1, size=32)
    (made / "testB" / "0000.png").unlink()
    with pytest.raises(CycleGANError):
        make_demo_dataset(made, n_train=2, n_test=1, size=32)

    with pytest.raises(CycleGANError):
        make_demo_dataset(tmp_path / "data", n_train=0)


def test_paired_training_split_renders_each_day_scene_by_night(tmp_path: Path) -> None:
    small = {"seed": 3, "n_train": 6, "n_test": 2, "size": 64}
    paired = make_demo_dataset(tmp_path / "paired", paired=True, **small)
    unpaired = make_demo_dataset(tmp_path / "unpaired", **small)
    for split in ("trainA", "testA", "testB"):  # the same day scenes and test scenes as without pairs
        assert np.array_equal(load(paired, split), load(unpaired, split)), split
    day, night = load(paired, "trainA"), load(paired, "trainB")
    assert all(lights_up(d, n) for d, n in zip(day, night, strict=True))
    assert not np.array_equal(night, load(unpaired, "trainB"))
    assert make_demo_dataset(tmp_path / "paired", paired=True, **small) == paired  # reused as it is
    with pytest.raises(CycleGANError, match="is not empty and is not a demo dataset"):
        make_demo_dataset(tmp_path / "paired", **small)
