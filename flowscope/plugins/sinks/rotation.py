"""A log file that rotates itself as lumberjack v2 does (Antrea's flow logger writes through it).

- Writes append. When the next line would make the file larger than ``max_bytes``, the file is
  renamed to ``<name>-<UTC time as 2006-01-02T15-04-05.000><ext>`` (``ext`` from the last dot of
  the file's name, as Go's ``filepath.Ext``) and a new file is started, with the old file's mode
  (``0600`` for the very first).
- After each rotation, and at open, a background thread (lumberjack's "mill") removes the backups
  beyond the newest ``max_backups`` (a backup and its ``.gz`` count once; ``0`` keeps all) and those
  whose name is older than ``max_age_days`` (``0`` keeps all), then gzips the others when
  ``compress`` (``<backup>.gz``; the plain file is removed once the copy is whole).

Where this differs from lumberjack, it is so that nothing is lost or split: a file is only cut
between lines (lumberjack cuts between writes, and Antrea's 4 KiB buffer cuts lines), a line longer
than ``max_bytes`` gets a file of its own (lumberjack refuses the write), and a second rotation in
the same millisecond takes the next free millisecond for its name (lumberjack's rename would
replace the first backup).
"""

from __future__ import annotations

import calendar
import contextlib
import gzip
import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path

MEGABYTE = 1024 * 1024
"""lumberjack's megabyte: ``maxSize`` is in these."""
COMPRESS_SUFFIX = ".gz"
_TIME_FORMAT = "%Y-%m-%dT%H-%M-%S"
_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d{3}")


class PartialWrite(Exception):
    """A write failed after its first ``written`` bytes (whole lines) were stored; ``error`` says why."""

    def __init__(self, written: int, error: OSError):
        super().__init__(error.strerror or str(error))
        self.written = written
        self.error = error


