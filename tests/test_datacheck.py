"""``data check``: counts, sizes and modes, unreadable and ignored files, and the verdict."""

from __future__ import annotations

import io
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cyclegan.data.check import DataReport, SplitReport, check_data, check_domains, format_report
from cyclegan.errors import CycleGANError


def _save(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _jpeg_bytes(size: tuple[int, int] = (64, 48)) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """trainA: five modes, a nested image, a corrupt and a truncated JPEG, a text file and a hidden file."""
    root = tmp_path / "data"
    a = root / "trainA"
    (a / "rgb.jpg").parent.mkdir(parents=True)
    (a / "rgb.jpg").write_bytes(_jpeg_bytes())
    _save(a / "gray.png", Image.new("L", (32, 32), 100))
    _save(a / "alpha.PNG", Image.new("RGBA", (32, 32), (1, 2, 3, 4)))
    _save(a / "palette.png", Image.new("P", (32, 32), 3))
    _save(a / "deep.png", Image.fromarray(np.full((16, 32), 40000, np.uint16)))
    _save(a / "sub" / "nested.bmp", Image.new("RGB", (32, 32)))
    (a / "corrupt.jpg").write_bytes(np.random.default_rng(1).bytes(2000))
    (a / "truncated.jpg").write_bytes(_jpeg_bytes()[:600])
    (a / "notes.txt").write_text("not an image")
    (a / ".hidden.png").write_bytes(b"junk that is never opened")
    _save(root / "trainB" / "b1.jpg", Image.new("RGB", (40, 30)))
    _save(root / "trainB" / "b2.webp", Image.new("RGB", (40, 30)))
    _save(root / "testA" / "t.tiff", Image.new("RGB", (32, 32)))
    (root / "README.txt").write_text("about")
    return root


def _split(report: DataReport, name: str) -> SplitReport:
    return next(s for s in report.splits if s.name == name)


def test_counts_modes_unreadable_ignored_and_verdict(dataset: Path) -> None:
    report = check_data(dataset)
    a = _split(report, "trainA")
    assert a.images == 6
    assert a.modes == Counter({"RGB": 2, "L": 1, "RGBA": 1, "P": 1, "I;16": 1})
    assert a.sizes == Counter({(32, 32): 4, (64, 48): 1, (32, 16): 1})
    assert sorted(p.name for p, _ in a.unreadable) == ["corrupt.jpg", "truncated.jpg"]
    assert "truncated" in dict((p.name, why) for p, why in a.unreadable)["truncated.jpg"].lower()
    assert [p.name for p in a.ignored] == ["notes.txt"]
    assert _split(report, "trainB").images == 2 and _split(report, "testA").images == 1
    assert not _split(report, "testB").exists
    assert report.others == ["README.txt"]
    assert report.will_train and report.problems == []
    assert report.warnings == ["2 unreadable images in trainA/: training skips them"]

    text = format_report(report)
    assert "min 32x16, max 64x48, most common 32x32 (4/6)" in text
    assert "I;16 1" in text
    assert "trainA/corrupt.jpg: cannot identify image file" in text
    assert "Not images, ignored by training (1):\n  trainA/notes.txt" in text
    assert re.search(r"^  testB/ +missing", text, re.MULTILINE)
    assert ".hidden" not in text
    assert text.splitlines()[-1] == "Verdict: will train (trainA/ 6 images, trainB/ 2 images)"


def test_missing_trainB_will_not_train(dataset: Path) -> None:
    for file in (dataset / "trainB").iterdir():
        file.unlink()
    (dataset / "trainB").rmdir()
    report = check_data(dataset)
    assert not report.will_train
    assert report.problems == [f"trainB/ is missing ({dataset / 'trainB'})"]
    assert (
        format_report(report).splitlines()[-1]
        == f"Verdict: will not train: trainB/ is missing ({dataset / 'trainB'})"
    )


def test_only_unreadable_or_no_images_will_not_train(tmp_path: Path) -> None:
    (tmp_path / "trainA").mkdir()
    (tmp_path / "trainA" / "bad.png").write_bytes(b"nope")
    (tmp_path / "trainB").mkdir()
    (tmp_path / "trainB" / "list.csv").write_text("a,b")
    report = check_data(tmp_path)
    assert report.problems == ["trainA/ has no readable images (1 unreadable)", "trainB/ has no images"]


def test_two_domain_folders(tmp_path: Path) -> None:
    _save(tmp_path / "horses" / "h.png", Image.new("RGB", (20, 20)))
    _save(tmp_path / "zebras" / "z.jpg", Image.new("L", (20, 20)))
    report = check_domains(tmp_path / "horses", tmp_path / "zebras")
    assert report.will_train and [s.images for s in report.splits] == [1, 1]
    text = format_report(report)
    assert text.startswith(f"Domain folders: domain A = {tmp_path / 'horses'}")
    assert text.splitlines()[-1] == "Verdict: will train (domain A 1 image, domain B 1 image)"


def test_missing_folder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(CycleGANError, match="no such folder"):
        check_data(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CycleGANError, match="not a folder"):
        check_domains(tmp_path, tmp_path / "file")
