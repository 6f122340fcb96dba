"""Writing files so that a reader never sees half of one, and the timestamps results carry.

Every stage writes its outputs through :func:`write_atomic` (text or bytes),
:func:`write_all_atomic` (several files, renamed only once all are written) or
:func:`atomic_path` (for writers that want a path: parquet, savefig,
``save_pretrained``): the data goes to a temporary name in the same folder,
is flushed to disk, and only then renamed onto the target (``os.replace``),
so a crash leaves the previous version or the new one, never a mix. A
failure removes the temporary file.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Union


def utc_now() -> str:
    """The current time in UTC, ISO 8601 to the second (``2024-05-01T12:00:00Z``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _new_temporary(path: Path, directory: bool) -> Path:
    """A fresh ``.<name>.<random>.tmp`` beside ``path``, with the permissions of a file the umask allows
    (unlike ``tempfile``'s private 0600), since it becomes the output itself."""
    while True:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            if directory:
                os.mkdir(temporary, 0o777)
            else:
                os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return temporary
        except FileExistsError:
            continue


@contextmanager
def atomic_path(path: Union[str, os.PathLike], *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error, rename it onto ``path``.

    The temporary file (``.<name>.<random>.tmp``, created empty) is meant to
    be overwritten by the block. With ``directory=True`` it is an empty
    folder instead, for writers that fill a folder; it replaces ``path`` if
    that does not exist or is empty. The parent folder is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _new_temporary(path, directory)
    try:
        yield temporary
        if not directory:
            _fsync(temporary)
        os.replace(temporary, path)
    except BaseException:
        if directory:
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            temporary.unlink(missing_ok=True)
        raise


def write_atomic(path: Union[str, os.PathLike], data: Union[str, bytes], encoding: str = "utf-8") -> None:
    """Write ``data`` (text is encoded, newlines as given) to ``path`` atomically."""
    payload = data.encode(encoding) if isinstance(data, str) else data
    with atomic_path(path) as temporary:
        temporary.write_bytes(payload)


def write_all_atomic(files: Mapping[Union[str, os.PathLike], Union[str, bytes]], encoding: str = "utf-8") -> None:
    """Write several files; each appears whole or not at all.

    Every file is written to its temporary name first, and only when all of
    them are on disk are they renamed into place, so a failure while writing
    leaves the earlier versions untouched.
    """
    with ExitStack() as stack:
        staged = [(stack.enter_context(atomic_path(path)), data) for path, data in files.items()]
        for temporary, data in staged:
            temporary.write_bytes(data.encode(encoding) if isinstance(data, str) else data)
