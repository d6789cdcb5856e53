"""Safe writes for everything rapsam-edge leaves on a user's disk (issue 13): atomic renames that never clobber,
an inter-process lock per output, staging folders a later run recognises, and the user's umask.

Why here, in the lowest layer: the bundle, ``predict``'s output set and the metrics files all need the same
four guarantees, and each written once is one thing to get right. The two readers every layer shares live here for
the same reason: :func:`read_json` / :func:`read_json_object` (a user's JSON file, each failure one sentence of
``errors.py``) and :func:`sha256_path` (the one content hash of bundles, checkpoints and calibration images).

- :func:`rename_noreplace` / :func:`exchange`: Linux ``renameat2`` (RENAME_NOREPLACE / RENAME_EXCHANGE), so a
  commit never replaces a folder that appeared meanwhile and a swap of two folders is one atomic step; elsewhere a
  check-then-rename fallback, made safe by :class:`OutputLock` (every writer holds it).
- :class:`OutputLock`: ``flock`` on a hidden ``.NAME.lock`` beside the output; the kernel drops it when its holder
  dies (kill -9 included), and the holder unlinks the file on release, so no lock file outlives a clean run.
- staging names ``.NAME.<kind>.<pid>.<random>``: a run holding the lock removes every staging folder of that
  output (no other writer can be alive), so a killed run's leftovers go at the next run.
- files and folders are created with the user's umask (``tempfile`` makes them 0600 / 0700).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import InputError, InputNotFoundError

STAGING_KINDS = ("partial", "staging", "old", "calibrate")
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask round trip elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: Path) -> None:
    """Give a file or folder made by ``tempfile`` (0600 / 0700) the mode a plain ``open`` / ``mkdir`` would."""
    base = 0o777 if path.is_dir() else 0o666
    os.chmod(path, base & ~current_umask())


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """True when done; False when this system has no renameat2 (then the caller falls back)."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS):  # file system without the flag: fall back
        return False
    raise OSError(err, os.strerror(err), str(dst))


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; FileExistsError if ``dst`` exists (atomically so on Linux)."""
    if _renameat2(src, dst, _RENAME_NOREPLACE):
        return
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


def exchange(a: Path, b: Path) -> None:
    """Swap two existing paths atomically on Linux; elsewhere by three renames (under an OutputLock)."""
    if _renameat2(a, b, _RENAME_EXCHANGE):
        return
    aside = a.with_name(f"{a.name}.swap")
    os.rename(b, aside)
    os.rename(a, b)
    os.rename(aside, a)


def staging_dir(dest: Path, kind: str) -> Path:
    """A new hidden folder beside ``dest`` named so that :func:`remove_stale` recognises it."""
    assert kind in STAGING_KINDS
    dest.parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.{kind}.{os.getpid()}."))
    apply_umask(path)
    return path


def stale_paths(dest: Path) -> list[Path]:
    """Staging folders of ``dest`` left by earlier runs (call with the OutputLock held: then no writer is alive)."""
    if not dest.parent.is_dir():
        return []
    prefixes = tuple(f".{dest.name}.{kind}." for kind in STAGING_KINDS)
    return sorted(p for p in dest.parent.iterdir() if p.name.startswith(prefixes))


def remove_stale(dest: Path, log: Callable[[str], None] = lambda s: None) -> None:
    """Remove a killed run's staging folders of ``dest``. If ``dest`` itself vanished between the two renames of
    a non-atomic swap, its ``.old`` copy is put back first (the interrupted commit did not happen)."""
    olds = [p for p in stale_paths(dest) if p.name.startswith(f".{dest.name}.old.")]
    if not os.path.lexists(dest) and olds:
        os.rename(olds[-1], dest)
        log(f"restored {dest} from an interrupted commit")
    for p in stale_paths(dest):
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        log(f"removed {p.name}, left by an interrupted run")


class OutputLock:
    """Exclusive inter-process lock of one output path (a bundle, a predict folder), held for a whole write."""

    def __init__(self, dest: Path, on_wait: Callable[[str], None] = lambda s: None):
        self.dest, self.path, self.on_wait, self.fd = dest, dest.parent / f".{dest.name}.lock", on_wait, -1

    def __enter__(self) -> OutputLock:
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                self.on_wait(f"waiting for another rapsam-edge run (pid {holder}) writing {self.dest}")
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:  # the previous holder unlinked it on release: lock the new file
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)
                self.fd = fd
                return self
            os.close(fd)

    def __exit__(self, *exc: Any) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = -1


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a file whole or not at all (temp file beside it + rename), with the user's umask."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
        apply_umask(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=1, default=str) + "\n")


def read_json(path: str | Path, what: str, fix: str = "", invalid: type[InputError] = InputError,
              missing: type[InputError] = InputNotFoundError) -> Any:
    """The parsed content of a user's JSON file. Each failure is one sentence naming ``what`` and the file:
    ``missing`` when it is not a file, ``invalid`` when it is not UTF-8 JSON; ``fix`` (e.g. ``"; give a COCO
    panoptic JSON file"``) ends the sentences about content with what to do."""
    path = Path(path)
    if not path.is_file():
        raise missing(f"{what} {str(path)!r} does not exist.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid(f"{what} {str(path)!r} is not valid JSON ({exc}){fix}.") from None


def read_json_object(path: str | Path, what: str, fix: str = "", invalid: type[InputError] = InputError,
                     missing: type[InputError] = InputNotFoundError) -> dict[str, Any]:
    """:func:`read_json` of a file that must hold a JSON object (annotation files, panoptic JSON, splits)."""
    doc = read_json(path, what, fix, invalid, missing)
    if not isinstance(doc, dict):
        raise invalid(f"{what} {str(path)!r} must hold a JSON object, not a JSON {type(doc).__name__}{fix}.")
    return doc


def sha256_path(path: Path) -> str:
    """sha256 of a file's bytes, or of a folder's files (relative names and contents, sorted) for .mlpackage."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
