"""engine/fsutil.py: open_inside checks what it opened, not a path that can change afterwards."""

from __future__ import annotations

import os
import sys

import pytest

from probret.engine.fsutil import open_inside

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="symlinks and O_NOFOLLOW are POSIX")


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "inside.mp4").write_bytes(b"inside")
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(b"secret")
    return root.resolve(), outside


def read(opened) -> bytes:
    with open(opened.source, "rb") as f:
        return f.read()


def test_a_regular_file_inside_is_opened_and_readable_by_its_source(folder):
    root, _ = folder
    opened = open_inside(root, "sub/inside.mp4")
    assert opened is not None and opened.path == root / "sub" / "inside.mp4"
    assert read(opened) == b"inside" and opened.stat.st_size == 6
    opened.close()
    opened.close()  # twice is harmless


@pytest.mark.parametrize("name", ["../outside.mp4", "sub/../../outside.mp4", "missing.mp4", "sub"])
def test_names_that_leave_the_folder_or_are_no_file_are_refused(folder, name):
    root, _ = folder
    assert open_inside(root, name) is None


def test_a_symlink_out_of_the_folder_is_refused(folder):
    root, outside = folder
    (root / "escape.mp4").symlink_to(outside)
    assert open_inside(root, "escape.mp4") is None


def test_a_symlink_inside_the_folder_is_followed_to_its_target(folder):
    root, _ = folder
    (root / "alias.mp4").symlink_to(root / "sub" / "inside.mp4")
    opened = open_inside(root, "alias.mp4")
    assert opened is not None and read(opened) == b"inside" and opened.path.name == "inside.mp4"
    opened.close()


def test_a_swap_after_the_open_does_not_change_what_is_read(folder):
    root, outside = folder
    opened = open_inside(root, "sub/inside.mp4")
    target = root / "sub" / "inside.mp4"
    target.unlink()
    target.symlink_to(outside)  # the attacker's swap, too late: the descriptor holds the checked file
    assert read(opened) == b"inside"
    opened.close()


def test_a_swap_between_the_check_and_the_open_is_refused(folder, monkeypatch):
    """The race itself: the name is swapped for a symlink out of the folder right after resolving."""
    import probret.engine.fsutil as fsutil

    root, outside = folder
    target = root / "sub" / "inside.mp4"
    real_inside = fsutil._inside

    def inside_then_swap(r, rel):
        checked = real_inside(r, rel)
        if target.exists() and not target.is_symlink():
            target.unlink()
            target.symlink_to(outside)
        return checked

    monkeypatch.setattr(fsutil, "_inside", inside_then_swap)
    assert open_inside(root, "sub/inside.mp4") is None


def test_a_directory_swapped_for_a_symlink_is_refused(folder, tmp_path, monkeypatch):
    """A parent directory swapped after the check: the open succeeds through it, the re-check fails."""
    import probret.engine.fsutil as fsutil

    root, _ = folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "inside.mp4").write_bytes(b"secret")
    real_inside = fsutil._inside
    calls = []

    def inside_then_swap(r, rel):
        checked = real_inside(r, rel)
        if not calls:
            os.rename(root / "sub", root / "old-sub")
            (root / "sub").symlink_to(elsewhere)
        calls.append(rel)
        return checked

    monkeypatch.setattr(fsutil, "_inside", inside_then_swap)
    assert open_inside(root, "sub/inside.mp4") is None
