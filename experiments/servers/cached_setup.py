"""Set-up steps that run once per machine and are reused: a folder that is complete or absent.

A step builds into a temporary folder beside its target and renames it into
place when it has succeeded, so an interrupted build leaves nothing that
looks finished; a file lock makes a second job that starts meanwhile wait
and then reuse the result instead of building again. The folder's name
carries a key of everything the result depends on (versions, build flags,
the CPU's instruction set), so a change of any of them builds anew.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterable, Optional

from filelock import FileLock

from experiments.models import cache_dir

log = logging.getLogger(__name__)


class EngineUnavailable(RuntimeError):
    """This machine cannot run the engine (CPU, OS); the message says why. Tests skip on it."""


class SetupFailed(RuntimeError):
    """Setting an engine up failed; the message names the step and its log."""


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def setup_key(parts: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def engines_dir() -> Path:
    path = cache_dir() / "engines"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cached_folder(name: str, key_parts: Iterable[str], build: Callable[[Path, Path], None],
                  relocatable: bool = True) -> Path:
    """``engines/<name>-<key>``, made by ``build(folder, log_path)`` the first time.

    The build's log, ``engines/<name>-<key>.log``, stays after a failure.

    ``relocatable``: the build can happen in a temporary folder that is then
    renamed. A virtual environment cannot (its scripts name their own path),
    so it is built in place and marked complete with a stamp file.
    """
    target = engines_dir() / f"{name}-{setup_key(key_parts)}"
    stamp = target / ".complete"
    with FileLock(str(target) + ".lock"):
        if stamp.exists():
            return target
        building = target if not relocatable else target.with_name(target.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
        building.mkdir(parents=True)
        try:
            build(building, target.with_name(target.name + ".log"))
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        stamp_in = building / ".complete"
        stamp_in.write_text(f"built with Python {platform.python_version()} on {platform.machine()}\n")
        if relocatable:
            building.rename(target)
    return target


def run_step(what: str, command: list[str], log_path: Path, env: Optional[dict[str, str]] = None,
             cwd: Optional[Path] = None) -> None:
    """Run one set-up command, its output to ``log_path``; on failure, raise with the log's tail."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        out.write(f"\n$ {' '.join(command)}\n".encode())
        out.flush()
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    if done.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-25:]
        raise SetupFailed(f"{what} failed (exit status {done.returncode}); the last lines of {log_path}:\n"
                          + "\n".join(tail))


def say(message: str) -> None:
    """A set-up line on stderr (stdout is kept for the base_url line)."""
    print(f"[serve] {message}", file=sys.stderr, flush=True)
