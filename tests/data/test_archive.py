"""Archive extraction (haloprune.data.archive): crafted tars cannot write outside the target, checksums are
verified before anything is extracted."""

from __future__ import annotations

from pathlib import Path

import pytest


def _tar_with(path: Path, name: str, data: bytes = b"x", link: str | None = None) -> Path:
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(name)
        if link is not None:
            info.type, info.linkname = tarfile.SYMTYPE, link
            tar.addfile(info)
        else:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(("name", "link"), [("../escape.txt", None), ("evil-link", "/etc/passwd")])
def test_crafted_tar_cannot_write_outside_the_target(tmp_path: Path, name: str, link: str | None) -> None:
    from haloprune.core.errors import DataError
    from haloprune.data.archive import safe_extract

    dest = tmp_path / "out" / "inner"
    archive = _tar_with(tmp_path / "evil.tar.gz", name, link=link)
    with pytest.raises(DataError, match="outside"):
        safe_extract(archive, dest, None)
    assert not (tmp_path / "out" / "escape.txt").exists()
    assert not (dest / "evil-link").exists()


def test_absolute_member_names_stay_inside_the_target(tmp_path: Path) -> None:
    from haloprune.data.archive import safe_extract

    name = f"{tmp_path}/outside.txt"  # absolute: the filter strips the leading "/" and keeps it inside
    safe_extract(_tar_with(tmp_path / "abs.tar.gz", name), tmp_path / "dest", None)
    assert not (tmp_path / "outside.txt").exists()
    assert (tmp_path / "dest" / name.lstrip("/")).exists()


def test_archive_checksum_is_verified_before_extraction(tmp_path: Path) -> None:
    from haloprune.core.errors import DataError
    from haloprune.core.io import sha256_file
    from haloprune.data.archive import safe_extract

    archive = _tar_with(tmp_path / "good.tar.gz", "data_batch_1", b"payload")
    with pytest.raises(DataError, match="does not match"):
        safe_extract(archive, tmp_path / "x", "0" * 64)
    assert not (tmp_path / "x").exists()
    out = safe_extract(archive, tmp_path / "y", sha256_file(archive))
    assert (out / "data_batch_1").read_bytes() == b"payload"
