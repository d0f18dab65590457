"""kcc/atomic.py: outputs staged beside their places and published by renames, all or none."""

import os

import pytest

from kcc.atomic import Outputs, write_atomic
from kcc.errors import KccError


def test_outputs_abort_removes_what_it_created(tmp_path):
    (tmp_path / "m.kmodel").write_bytes(b"old")
    outputs = Outputs()
    (outputs.directory(tmp_path / "a" / "b" / "rep") / "report.md").write_text("new")
    outputs.file(tmp_path / "m.kmodel", b"new")
    outputs.abort()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["m.kmodel"]
    assert (tmp_path / "m.kmodel").read_bytes() == b"old"


def test_outputs_commit_refuses_before_the_first_rename(tmp_path):
    """A final path that became a folder since the compile started: nothing is published, not half."""
    with Outputs() as outputs:
        (outputs.directory(tmp_path / "rep") / "report.md").write_text("new")
        outputs.file(tmp_path / "m.kmodel", b"new")
        (tmp_path / "m.kmodel").mkdir()
        with pytest.raises(KccError, match="m.kmodel"):
            outputs.commit()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["m.kmodel"]  # the folder made above


def test_written_files_get_the_usual_permissions(tmp_path):
    """Staging folders are private (0700); the files in them are created as any other file (umask)."""
    umask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "m.kmodel", b"LDMK")
    finally:
        os.umask(umask)
    assert (tmp_path / "m.kmodel").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["m.kmodel"]
