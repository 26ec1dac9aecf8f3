"""Atomic writes: the target appears only on success, and what a killed earlier write left is cleared."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from talk3d_core.util.io import atomic_dir, atomic_path


def test_atomic_dir_replaces_the_target_only_on_success(tmp_path: Path):
    target = tmp_path / "frames"
    with atomic_dir(target) as tmp:
        (tmp / "000000.png").write_bytes(b"x")
    assert (target / "000000.png").is_file()
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "000001.png").write_bytes(b"y")
        raise RuntimeError("killed")
    assert sorted(p.name for p in target.iterdir()) == ["000000.png"]  # the finished one is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]


def test_a_killed_write_leaves_temporaries_the_next_write_removes(tmp_path: Path):
    # What SIGKILL leaves mid-write: the temporaries themselves (no finally clause runs).
    stale_dir = Path(tempfile.mkdtemp(prefix=".frames.", suffix=".tmp", dir=tmp_path))
    (stale_dir / "000000.png").write_bytes(b"x" * 1000)
    _, stale_file = tempfile.mkstemp(prefix=".audio.", suffix=".tmp.wav", dir=tmp_path)
    other_dir = Path(tempfile.mkdtemp(prefix=".crops.", suffix=".tmp", dir=tmp_path))  # another target's
    user_file = tmp_path / ".frames.notes.tmp"  # not tempfile's pattern: not ours to delete
    user_file.write_text("mine")
    with atomic_dir(tmp_path / "frames") as tmp:
        (tmp / "000000.png").write_bytes(b"y")
    with atomic_path(tmp_path / "audio.wav") as tmp:
        tmp.write_bytes(b"RIFF")
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"frames", "audio.wav", other_dir.name, user_file.name}
    assert not Path(stale_file).exists() and not stale_dir.exists()
