"""``data_fingerprint`` of image folders: the same files at another path are the same data; the same
names holding other bytes (a re-encoded or resized copy) or other labels are not."""
from pathlib import Path

from attn_zoo.data import fingerprint


def _folder(root: Path, sizes: dict[str, int]) -> list[tuple[str, int]]:
    samples = []
    for index, (name, size) in enumerate(sorted(sizes.items())):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"j" * size)
        samples.append((str(path), index % 2))
    return samples


def _digest(root: Path, samples) -> str:
    return fingerprint.of_files(["cat", "dog"], [(str(root), samples)])


def test_a_copy_elsewhere_matches_and_a_re_encoded_copy_under_the_same_names_does_not(tmp_path):
    sizes = {f"{cls}/{number:04d}.jpg": 100 + number for cls in ("cat", "dog") for number in range(600)}
    original = _digest(tmp_path / "a", _folder(tmp_path / "a", sizes))
    assert _digest(tmp_path / "copy", _folder(tmp_path / "copy", sizes)) == original
    resized = {name: size // 2 for name, size in sizes.items()}  # every file smaller, names unchanged
    assert _digest(tmp_path / "small", _folder(tmp_path / "small", resized)) != original
    relabelled = [(path, 1 - label) for path, label in _folder(tmp_path / "r", sizes)]
    assert _digest(tmp_path / "r", relabelled) != original


def test_only_a_few_hundred_files_are_sized(tmp_path, monkeypatch):
    sizes = {f"cat/{number:05d}.jpg": 10 for number in range(3 * fingerprint.SIZED_FILES)}
    samples = _folder(tmp_path, sizes)
    sized = []
    monkeypatch.setattr(fingerprint.os.path, "getsize", lambda path: sized.append(path) or 10)
    _digest(tmp_path, samples)
    assert len(sized) == fingerprint.SIZED_FILES and len(set(sized)) == len(sized)
    assert sized[0].endswith("00000.jpg") and sized[-1].endswith(f"{3 * fingerprint.SIZED_FILES - 3:05d}.jpg")
