"""``klinectl backup FILE`` and ``klinectl restore``: a hot, consistent backup into a file the client owns.

Under the shipped unit (``DynamicUser=yes``, ``ProtectSystem=strict``) the daemon may write only inside its
state directory, so it never opens the destination itself: ``klinectl`` creates FILE and passes its
descriptor over the control socket (SCM_RIGHTS), and the daemon writes into that descriptor.

The backup is a plain (ustar/GNU) tar archive, so ``tar -tvf`` lists it and ``tar -xf`` could unpack it:

- ``eventlog/data.mdb``: a compacted LMDB copy of the log, taken in one read transaction while candles keep
  arriving (LMDB writes straight into FILE after a header placeholder; the header is filled in after);
- ``pins.json``: the operator's run-time pins and unpins, when there are any;
- ``klined-backup.json``: the manifest (format, version, the copy's last seq, when, what rebuilds).

Projections are not included: they are derived from the log and rebuilt at the first start after a restore.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import stat
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson
import trio

from daemon import __version__

if TYPE_CHECKING:
    from daemon.app import Wiring

FORMAT: Final = "klined-backup/1"
LOG_MEMBER: Final = "eventlog/data.mdb"
PINS_MEMBER: Final = "pins.json"
MANIFEST_MEMBER: Final = "klined-backup.json"
BLOCK: Final = tarfile.BLOCKSIZE
PROJECTIONS_NOTE: Final = "projections are not included: klined rebuilds them from the log at its first start"


class BackupError(Exception):
    """A backup or restore that cannot be done; the message is one line the operator can act on."""


# -- the daemon's side ------------------------------------------------------------------------------------


async def write_backup(services: Wiring, fd: int) -> dict[str, Any]:
    """Write the archive into ``fd`` (an empty regular file open for writing); a summary for the client."""
    _check_destination(fd)
    pins = services.pins.path
    return await trio.to_thread.run_sync(lambda: _write_archive(fd, services.eventlog.copy_into, pins))


def _check_destination(fd: int) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise BackupError("the backup destination must be a regular file (LMDB writes it at known offsets)")
    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE not in (os.O_WRONLY, os.O_RDWR):
        raise BackupError("the backup destination is not open for writing")
    if info.st_size != 0:
        raise BackupError("the backup destination is not empty")


def _write_archive(fd: int, copy_log: Any, pins: Path) -> dict[str, Any]:
    started = time.monotonic()
    os.lseek(fd, 0, os.SEEK_SET)
    _write_all(fd, bytes(BLOCK))  # the log's header, filled in once its size is known
    last_seq = int(copy_log(fd))  # LMDB writes sequentially from the descriptor's offset
    end = os.lseek(fd, 0, os.SEEK_CUR)
    size = end - BLOCK
    os.pwrite(fd, _header(LOG_MEMBER, size), 0)
    _write_all(fd, _padding(size))
    members = [LOG_MEMBER]
    if pins.is_file():
        _write_member(fd, PINS_MEMBER, pins.read_bytes())
        members.append(PINS_MEMBER)
    manifest = {
        "format": FORMAT,
        "version": __version__,
        "created_at": int(time.time()),
        "last_seq": last_seq,
        "log_bytes": size,
        "members": [*members, MANIFEST_MEMBER],
        "projections": PROJECTIONS_NOTE,
    }
    _write_member(fd, MANIFEST_MEMBER, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    _write_all(fd, bytes(2 * BLOCK))  # tar's end-of-archive marker
    os.fsync(fd)
    total = os.lseek(fd, 0, os.SEEK_CUR)
    return {
        "bytes": total,
        "last_seq": last_seq,
        "members": manifest["members"],
        "elapsed_s": round(time.monotonic() - started, 3),
        "projections": PROJECTIONS_NOTE,
    }


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o600, int(time.time())
    header = info.tobuf(format=tarfile.GNU_FORMAT)  # base-256 sizes past 8 GiB, one block for short names
    assert len(header) == BLOCK
    return header


def _padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


def _write_member(fd: int, name: str, data: bytes) -> None:
    _write_all(fd, _header(name, len(data)) + data + _padding(len(data)))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# -- the client's side (klinectl) -------------------------------------------------------------------------


def send_backup(socket_path: Path, target: Path) -> dict[str, Any]:
    """Create ``target`` (never an existing file), hand its descriptor to the daemon, return its last answer.
    A failed backup leaves no file behind."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    answer: dict[str, Any] = {}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(socket_path))
            socket.send_fds(sock, [orjson.dumps({"cmd": "backup"}) + b"\n"], [fd])
            os.close(fd)
            fd = -1
            for event in _answers(sock):
                answer = event  # progress lines may come first; the last one is the outcome
    finally:
        if fd >= 0:
            os.close(fd)
        if answer.get("event") != "done":
            target.unlink(missing_ok=True)
    if not answer:
        raise ConnectionRefusedError("the daemon closed the connection without an answer")
    return {**answer, "path": str(target)} if answer.get("event") == "done" else answer


