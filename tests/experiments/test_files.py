"""Atomic writes: a reader sees the old file or the new one, never half of one; no temporary is left behind."""

from __future__ import annotations

import os
import re

import pytest

from experiments.files import atomic_path, utc_now, write_all_atomic, write_atomic


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_write_atomic_text_and_bytes(tmp_path):
    target = tmp_path / "sub" / "a.json"
    write_atomic(target, "é\r\n")  # text is UTF-8, newlines as given
    assert target.read_bytes() == "é\r\n".encode()
    write_atomic(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01" and _leftovers(target.parent) == []


def test_the_file_gets_the_permissions_the_umask_allows(tmp_path):
    previous = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "a.parquet"
    target.write_text("before")
    with pytest.raises(OSError, match="disk full"):
        with atomic_path(target) as temporary:
            assert temporary.parent == tmp_path and temporary.name.startswith(".a.parquet.")
            temporary.write_text("half a file")
            raise OSError("disk full")
    assert target.read_text() == "before" and _leftovers(tmp_path) == []


def test_atomic_path_for_a_folder(tmp_path):
    target = tmp_path / "weights"
    with atomic_path(target, directory=True) as temporary:
        assert temporary.is_dir() and not target.exists()
        (temporary / "config.json").write_text("{}")
    assert (target / "config.json").read_text() == "{}" and _leftovers(tmp_path) == []
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "other", directory=True) as temporary:
            (temporary / "half").write_text("x")
            raise RuntimeError
    assert not (tmp_path / "other").exists() and _leftovers(tmp_path) == []


def test_write_all_atomic_renames_only_when_every_file_is_written(tmp_path):
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    write_all_atomic({first: "1", second: "2"})
    assert (first.read_text(), second.read_text()) == ("1", "2")

    class Unwritable(str):
        def encode(self, *args):
            raise UnicodeError("cannot encode")

    with pytest.raises(UnicodeError):
        write_all_atomic({first: "new", second: Unwritable("x")})
    assert (first.read_text(), second.read_text()) == ("1", "2") and _leftovers(tmp_path) == []


def test_utc_now_is_iso_8601_to_the_second():
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", utc_now())
