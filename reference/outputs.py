"""Output paths of every ``dlu`` command: checked before the work starts, written atomically.

One mechanism for all commands (docs/robustness.md):

- :func:`check_output_file` / :func:`check_output_dir` run before any long work. They raise
  :class:`OutputError` (a ``ValueError``: ``dlu`` prints it as one line and exits 2) when the
  path cannot be written: a folder where a file is expected, a file where a folder is
  expected (or on the way to it), or a parent that refuses a new file (read-only).
- :func:`atomic_write` writes a file through a temporary file beside it and a rename.
- :func:`publish_dir` puts a finished temporary directory at its final path with renames only:
  with ``replace`` it swaps the two atomically (Linux ``renameat2(RENAME_EXCHANGE)``), so a
  SIGKILL at any moment leaves the old or the new directory complete at the final path; without
  ``replace`` it uses ``RENAME_NOREPLACE``, so of two runs racing for one path exactly one wins.
- :func:`claim` holds an advisory lock on ``PARENT/.NAME.lock`` for the length of a run, so a
  second run for the same path fails at once instead of after its work; :func:`sweep_stale`
  removes (and reports) the temporary directories that killed runs left beside a path.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


class OutputError(ValueError):
    """An output path that cannot be written (the message names it and says why)."""


def _nearest_existing(p: Path) -> Path:
    q = p
    while not q.exists() and not q.is_symlink():
        if q.parent == q:
            break
        q = q.parent
    return q


def _probe_writable(folder: Path, what: str, target: Path) -> None:
    """Create and remove a file in ``folder`` (``os.access`` says yes to root on a read-only mount)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".dlu-probe-", dir=folder)
    except OSError as exc:
        raise OutputError(f"{what} {target}: cannot write in {folder} ({exc.strerror})") from None
    os.close(fd)
    os.unlink(tmp)


def _check_parents(p: Path, what: str) -> None:
    anc = _nearest_existing(p.parent)
    if not anc.is_dir():
        raise OutputError(f"{what} {p}: {anc} is a file, not a folder")
    _probe_writable(anc, what, p)


def check_output_file(path: str | Path, what: str = "--out") -> Path:
    """``path`` as a :class:`Path` if a file can be written there; :class:`OutputError` if not."""
    p = Path(path)
    if str(path).endswith(os.sep) or p.is_dir():
        raise OutputError(f"{what} {path}: is a folder; expected a file name")
    _check_parents(p, what)
    return p


def check_output_dir(path: str | Path, what: str = "--out") -> Path:
    """``path`` as a :class:`Path` if it is (or can become) a writable folder; :class:`OutputError` if not."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{what} {p}: is a file; expected a folder")
    if p.is_dir():
        _probe_writable(p, what, p)
    else:
        _check_parents(p, what)
    return p


def atomic_write(path: str | Path, write: Callable[[str], object], mode: int = 0o644) -> Path:
    """Call ``write(tmp)`` for a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        with writing(path, "output"):
            write(tmp)
            os.chmod(tmp, mode & ~_umask())
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_dir_beside(final: Path) -> Path:
    """A new empty directory ``PARENT/.NAME.tmp-PID-XXXX`` with ordinary permissions (for :func:`publish_dir`)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux ``renameat2``; False if the C library or file system does not offer it, OSError on failure."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def publish_dir(tmp: Path, final: Path, replace: bool, what: str = "output") -> None:
    """Move the finished directory ``tmp`` to ``final`` with renames only.

    ``replace``: an existing ``final`` is swapped out atomically and then deleted; without
    ``RENAME_EXCHANGE`` it is first renamed aside to ``.NAME.old-PID-*`` (a later
    :func:`sweep_stale` puts it back if the process died before the new one was in place).
    Not ``replace``: :class:`OutputError` if ``final`` exists, even if it appeared a moment ago.
    """
    if not replace:
        try:
            if not _renameat2(tmp, final, _RENAME_NOREPLACE):
                if final.exists():
                    raise FileExistsError(errno.EEXIST, "exists", str(final))
                os.rename(tmp, final)  # onto a non-empty directory this fails too
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise OutputError(f"{what} {final} appeared while this run worked (another run wrote it); "
                                  "this run's result was not kept") from None
            raise
        return
    if not final.exists():
        try:
            os.rename(tmp, final)
            return
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    if _renameat2(tmp, final, _RENAME_EXCHANGE):
        shutil.rmtree(tmp, ignore_errors=True)  # now holds the old directory
        return
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-{os.getpid()}-", dir=final.parent))
    old.rmdir()
    os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


_STALE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[^/]*$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(final: Path) -> list[str]:
    """Remove the ``.NAME.tmp-PID-*`` / ``.NAME.old-PID-*`` directories of dead processes beside ``final``.

    An ``old`` directory whose final path is missing (the process died between its two renames)
    is renamed back to ``final``. Returns one line per directory handled, for the caller to print.
    """
    done: list[str] = []
    parent = final.parent
    if not parent.is_dir():
        return done
    for p in sorted(parent.iterdir()):
        m = _STALE.match(p.name)
        if m is None or m["name"] != final.name or not p.is_dir() or _alive(int(m["pid"])):
            continue
        if m["kind"] == "old" and not final.exists():
            os.rename(p, final)
            done.append(f"restored {final} from {p.name}, left by a run that was killed while replacing it")
            continue
        shutil.rmtree(p, ignore_errors=True)
        done.append(f"removed {p}, left by a run (pid {m['pid']}) that was killed before it finished")
    return done


@contextlib.contextmanager
def claim(final: Path, what: str = "output") -> Iterator[None]:
    """Hold ``PARENT/.NAME.lock`` (``flock``) while a run works towards ``final``.

    :class:`OutputError` at once if another live process holds it. The lock is released when the
    process ends however it ends, so a killed run never blocks a later one.
    """
    import fcntl

    final.parent.mkdir(parents=True, exist_ok=True)
    lock = final.parent / f".{final.name}.lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(f"{what} {final}: another run is writing it now (lock {lock})") from None
        try:  # the holder before us may have removed the file between our open and our lock
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def prepare_dir(final: Path, force: bool, what: str, log: Callable[[str], object] | None = None) -> Path:
    """Before a run's work: its parent folder is writable, stale temporaries beside it are swept,
    and ``final`` does not exist unless ``force``. Lines about swept directories go to ``log``."""
    final = Path(final)
    check_output_dir(final.parent, "--out")
    if final.exists() and not final.is_dir():
        raise OutputError(f"{what} {final} is a file; expected a folder")
    for line in sweep_stale(final):
        if log is not None:
            log(f"{what}: {line}")
    if final.exists() and not force:
        raise OutputError(f"{what} {final} exists (choose another --name or pass --force)")
    return final


def caused_by_interrupt(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt is among the causes of ``exc`` (Ctrl-C inside numba-compiled
    code surfaces as a ``SystemError`` whose cause is the KeyboardInterrupt)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


@contextlib.contextmanager
def writing(path: Path, what: str) -> Iterator[None]:
    """Name ``path`` in an OSError raised while writing it (a full disk, a file-size limit), as one line."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"{what} {path}: could not be written: {exc.strerror or exc}"
                          + (f" ({exc.filename})" if exc.filename else "")) from exc
