"""Atomic file writes, the one way every command writes a file.

The text goes to a temporary file beside the target and is renamed over it, so a reader (or a run
killed half-way) sees the old file or the new one, never part of one; the temporary file is removed
if writing fails. A symbolic link is written through (its target is replaced, the link stays), and a
path that is not a regular file (/dev/stdout, /dev/null, a named pipe) is written to as it is: a
rename would replace the device or pipe with a plain file.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path


def write_lines_atomic(path: str | Path, lines: Iterable[str]) -> Path:
    """Write ``lines`` (each with its own newline, produced lazily if need be) to ``path`` atomically."""
    def write(f) -> None:
        for line in lines:
            f.write(line)
    return _write_atomic(path, "w", write)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (a plot's PNG)."""
    return _write_atomic(path, "wb", lambda f: f.write(data))


def _write_atomic(path: str | Path, mode: str, write) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path`` opened with ``mode``, then rename it
    over ``path``."""
    encoding = "utf-8" if "b" not in mode else None
    path = Path(path)
    if path.exists() and not stat.S_ISREG(path.stat().st_mode):  # a device or a pipe: a stream anyway
        with open(path, mode, encoding=encoding) as f:
            write(f)
        return path
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            os.chmod(tmp, _mode_for(path))  # mkstemp makes it private (0600); the file is not
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def give_default_modes(folder: str | Path) -> None:
    """Give the files in ``folder`` the permissions a new file gets (0666 less the umask):
    safetensors writes its files private (0600), which locks out the other users of a shared
    adapter catalogue or model cache."""
    mode = _new_file_mode()
    for path in Path(folder).iterdir():
        if path.is_file():
            os.chmod(path, mode)


def _mode_for(path: Path) -> int:
    """The permissions a file written at ``path`` gets: those of the file it replaces, else what
    ``open()`` would give a new file (0666 less the umask)."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return _new_file_mode()


def _new_file_mode() -> int:
    """What ``open()`` gives a new file: 0666 less the umask."""
    return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux says it without changing it (setting it, even briefly, races other threads)
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Umask:")), 8)
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)
        os.umask(umask)
        return umask


STAGING_PREFIX = ".staging-"  # a folder of files being written, beside where they go
STAGED_MARKER = ".complete"  # in a staging folder: every file is written; moving them in may start
REMOVED_MARK = "-"  # a line of the marker that starts so names a file of the parent folder to remove


def move_staged_files(staging: Path, names: Iterable[str], remove: Iterable[str] = ()) -> None:
    """Move the files ``names`` of a finished ``staging`` folder into its parent folder, and remove the
    parent's files ``remove`` (those that described what is replaced), as one change.

    Each ``os.replace`` is atomic, but a set of them is not: a run killed between the weights and
    their config would pair new weights with the old config. So the staging folder is marked
    complete first, and ``finish_staged_writes`` (called whenever the catalogue is read) moves what a
    kill left there; a folder never marked complete is discarded, leaving the previous files."""
    lines = [*(REMOVED_MARK + name for name in remove), *names]
    write_text_atomic(staging / STAGED_MARKER, "\n".join(lines) + "\n")  # a half-written list would move half
    _move_marked(staging)


def finish_staged_writes(folder: Path) -> None:
    """Complete, or discard, the staged writes a killed process left in ``folder`` (best effort:
    a catalogue this user cannot write is left as it is)."""
    for staging in folder.glob(f"{STAGING_PREFIX}*"):
        if not staging.is_dir() or _pid_alive(staging.name.removeprefix(STAGING_PREFIX)):
            continue
        try:
            if (staging / STAGED_MARKER).is_file():
                _move_marked(staging)
            else:
                shutil.rmtree(staging)
        except OSError:
            pass


def _move_marked(staging: Path) -> None:
    for name in (staging / STAGED_MARKER).read_text().split():
        if name.startswith(REMOVED_MARK):
            (staging.parent / name.removeprefix(REMOVED_MARK)).unlink(missing_ok=True)
        elif (staging / name).exists():  # not moved yet
            os.replace(staging / name, staging.parent / name)
    shutil.rmtree(staging, ignore_errors=True)


def _pid_alive(pid: str) -> bool:
    """Whether the process that named a staging folder still runs (it may be writing it now)."""
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return write_lines_atomic(path, [text])


def refresh_generated(path: Path, text: str, what: str, command: str, check: bool) -> int:
    """Write the generated ``text`` to ``path`` (atomically, only when it changes) and say so; with
    ``check``, write nothing and return 1 when the file there is stale. ``what`` names the file's
    content and ``command`` the command that regenerates it, for the messages."""
    current = path.read_text(encoding="utf-8") if path.is_file() else None
    if check:
        if current != text:
            print(f"{path}: the {what} is stale; run `{command}`", file=sys.stderr)
            return 1
        print(f"{path}: the {what} is up to date", file=sys.stderr)  # silence read as "nothing checked"
        return 0
    if current != text:
        write_text_atomic(path, text)
    print(f"{path}: {what} {'updated' if current != text else 'already up to date'}", file=sys.stderr)
    return 0


def with_table(readme_text: str, generated: str, readme: Path, markers: tuple[str, str]) -> str:
    """``readme_text`` with the part between the ``markers`` replaced by ``generated``."""
    first, last = markers
    start, end = readme_text.find(first), readme_text.find(last)
    if start < 0 or end < start:
        raise ValueError(f"{readme}: no {first} ... {last} pair; put the two markers where the table goes")
    return readme_text[:start + len(first)] + "\n" + generated + "\n" + readme_text[end:]


def refresh_readme_table(readme: Path, generated: str, markers: tuple[str, str], name: str, command: str,
                         check: bool) -> int:
    """Put ``generated`` between ``markers`` in ``readme`` through ``refresh_generated`` (``name``: the
    table, ``command``: the one that regenerates it)."""
    if not readme.is_file():
        raise ValueError(f"{readme}: no such file; --readme names the README that holds the table markers")
    updated = with_table(readme.read_text(encoding="utf-8"), generated, readme, markers)
    return refresh_generated(readme, updated, name, command, check)
