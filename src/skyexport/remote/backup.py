"""The backup directory and `fetch()`.

    OUTPUT/<did>/repo.car      the repository, checked, replaced atomically on each run
    OUTPUT/<did>/blobs/<cid>   every blob, each checked against its CID before its rename
    OUTPUT/<did>/fetch.json    handle, DID, PDS, rev, when, counts, the repository's SHA-256,
                               what this run changed
    OUTPUT/<did>/.fetch-work/  temporary files of a run under way (emptied at the next)

A rerun is incremental: blobs already present and whole are not downloaded again, and the
repository is not downloaded again when the PDS reports the rev already backed up and
`repo.car` still has the recorded SHA-256.  Interrupted, a run leaves only whole files
visible: the previous `repo.car`, and each blob it finished.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._platform import sha256_regular
from .._record import Record
from ..errors import ExportError, OutputError
from ..exporter.progress import FINAL, ProgressChannel
from .blobs import DEFAULT_JOBS, DEFAULT_MAX_BLOB, BlobRun, fetch_blobs
from .errors import FetchError
from .http import Client
from .repo import DEFAULT_MAX_REPO, check_car, diff, download, latest_rev
from .resolve import resolve

DEFAULT_OUTPUT = "backups"
LISTED_MAX = 1000  # problems listed by name in fetch.json (the rest counted)
WORK = ".fetch-work"


class FetchProgress(Record):
    """One progress event of a fetch.  `status`: queued, running, then completed or failed
    (with `error`), always last.  `phase`: resolve, repo, check, blobs, done.  `repo_bytes`
    of `repo_total` (0 when the server does not say) downloaded; `blobs_done` of
    `blobs_total` (the blobs listed so far) handled, `blob_bytes` downloaded."""

    __slots__ = ("status", "phase", "repo_bytes", "repo_total", "blobs_done", "blobs_total",
                 "blob_bytes", "elapsed_s", "error")
    status: str
    phase: str
    repo_bytes: int
    repo_total: int
    blobs_done: int
    blobs_total: int
    blob_bytes: int
    elapsed_s: float
    error: str | None

    def __init__(self, status: str, phase: str, repo_bytes: int, repo_total: int,
                 blobs_done: int, blobs_total: int, blob_bytes: int, elapsed_s: float,
                 error: str | None = None) -> None:
        self._set(status=status, phase=phase, repo_bytes=repo_bytes, repo_total=repo_total,
                  blobs_done=blobs_done, blobs_total=blobs_total, blob_bytes=blob_bytes,
                  elapsed_s=elapsed_s, error=error)

    @property
    def rate(self) -> float:
        """Bytes per second so far (repository and blobs)."""
        n = self.repo_bytes + self.blob_bytes
        return n / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {k: getattr(self, k) for k in self.__slots__ if k != "error"}
        d["elapsed_s"] = round(self.elapsed_s, 3)
        d["rate"] = round(self.rate, 1)
        if self.error is not None:
            d["error"] = self.error
        return d


class FetchResult(Record):
    """What a fetch did.  `directory`: the backup directory; `pds`: the PDS it was
    fetched from, `pds_from`: "--pds" (the `pds` argument) or "did-document";
    `repo_changed`: False when the PDS reported the rev already backed up (nothing
    downloaded); `records_*`: the records
    added, removed and changed since the previous backup (all of them added on the first);
    `blobs_downloaded`/`blobs_present`: of the `blobs_listed` (by listBlobs, and those a
    record references that it did not list); `blobs_missing` (not served), `blobs_bad`
    (wrong bytes or too big: discarded), `blobs_failed` (gave up after the retries; a rerun
    tries again), `blobs_refused` (listed names that are not blob CIDs): one line each;
    `blobs_unlisted`: files in blobs/ the PDS no longer lists (kept)."""

    __slots__ = ("directory", "handle", "did", "pds", "pds_from", "rev", "repo_sha256",
                 "repo_bytes",
                 "records", "repo_changed", "records_added", "records_removed",
                 "records_changed", "blobs_listed", "blobs_downloaded", "blobs_present",
                 "blob_bytes", "blobs_missing", "blobs_bad", "blobs_failed", "blobs_refused",
                 "blobs_unlisted", "retries", "elapsed_s")
    directory: Path
    handle: str | None
    did: str
    pds: str
    pds_from: str
    rev: str | None
    repo_sha256: str
    repo_bytes: int
    records: int
    repo_changed: bool
    records_added: int
    records_removed: int
    records_changed: int
    blobs_listed: int
    blobs_downloaded: int
    blobs_present: int
    blob_bytes: int
    blobs_missing: tuple[str, ...]
    blobs_bad: tuple[str, ...]
    blobs_failed: tuple[str, ...]
    blobs_refused: tuple[str, ...]
    blobs_unlisted: int
    retries: int
    elapsed_s: float

    def __init__(self, **values: Any) -> None:
        self._set(**values)


class _Channel(ProgressChannel):
    """The export's progress channel, for FetchProgress events (whose counters are read
    under one lock, so they never go backwards)."""

    def _accept(self, event: Any) -> None:
        if self._final:
            return
        now = time.monotonic()
        self._queue.append((now, event))
        while len(self._queue) > 64:
            self._drop_oldest_running()
        self._last = event
        self._last_put = now
        self._final = event.status in FINAL
        self._cond.notify_all()


class _State:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.lock = threading.Lock()
        self.phase = "resolve"
        self.repo_bytes = 0
        self.repo_total = 0
        self.blobs: BlobRun | None = None

    def add_repo(self, n: int) -> None:
        with self.lock:
            self.repo_bytes += n

    def event(self, status: str, error: str | None = None) -> FetchProgress:
        b = self.blobs
        with self.lock:
            return FetchProgress(status, self.phase, self.repo_bytes, self.repo_total,
                                 b.done if b else 0, b.listed if b else 0,
                                 b.bytes if b else 0, time.monotonic() - self.t0, error)


def _dir(path: Path, what: str) -> None:
    """`path` is a real directory (created if absent); never a symlink."""
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    except OSError as exc:
        raise OutputError(f"cannot create {what} {path} ({exc.strerror}); choose another "
                          "--output") from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{what} {path} is not a directory (a symlink or a file); move it "
                          "away or choose another --output")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return {}
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {}
        data = os.read(fd, 8 << 20)
        obj = json.loads(data)
        return obj if isinstance(obj, dict) else {}
    except (OSError, ValueError):
        return {}
    finally:
        os.close(fd)


def _publish(tmp: Path, final: Path, data: bytes | None = None) -> None:
    if data is not None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    os.rename(tmp, final)
    try:
        dfd = os.open(final.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _write_meta(backup: Path, record: dict[str, Any]) -> None:
    data = (json.dumps(record, indent=2, ensure_ascii=False) + "\n").encode()
    _publish(backup / WORK / f"fetch.json.{os.urandom(4).hex()}.part",
             backup / "fetch.json", data)


def _clear_work(backup: Path) -> None:
    """Temporary files a killed run left (a run under way holds the lock)."""
    work = backup / WORK
    for d, prefix in ((work, ""), (backup, ".repo.car.")):
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            if name.startswith(prefix) and name.endswith(".part"):
                try:
                    os.unlink(d / name)
                except OSError:
                    pass


def _lock(backup: Path) -> int:
    fd = os.open(backup, os.O_RDONLY | os.O_CLOEXEC)
    try:
        import fcntl
    except ImportError:  # no advisory locks here (Windows): one run at a time, please
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FetchError(f"{backup}: another `skyexport fetch` is backing up this account "
                         "now; wait for it to finish") from None
    return fd


def fetch(who: str, output: str | os.PathLike[str] = DEFAULT_OUTPUT, *, pds: str | None = None,
          blobs: bool = True, jobs: int = DEFAULT_JOBS, max_repo_size: int = DEFAULT_MAX_REPO,
          max_blob_size: int = DEFAULT_MAX_BLOB,
          on_progress: Callable[[FetchProgress], object] | None = None) -> FetchResult:
    """Back up the account `who` (a handle or a DID) into `output/<did>/`: its repository
    as `repo.car` and, unless `blobs=False`, every blob as `blobs/<cid>`; see the module
    docstring.  `pds` replaces the PDS the DID document names (a handle is still resolved
    and checked against that document; a DID is then taken as it is).  Raises
    ResolveError, AccountError, FetchError (one line each), OutputError; Ctrl-C leaves
    only whole files."""
    from ..errors import OptionError

    if jobs < 1 or jobs > 64:
        raise OptionError(f"jobs must be 1..64, not {jobs}")
    if pds is not None and not (pds.startswith("https://") or pds.startswith("http://")):
        raise OptionError(f"--pds {pds!r}: give the PDS as an http(s) URL (https://pds.example)")
    state = _State()
    channel: Any = None  # a ProgressChannel carrying FetchProgress events
    if on_progress is not None:
        make: Any = _Channel
        channel = make(on_progress, lambda: state.event("running"), heartbeat_s=0.5)
        channel.put(state.event("queued"))
    client = Client(jobs)
    try:
        try:
            result = _fetch(client, state, who, Path(output), pds, blobs, jobs,
                            max_repo_size, max_blob_size, channel)
        except OSError as exc:
            if isinstance(exc, ExportError):
                raise
            # the network's errors are FetchErrors by now: this is the backup's own disk
            where = f" ({exc.filename})" if exc.filename else ""
            raise OutputError(f"cannot write the backup in {output}{where}: "
                              f"{exc.strerror or exc}; free some space or choose another "
                              "--output (what was backed up before is as it was)") from None
    except BaseException as exc:
        client.stop.set()
        if channel is not None:
            word = str(exc) if isinstance(exc, Exception) else "interrupted"
            channel.put(state.event("failed", word.splitlines()[0] if word else
                                    type(exc).__name__))
            channel.close()
        raise
    finally:
        client.close()
    if channel is not None:
        channel.put(state.event("completed"))
        channel.close()
    return result


def _fetch(client: Client, state: _State, who: str, output: Path, pds: str | None,
           want_blobs: bool, jobs: int, max_repo: int, max_blob: int,
           channel: Any) -> FetchResult:
    def phase(name: str) -> None:
        with state.lock:
            state.phase = name
        if channel is not None:
            channel.put(state.event("running"))

    ident = resolve(who, client, pds)
    phase("repo")
    rev = latest_rev(client, ident.pds, ident.did)  # an account error before any file
    _dir(output, "the output directory")
    backup = output / ident.did
    created = not os.path.lexists(backup)
    _dir(backup, "the backup directory")
    lock = _lock(backup)
    try:
        return _into(client, state, ident, backup, rev, want_blobs, jobs, max_repo, max_blob,
                     phase)
    except BaseException:
        if created:  # a first run that failed leaves no empty directories behind
            for d in (backup / WORK, backup / "blobs", backup):
                try:
                    os.rmdir(d)
                except OSError:
                    pass
        raise
    finally:
        try:
            os.rmdir(backup / WORK)  # empty by now, whatever happened
        except OSError:
            pass
        os.close(lock)


def _into(client: Client, state: _State, ident: Any, backup: Path, rev: str | None,
          want_blobs: bool, jobs: int, max_repo: int, max_blob: int,
          phase: Callable[[str], None]) -> FetchResult:
    from .. import __version__

    _clear_work(backup)
    _dir(backup / WORK, "the work directory")
    blobs_dir = backup / "blobs"
    _dir(blobs_dir, "the blobs directory")
    before = _read_json(backup / "fetch.json")
    car = backup / "repo.car"
    old_repo = before.get("repo") if isinstance(before.get("repo"), dict) else {}
    assert isinstance(old_repo, dict)
    unchanged = False
    if rev is not None and before.get("rev") == rev and old_repo.get("sha256") is not None:
        kept_car = sha256_regular(car)
        unchanged = kept_car is not None and kept_car[0] == old_repo.get("sha256")
    added = removed = changed = 0
    if unchanged:
        sha, size = str(old_repo["sha256"]), int(old_repo.get("bytes", 0))
        records = int(old_repo.get("records", 0))
        collections = old_repo.get("collections", {})
        new_rev: str | None = rev
        old_blobs = before.get("blobs") if isinstance(before.get("blobs"), dict) else {}
        assert isinstance(old_blobs, dict)
        kept = old_blobs.get("referenced_unlisted", {})
        refs: dict[str, str] = ({str(k): str(v) for k, v in kept.items()}
                                if isinstance(kept, dict) else {})
    else:
        tmp, scan, durable = download(client, ident.pds, ident.did, backup, max_repo,
                                      state.add_repo, backup / WORK)
        try:
            phase("check")
            chk = check_car(tmp, backup / WORK, ident.did, scan)
            if os.path.isfile(car) and not os.path.islink(car):
                try:
                    added, removed, changed = diff(car, tmp, backup / WORK)
                except Exception:  # noqa: BLE001 - an unreadable old copy: all new
                    added, removed, changed = chk.records, 0, 0
            else:
                added = chk.records
            durable.wait()    # the fsync, under way while the check read the file
            _publish(tmp, car)
        except BaseException:
            durable.wait(check=False)   # the file is discarded: its fsync's outcome too
            if scan is not None:
                scan.stop()   # its descriptors, if check_car never took them
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        sha, size, records = chk.sha256, chk.size, chk.records
        collections, new_rev, refs = chk.collections, chk.rev, chk.blob_refs

    record: dict[str, Any] = {
        "tool": f"skyexport {__version__}",
        "handle": ident.handle, "handle_verified": ident.handle_verified, "did": ident.did,
        "pds": ident.pds, "pds_from": ident.pds_from, "rev": new_rev,
        "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "repo": {"file": "repo.car", "sha256": sha, "bytes": size, "records": records,
                 "collections": collections},
        "blobs": {"complete": False} if want_blobs else None,
        "this_run": {"repo_downloaded": not unchanged, "records_added": added,
                     "records_removed": removed, "records_changed": changed},
    }
    if not unchanged:  # fetch.json describes repo.car from now on, even if interrupted
        _write_meta(backup, record)
    run = BlobRun()
    state.blobs = run
    unlisted = 0
    if want_blobs:
        phase("blobs")
        fetch_blobs(client, ident.pds, ident.did, blobs_dir, backup / WORK, jobs,
                    max_blob, run, refs)
        wanted = run.listed_cids | set(run.unlisted_refs)
        with os.scandir(blobs_dir) as it:
            unlisted = sum(1 for e in it if e.name not in wanted)
    phase("done")

    def names(kind: str) -> tuple[str, ...]:
        return tuple(o.why or o.cid for o in run.outcomes[kind])

    result = FetchResult(
        directory=backup, handle=ident.handle, did=ident.did, pds=ident.pds,
        pds_from=ident.pds_from,
        rev=new_rev, repo_sha256=sha, repo_bytes=size, records=records,
        repo_changed=not unchanged, records_added=added, records_removed=removed,
        records_changed=changed, blobs_listed=run.listed,
        blobs_downloaded=len(run.outcomes["downloaded"]),
        blobs_present=len(run.outcomes["present"]), blob_bytes=run.bytes,
        blobs_missing=names("missing"), blobs_bad=names("bad"),
        blobs_failed=names("failed"), blobs_refused=tuple(run.refused),
        blobs_unlisted=unlisted, retries=client.retries,
        elapsed_s=time.monotonic() - state.t0)
    if want_blobs:
        record["blobs"] = {
            "complete": not result.blobs_failed, "listed": run.listed,
            "present": result.blobs_present + result.blobs_downloaded,
            "missing": list(result.blobs_missing[:LISTED_MAX]),
            "bad": list(result.blobs_bad[:LISTED_MAX]),
            "failed": list(result.blobs_failed[:LISTED_MAX]),
            "not_cids": list(result.blobs_refused[:LISTED_MAX]), "unlisted": unlisted,
            # blobs records reference that listBlobs did not list (asked for by CID)
            "referenced_unlisted": {c: refs[c] for c in run.unlisted_refs}}
    record["this_run"].update(blobs_downloaded=result.blobs_downloaded, blob_bytes=run.bytes,
                              retries=client.retries)
    _write_meta(backup, record)
    if result.blobs_failed:
        failed = run.outcomes["failed"]
        again = [o for o in failed if not o.permanent]
        first = (again or failed)[0]
        head = (f"{len(failed)} blob(s) could not be downloaded (first: "
                f"{first.why or first.cid})")
        if again:
            refused = len(failed) - len(again)
            raise FetchError(head + "; run the same command again to fetch the rest"
                             + (f" ({refused} of them redirected where skyexport does not "
                                "follow: fetch.json lists them)" if refused else ""))
        raise FetchError(head + ": the PDS redirects them where skyexport does not follow, "
                         "so running again will not fetch them; fetch.json lists them (ask "
                         "the PDS's operator)")
    return result
