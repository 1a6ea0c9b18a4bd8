# -*- test-case-name: tests.forwarding.test_security_config -*-
"""
Reading the small files an operator points the daemons at (certificates,
keys, the ConfigMap) without ever blocking the reactor or running out of
memory.

Those files sit in Secret and ConfigMap volumes, where kubelet swaps a
C{..data} symlink under the running process, so whatever the path leads to
at the moment of reading is what gets read.  A plain C{open(path).read()}
then trusts too much: a FIFO there blocks the reactor thread until someone
writes to it (C{/healthz} and every proxied request froze), and
C{/dev/zero} or a huge file is read until memory runs out.  L{readFile}
reads only regular files, and at most C{limit} bytes of them:

  - opened with C{O_NONBLOCK}, so opening a FIFO or a device returns at once
    instead of waiting for a writer or a carrier; C{O_NOCTTY}, so a
    terminal never becomes the daemon's controlling terminal;
  - symlinks followed (Secret and ConfigMap volumes are made of them), and
    the file I{opened} checked with C{fstat}, so a swap between checking and
    opening cannot slip a FIFO past the check;
  - read up to C{limit + 1} bytes, whatever C{st_size} says (C{/proc} files
    report 0), and refused if there was more.

Reading a regular file of a mebibyte at most from a local disk or tmpfs
takes well under a millisecond, so it stays on the reactor thread.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat
from collections.abc import Mapping, Sequence

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

#: Kubernetes refuses Secrets and ConfigMaps larger than this (1 MiB), so no
#: file they hold can be larger.
MAX_VOLUME_FILE_BYTES = 1024 * 1024

_KINDS = [
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
]


class FileRefused(OSError):
    """
    The path is not something we read: not a regular file, or too large.

    An C{OSError}, so that callers' existing handling (which names the file
    and C{strerror} in one line) covers it; C{strerror} is that one line's
    reason, e.g. C{"not a regular file (a FIFO)"}.
    """


def describeLimit(limit: int) -> str:
    """C{limit} as operators read sizes: C{"1 MiB"}, C{"64 KiB"}, C{"100 bytes"}."""
    for unit, size in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if limit >= size and limit % size == 0:
            return f"{limit // size} {unit}"
    return f"{limit} bytes"


def _kind(mode: int) -> str:
    for check, kind in _KINDS:
        if check(mode):
            return kind
    return "not a file"


def readFile(path: str, limit: int = MAX_VOLUME_FILE_BYTES) -> bytes:
    """
    The whole content of the regular file at C{path}, if it holds at most
    C{limit} bytes.  Never blocks on a FIFO or device, never reads more
    than C{limit + 1} bytes.

    @raise FileRefused: C{path} leads to something other than a regular
        file (a directory, a FIFO, a device, a socket), or to a file larger
        than C{limit}.
    @raise OSError: it cannot be opened or read (C{FileNotFoundError},
        C{PermissionError}, ...), as C{open} would raise.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise FileRefused(errno.EINVAL, f"not a regular file ({_kind(status.st_mode)})", path)
        chunks = []
        remaining = limit + 1
        # os.read allocates what it is asked for: ask for the size fstat
        # gives (plus one, to see the end), not a large fixed chunk.
        size = status.st_size + 1 if status.st_size else 64 * 1024
        while remaining > 0:
            chunk = os.read(fd, min(remaining, size))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        if remaining <= 0:
            raise FileRefused(
                errno.EFBIG, f"larger than {describeLimit(limit)}, the most accepted", path
            )
        return b"".join(chunks)
    finally:
        os.close(fd)


def filesDigest(paths: Sequence[str]) -> bytes:
    """
    A digest of the files' contents (each path once, in order), to tell
    whether they changed since: certificate rotation compares it with the
    digest of what the credentials in use were loaded from
    (L{contentsDigest}).  A file that cannot be read counts by why
    (missing, not a regular file, too large...), so a change of reason is
    a change too.  Read with L{readFile}: never blocks, never past 1 MiB a
    file.
    """
    entries = []
    for path in dict.fromkeys(paths):
        try:
            entries.append(b"file\0" + readFile(path))
        except OSError as e:
            entries.append(f"unreadable\0{type(e).__name__}\0{e.errno}".encode())
    return _digest(entries)


def contentsDigest(contents: Mapping[str, bytes]) -> bytes:
    """
    L{filesDigest} of files whose contents were read already (path to
    bytes, in the order of the paths given to L{filesDigest}): the digest
    of exactly what was loaded, with no second read that a rotation could
    slip between.
    """
    return _digest([b"file\0" + data for data in contents.values()])


def _digest(entries: Sequence[bytes]) -> bytes:
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(len(entry).to_bytes(8, "big"))
        digest.update(entry)
    return digest.digest()


__all__ = ["MAX_VOLUME_FILE_BYTES", "FileRefused", "describeLimit", "readFile"]


def writeAtomically(path: str | os.PathLike[str], data: bytes | str, mode: int = 0o644) -> None:
    """
    Replace the file at C{path} with C{data} (text is written as UTF-8),
    all at once, with permissions C{mode}.

    The bytes go to a temporary file in the same directory, created with
    C{mode} from the start (so a key is never readable by others, not even
    for an instant), flushed to disk, and then renamed over C{path}: a reader
    sees the old file or the new one, never half of one: CoreDNS never reads
    half a hosts file, a daemon never loads half a key.  The one writer of
    files in the package (the certificates and keys the tools mint, the
    hosts file).
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            # The umask may have taken bits away (e.g. 0644 under umask 077).
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


class Poller(Service):
    """
    Calls L{poll} every C{interval} seconds while it runs, the first time
    one interval after it starts; what a poll raises is logged (naming
    L{watched}) and the polling goes on.  The skeleton of the daemons' file
    watchers (the ConfigMap, the certificates): files in Kubernetes
    volumes change under a running process, with no notification that
    works on every volume type.

    @ivar clock: schedules the polls.
    @ivar interval: seconds between polls.
    """

    log = Logger()
    clock: IReactorTime
    interval: float
    _call: IDelayedCall | None = None

    def watched(self) -> str:
        """What is watched, for the log line of a failed poll."""
        return "files"

    def poll(self) -> object:
        """Check once, now; called every C{interval} while running, or directly."""
        raise NotImplementedError

    def startService(self) -> None:
        super().startService()
        self._call = self.clock.callLater(self.interval, self._tick)

    def stopService(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        super().stopService()

    def _tick(self) -> None:
        self._call = None
        try:
            self.poll()
        except Exception:
            self.log.failure("checking {watched} failed", watched=self.watched())
        finally:
            if self.running:
                self._call = self.clock.callLater(self.interval, self._tick)