def backup_stamp(milliseconds: int) -> str:
    """The time of a backup's name: UTC, ``2006-01-02T15-04-05.000``."""
    return time.strftime(_TIME_FORMAT, time.gmtime(milliseconds // 1000)) + f".{milliseconds % 1000:03d}"


def _parse_stamp(text: str) -> float | None:
    """Epoch seconds of a backup name's time, or ``None`` when ``text`` is not one."""
    if not _STAMP.fullmatch(text):
        return None
    try:
        seconds = calendar.timegm(time.strptime(text[:-4], _TIME_FORMAT))
    except ValueError:
        return None
    return seconds + int(text[-3:]) / 1000


class RotatingFile:
    """Appends whole lines to ``path``, rotating, pruning and compressing as lumberjack does.

    Not thread-safe for writers: one thread calls :meth:`open`, :meth:`write` and :meth:`close`; the
    mill runs in a thread of its own and only touches backups.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_bytes: int,
        max_backups: int = 0,
        max_age_days: int = 0,
        compress: bool = False,
        logger: logging.Logger | None = None,
    ):
        self.path = Path(path)
        self.max_bytes = max(1, max_bytes)
        self.max_backups = max_backups
        self.max_age_days = max_age_days
        self.compress = compress
        self.logger = logger or logging.getLogger(__name__)
        name = self.path.name
        dot = name.rfind(".")
        self._ext = name[dot:] if dot >= 0 else ""
        self._prefix = name[: len(name) - len(self._ext)] + "-"
        self._fd: int | None = None
        self._size = 0
        self._last_stamp = 0  # milliseconds of the newest backup this instance named
        self._mill_wanted = threading.Event()
        self._closing = False
        self._mill_thread: threading.Thread | None = None

    # -- writing -------------------------------------------------------------------------------

    def open(self) -> None:
        """Append to the file if it exists, else create it (and its directory); raises ``OSError``."""
        self._open_existing_or_new()
        self._request_mill()

    def write(self, data: bytes) -> None:
        """Append ``data``, whole lines ending in ``\\n``, rotating between lines as needed.

        Each piece that goes into one file is written whole or not at all: on an error the file is
        cut back to where the piece began, and :class:`PartialWrite` says how many bytes of ``data``
        (whole lines, in earlier pieces) were stored before it.
        """
        written, size = 0, len(data)
        try:
            if self._fd is None:  # a failed rotation left no file open
                self._open_existing_or_new()
            while written < size:
                room = self.max_bytes - self._size
                if size - written <= room:
                    end = size
                else:
                    end = data.rfind(b"\n", written, written + max(room, 0)) + 1
                    if end <= written:  # not one more line fits
                        if self._size:
                            self._rotate()
                            continue
                        end = data.find(b"\n", written) + 1 or size  # a line longer than max_bytes: alone
                self._append(memoryview(data)[written:end])
                written = end
        except OSError as exc:
            raise PartialWrite(written, exc) from exc

    def close(self) -> None:
        """Close the file, then let the mill finish what it has to do."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._closing = True
        if self._mill_thread is not None:
            self._mill_wanted.set()
            self._mill_thread.join()
            self._mill_thread = None

    def _append(self, piece: memoryview) -> None:
        assert self._fd is not None
        fd = self._fd
        start = os.lseek(fd, 0, os.SEEK_END)  # not the size kept: someone may have truncated the file
        try:
            while piece:
                piece = piece[os.write(fd, piece) :]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            self._size = start
            raise
        self._size = os.lseek(fd, 0, os.SEEK_CUR)

    def _open_existing_or_new(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except FileNotFoundError:
            self._open_new()
            return
        self._size = os.fstat(self._fd).st_size

    def _open_new(self) -> None:
        """Move the file aside to a backup name, if there is one, and start an empty one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mode = 0o600
        try:
            mode = self.path.stat().st_mode & 0o7777
        except FileNotFoundError:
            pass
        else:
            os.rename(self.path, self._backup_path())
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        self._size = 0

    def _rotate(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._open_new()
        self._request_mill()

    def _backup_path(self) -> Path:
        """A backup name for now, unused by any backup (plain or compressed)."""
        stamp = max(int(time.time() * 1000), self._last_stamp + 1)
        while True:
            path = self.path.with_name(f"{self._prefix}{backup_stamp(stamp)}{self._ext}")
            if not path.exists() and not path.with_name(path.name + COMPRESS_SUFFIX).exists():
                self._last_stamp = stamp
                return path
            stamp += 1

    # -- the mill ------------------------------------------------------------------------------

    def _request_mill(self) -> None:
        if not (self.max_backups or self.max_age_days or self.compress):
            return
        if self._mill_thread is None:
            self._closing = False
            self._mill_thread = threading.Thread(target=self._mill_loop, name=f"mill-{self.path.name}", daemon=True)
            self._mill_thread.start()
        self._mill_wanted.set()

    def _mill_loop(self) -> None:
        while True:
            self._mill_wanted.wait()
            self._mill_wanted.clear()
            self._mill_once()
            if self._closing and not self._mill_wanted.is_set():
                return

    def backups(self) -> list[tuple[float, str]]:
        """The backups beside the file, newest first: (time in the name, file name)."""
        found = []
        prefix = self._prefix
        for entry in os.scandir(self.path.parent):
            name = entry.name
            if not name.startswith(prefix) or entry.is_dir(follow_symlinks=False):
                continue
            for ext in (self._ext, self._ext + COMPRESS_SUFFIX):
                if name.endswith(ext) and len(name) >= len(prefix) + len(ext):
                    stamp = _parse_stamp(name[len(prefix) : len(name) - len(ext)])
                    if stamp is not None:
                        found.append((stamp, name))
                        break
        found.sort(reverse=True)
        return found

    def _mill_once(self) -> None:
        """Remove the backups beyond ``max_backups`` or ``max_age_days``, compress the others."""
        try:
            files = self.backups()
        except OSError as exc:
            self.logger.warning("cannot list the backups of %s: %s", self.path, exc)
            return
        remove: list[str] = []
        if 0 < self.max_backups < len(files):
            preserved: set[str] = set()
            kept = []
            for stamp, name in files:
                preserved.add(name.removesuffix(COMPRESS_SUFFIX))
                if len(preserved) > self.max_backups:
                    remove.append(name)
                else:
                    kept.append((stamp, name))
            files = kept
        if self.max_age_days > 0:
            cutoff = time.time() - self.max_age_days * 86400
            remove += [name for stamp, name in files if stamp < cutoff]
            files = [(stamp, name) for stamp, name in files if stamp >= cutoff]
        directory = self.path.parent
        for name in remove:
            try:
                os.remove(directory / name)
            except FileNotFoundError:
                pass
            except OSError as exc:
                self.logger.warning("cannot remove the old log %s: %s", directory / name, exc)
        if self.compress:
            for _, name in files:
                if not name.endswith(COMPRESS_SUFFIX):
                    self._compress(directory / name)

    def _compress(self, source: Path) -> None:
        target = source.with_name(source.name + COMPRESS_SUFFIX)
        try:
            mode = source.stat().st_mode & 0o7777
            with source.open("rb") as plain:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
                try:
                    with (
                        open(fd, "wb") as raw,
                        gzip.GzipFile("", "wb", compresslevel=6, fileobj=raw, mtime=0) as packed,
                    ):
                        shutil.copyfileobj(plain, packed, MEGABYTE)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.remove(target)
                    raise
            os.remove(source)
        except FileNotFoundError:
            pass  # removed meanwhile (by another mill)
        except OSError as exc:
            self.logger.warning("cannot compress the old log %s: %s", source, exc)