def _answers(sock: socket.socket) -> Iterator[dict[str, Any]]:
    buffer = b""
    while chunk := sock.recv(65536):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield orjson.loads(line)


# -- restore (offline: the daemon is stopped) -------------------------------------------------------------


def restore_backup(archive: Path, data_dir: Path) -> dict[str, Any]:
    """Unpack ``archive`` into ``data_dir`` for a daemon that is not running, then check the log opens and
    ends at the manifest's seq. Refuses a data directory that already holds a log (move it away first);
    stale projections there are removed (they would describe another log). Files take the data
    directory's owner, so a root operator restoring for the unit's dynamic user leaves it able to write."""
    with _open_archive(archive) as tar:
        manifest = _manifest(tar, archive)
        log_dir = data_dir / "eventlog"
        if (log_dir / "data.mdb").exists():
            raise BackupError(f"{log_dir} already holds an event log: stop klined and move it away first")
        data_dir.mkdir(parents=True, exist_ok=True)
        log_dir.mkdir(exist_ok=True)
        owner = os.stat(data_dir)
        _extract(tar, LOG_MEMBER, log_dir / "data.mdb", owner)
        restored = ["eventlog/data.mdb"]
        if PINS_MEMBER in tar.getnames():
            _extract(tar, PINS_MEMBER, data_dir / PINS_MEMBER, owner)
            restored.append(PINS_MEMBER)
    projections = data_dir / "projections"
    removed_projections = projections.exists()
    if removed_projections:
        shutil.rmtree(projections)
    last_seq = _verify(log_dir)
    for path in (log_dir, *log_dir.iterdir()):  # lock.mdb too: opening the log to check it made one
        _chown_like(path, owner)
    if last_seq != manifest["last_seq"]:
        raise BackupError(f"the restored log ends at seq {last_seq}, its manifest says {manifest['last_seq']}")
    return {
        "data_dir": str(data_dir),
        "last_seq": last_seq,
        "files": restored,
        "backup_version": manifest.get("version"),
        "created_at": manifest.get("created_at"),
        "stale_projections_removed": removed_projections,
        "projections": PROJECTIONS_NOTE,
    }


def _open_archive(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, "r:")
    except (OSError, tarfile.TarError) as e:
        raise BackupError(f"{archive} is not a klined backup: {e}") from None


def _manifest(tar: tarfile.TarFile, archive: Path) -> dict[str, Any]:
    try:
        raw = tar.extractfile(MANIFEST_MEMBER)
    except KeyError:
        raw = None
    if raw is None:
        raise BackupError(f"{archive} has no {MANIFEST_MEMBER}: not a klined backup")
    try:
        manifest = json.loads(raw.read())
    except ValueError:
        raise BackupError(f"{archive}: {MANIFEST_MEMBER} is not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{archive}: unknown backup format {manifest.get('format')!r}, expected {FORMAT}")
    if LOG_MEMBER not in tar.getnames():
        raise BackupError(f"{archive} has no {LOG_MEMBER}")
    return manifest


def _extract(tar: tarfile.TarFile, member: str, dest: Path, owner: os.stat_result) -> None:
    """One regular member to ``dest`` by name (never a path the archive chose), written then renamed."""
    info = tar.getmember(member)
    source = tar.extractfile(info) if info.isfile() else None
    if source is None:
        raise BackupError(f"{member} in the backup is not a regular file")
    partial = dest.with_name(dest.name + ".partial")
    with source, partial.open("wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)
        out.flush()
        os.fsync(out.fileno())
    _chown_like(partial, owner)
    partial.chmod(0o600)
    partial.replace(dest)


def _chown_like(path: Path, owner: os.stat_result) -> None:
    if os.geteuid() == 0 and (path.stat().st_uid, path.stat().st_gid) != (owner.st_uid, owner.st_gid):
        os.chown(path, owner.st_uid, owner.st_gid)


def _verify(log_dir: Path) -> int:
    from daemon.storage.eventlog import EventLog  # the offline restore path only

    try:
        with EventLog(log_dir) as restored:
            return restored.last_seq()
    except Exception as e:  # lmdb.Error and friends: report, do not leave the operator a traceback
        raise BackupError(f"the restored log does not open: {e!r}") from None
