"""Progress: an event after every batch and at least every heartbeat in
every phase, delivered on a separate thread so that a slow consumer never stalls the
export; the callback, `--progress jsonl`, `--progress bar` and `--progress none`."""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec
import pytest

import skyexport
import skyexport.exporter.media as media_mod
import skyexport.exporter.progress as progress_mod
import skyexport.exporter.sink as sink_mod
import skyexport.sources.archive as archive_mod
from skyexport import BadValueError, ExportProgress
from skyexport.exporter.progress import BarReporter, JsonLinesReporter, ProgressChannel
from skyexport.exporter.signals import Shield

from helpers.archives import make_archive
from helpers.cli import run as run_cli

DESIGN_KEYS = {"status", "posts_processed", "posts_total", "media_copied", "media_total",
               "elapsed_s"}
URI = "at://did:plc:test/app.bsky.feed.post/{:05d}"


def posts_archive(path: Path, n: int, *, media_every: int = 0,
                  bad_at: int | None = None) -> Path:
    """`n` small posts with distinct created_at (post 0 newest); with `media_every`,
    every such post has has_media and one media file (a few bytes) beside the archive;
    `bad_at` gives that post an unreadable created_at that sorts last."""
    rows, media = [], []
    mdir = path.parent / "media"
    for i in range(n):
        has = bool(media_every) and i % media_every == 0
        stamp = time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime(10**8 - i))
        row = {"uri": URI.format(i), "has_media": int(has), "created_at": stamp}
        if i == bad_at:
            row["created_at"] = "0000 not a time"
        rows.append(row)
        if has:
            mdir.mkdir(exist_ok=True)
            (mdir / f"m{i}.jpg").write_bytes(b"jpeg %d" % i)
            media.append({"hash": f"h{i}", "post_uri": URI.format(i),
                          "file_path": f"media/m{i}.jpg"})
    return make_archive(path, rows, media_rows=media)


def collect(archive: Path, out: Path, **options: object) -> tuple[list[ExportProgress],
                                                                    skyexport.ExportResult]:
    events: list[ExportProgress] = []
    result = skyexport.export(archive, out, on_progress=events.append, **options)
    return events, result


@pytest.fixture(autouse=True)
def _no_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    """The exact event sequences below are one per batch: a heartbeat (an event when
    nothing was put for HEARTBEAT_S, 1 s) would add one whenever a loaded machine makes
    an export of a few hundred posts take a second.  The heartbeat tests set their own."""
    monkeypatch.setattr(progress_mod, "HEARTBEAT_S", 3600.0)


def batch_events(events: list[dict[str, object]]) -> list[dict[str, object]]:
    """A command line's --progress jsonl events without its heartbeats (its process
    cannot be patched): the first and last, and each running event that brought posts."""
    kept = [events[0]]
    done = 0
    for e in events[1:-1]:
        n = e["posts_processed"]
        assert isinstance(n, int)
        if e["status"] == "running" and n > done:
            kept.append(e)
            done = n
        else:  # a heartbeat: the state as it was, queued while counting, else running
            assert e["status"] == ("running" if done else e["status"]), events
    return [*kept, events[-1]]


def assert_monotonic(events: list[ExportProgress]) -> None:
    for a, b in itertools.pairwise(events):
        assert a.posts_processed <= b.posts_processed, (a, b)
        assert a.media_copied <= b.media_copied, (a, b)
        assert a.bytes_written <= b.bytes_written, (a, b)
        assert a.elapsed_s <= b.elapsed_s, (a, b)


# --- event sequences ----------------------------------------------------------------------


@pytest.mark.parametrize(("posts", "batch"), [(2345, 100), (2000, 100), (5, 1000), (1, 1),
                                              (0, 10), (250, 7)])
def test_one_event_per_batch(tmp_path: Path, row_source: str, fmt: str, posts: int,
                             batch: int) -> None:
    arc = posts_archive(tmp_path / "a.db", posts)
    events, result = collect(arc, tmp_path / "out", format=fmt, batch_size=batch)
    statuses = [e.status for e in events]
    n_batches = math.ceil(posts / batch)
    assert statuses == ["queued"] + ["running"] * n_batches + ["completed"]
    running = events[1:-1]
    assert [e.posts_processed for e in running] == \
        [min(batch * (k + 1), posts) for k in range(n_batches)]
    assert all(e.posts_total == posts for e in events[1:])
    assert events[0].posts_total == 0 and events[0].posts_processed == 0
    assert_monotonic(events)
    final = events[-1]
    assert final.error is None
    assert final.posts_processed == final.posts_total == result.post_count == posts
    assert final.bytes_written == result.bytes_written == result.data_file.stat().st_size
    assert final.media_copied == final.media_total == 0


def test_media_counts_in_events(tmp_path: Path) -> None:
    arc = posts_archive(tmp_path / "a.db", 300, media_every=3)
    events, result = collect(arc, tmp_path / "out", batch_size=50, media=True)
    assert [e.status for e in events] == ["queued"] + ["running"] * 6 + ["completed"]
    assert all(e.media_total == 100 for e in events[1:])
    # Media are copied batch by batch, not at the end: every batch brings its own (on
    # Linux, a batch's files are counted once copied, while the next batch is encoded:
    # media.PIPELINE).
    per_batch = [17, 34, 50, 67, 84, 100]
    if media_mod.FAST_PATH and media_mod.PIPELINE and sys.platform == "linux":
        per_batch = [0, *per_batch[:-1]]
    assert [e.media_copied for e in events[1:-1]] == per_batch
    assert events[-1].media_copied == 100 == result.media_count
    assert_monotonic(events)


def test_failure_is_the_last_event(tmp_path: Path) -> None:
    # The bad value sorts last, so some batches are written before the export fails.
    arc = posts_archive(tmp_path / "a.db", 120, bad_at=60, media_every=10)
    events: list[ExportProgress] = []
    with pytest.raises(BadValueError) as info:
        skyexport.export(arc, tmp_path / "out", batch_size=50, media=True,
                         on_progress=events.append)
    statuses = [e.status for e in events]
    assert statuses[0] == "queued" and statuses[-1] == "failed"
    assert statuses[1:-1] == ["running"] * 2
    final = events[-1]
    assert final.error == str(info.value)
    assert URI.format(60) in final.error and "created_at" in final.error
    assert "\n" not in final.error
    assert_monotonic(events)
    assert not (tmp_path / "out").exists()  # nothing published; the dir it made is gone


def test_no_events_without_a_job(tmp_path: Path) -> None:
    """Bad options or a missing archive raise before the job starts: no event at all."""
    events: list[ExportProgress] = []
    with pytest.raises(skyexport.OptionError):
        skyexport.export(tmp_path / "missing.db", tmp_path / "out", batch_size=0,
                         on_progress=events.append)
    with pytest.raises(skyexport.ArchiveError):
        skyexport.export(tmp_path / "missing.db", tmp_path / "out", on_progress=events.append)
    assert events == []


def test_event_fields() -> None:
    ev = ExportProgress("running", 500, 1000, 3, 10, 12345, 2.0)
    assert ev.rate == 250.0
    assert ExportProgress("queued", 0, 0, 0, 0, 0, 0.0).rate == 0.0
    d = ev.to_dict()
    assert DESIGN_KEYS <= set(d)
    assert d["rate"] == 250.0 and d["bytes_written"] == 12345 and "error" not in d
    assert ExportProgress("failed", 1, 2, 0, 0, 0, 1.0, error="boom").to_dict()["error"] \
        == "boom"
    with pytest.raises(AttributeError):
        ev.status = "completed"  # type: ignore[misc]


# --- consumers that are slow or broken ------------------------------------------------------


@pytest.fixture(scope="module")
def many_batches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return posts_archive(tmp_path_factory.mktemp("many") / "a.db", 4000, media_every=20)


def test_slow_consumer_does_not_stall(many_batches: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A callback stuck in the first running event until every batch is encoded and the
    data file is being closed: the export gets there without it (if it waited for the
    callback, the callback would wait in vain), and then the callback, slow, sees a few
    fresh events, not 200 stale ones."""
    events: list[ExportProgress] = []
    threads = set()
    all_encoded = threading.Event()
    released: list[bool] = []
    real_close = sink_mod.FileSink.close

    def close(self: sink_mod.FileSink, sync: bool = True) -> None:
        all_encoded.set()
        real_close(self, sync)

    def slow(ev: ExportProgress) -> None:
        threads.add(threading.get_ident())
        if ev.status == "running" and not released:
            released.append(all_encoded.wait(60))
        time.sleep(0.2)
        events.append(ev)

    monkeypatch.setattr(sink_mod.FileSink, "close", close)
    batches = 4000 // 20
    result = skyexport.export(many_batches, tmp_path / "out", batch_size=20, media=True,
                              on_progress=slow)
    assert released == [True]  # the last batch was written while the callback was stuck
    assert len(events) < batches / 4
    assert events[0].status == "queued"
    assert events[-1].status == "completed"  # delivered, last, before export() returned
    assert events[-1].posts_processed == result.post_count == 4000
    assert events[-1].media_copied == events[-1].media_total == 200
    assert [e.status for e in events[1:-1]] == ["running"] * (len(events) - 2)
    assert_monotonic(events)
    assert threads and threading.get_ident() not in threads  # a thread of its own


def test_fast_consumer_sees_every_batch_although_slow_at_first(tmp_path: Path) -> None:
    """A consumer that lags for less than the coalescing window loses nothing."""
    arc = posts_archive(tmp_path / "a.db", 100)
    events: list[ExportProgress] = []

    def first_slow(ev: ExportProgress) -> None:
        if not events:
            time.sleep(0.15)
        events.append(ev)

    skyexport.export(arc, tmp_path / "out", batch_size=10, on_progress=first_slow)
    assert [e.posts_processed for e in events[1:-1]] == list(range(10, 101, 10))


def test_a_raising_callback_does_not_fail_the_export(tmp_path: Path) -> None:
    arc = posts_archive(tmp_path / "a.db", 100)
    calls = []

    def broken(ev: ExportProgress) -> None:
        calls.append(ev)
        if len(calls) == 3:
            raise ValueError("consumer bug")

    with pytest.warns(RuntimeWarning, match="on_progress callback raised ValueError: "
                                            "consumer bug"):
        result = skyexport.export(arc, tmp_path / "out", batch_size=10, on_progress=broken)
    assert result.post_count == 100
    assert len(calls) == 3  # not called again after it raised
    assert skyexport.verify(result.directory).ok


# --- heartbeats -----------------------------------------------------------------------------


def test_channel_heartbeat_from_the_delivery_thread() -> None:
    """Nothing put for heartbeat_s: the channel makes an event from the current state."""
    state = {"n": 0}
    events: list[ExportProgress] = []

    def snapshot() -> ExportProgress:
        state["n"] += 1
        return ExportProgress("running", state["n"], 100, 0, 0, 0, state["n"] / 10)

    five = threading.Event()

    def deliver(ev: ExportProgress) -> None:
        events.append(ev)
        if len(events) == 5:
            five.set()

    ch = ProgressChannel(deliver, snapshot, heartbeat_s=0.05)
    ch.put(ExportProgress("queued", 0, 0, 0, 0, 0, 0.0))
    assert five.wait(60)  # nothing else is put: the four events after it are heartbeats
    ch.put(ExportProgress("completed", 100, 100, 0, 0, 0, 99.0))
    ch.close()
    assert events[0].status == "queued" and events[-1].status == "completed"
    beats = events[1:-1]
    assert len(beats) >= 4 and all(e.status == "running" for e in beats)
    assert_monotonic(events)
    n = len(events)
    time.sleep(0.2)
    assert len(events) == n  # nothing after the final event


def test_channel_keeps_counts_monotonic() -> None:
    events: list[ExportProgress] = []
    ch = ProgressChannel(events.append)
    ch.put(ExportProgress("running", 10, 100, 5, 9, 1000, 1.0))
    ch.put(ExportProgress("running", 10, 100, 5, 9, 900, 1.1))  # caught mid-flush
    ch.put(ExportProgress("completed", 100, 100, 9, 9, 5000, 2.0))
    ch.put(ExportProgress("running", 100, 100, 9, 9, 5000, 3.0))  # after the end: dropped
    ch.close()
    assert [e.bytes_written for e in events] == [1000, 1000, 5000]
    assert [e.status for e in events] == ["running", "running", "completed"]


def test_channel_coalesces_for_a_slow_consumer() -> None:
    """Every put returns while the callback is stuck in the first event (put never waits
    for the consumer); then the slow callback sees a few events, the final one last."""
    events: list[ExportProgress] = []
    stuck, all_put = threading.Event(), threading.Event()
    released: list[bool] = []

    def slow(ev: ExportProgress) -> None:
        events.append(ev)
        if len(events) == 1:
            stuck.set()
            released.append(all_put.wait(60))
        time.sleep(0.05)

    ch = ProgressChannel(slow)
    ch.put(ExportProgress("running", 0, 1000, 0, 0, 0, 0.0))
    assert stuck.wait(60)
    for i in range(1, 1000):
        ch.put(ExportProgress("running", i, 1000, 0, 0, i, i / 1000))
    ch.put(ExportProgress("completed", 1000, 1000, 0, 0, 1000, 1.0))
    all_put.set()
    ch.close()
    assert released == [True]  # had a put waited for the callback, it would wait in vain
    assert events[-1].status == "completed"
    assert len(events) < 100 and ch.dropped > 900
    assert_monotonic(events)


# A child that puts events as fast as it can while a real SIGINT arrives at a random
# instant, 40 times over.  Python runs the handler between any two bytecodes, so without
# the channel's Shield (signals.py) about half the rounds raised KeyboardInterrupt after the lock
# was taken and before the `with` that would release it: the delivery thread then never got
# the lock back, the final event was never delivered, and close() waited out its timeout.
_PUT_UNDER_SIGINT = """
import os, random, signal, threading, time, warnings
from skyexport.exporter.progress import ExportProgress, ProgressChannel
running = ExportProgress("running", 1, 10, 0, 0, 0, 0.0)
for _ in range(40):
    got = []
    ch = ProgressChannel(got.append)
    def kill():
        time.sleep(random.uniform(0.002, 0.02))
        os.kill(os.getpid(), signal.SIGINT)
    try:  # the signal may come while the killer is still being started
        threading.Thread(target=kill).start()
        while True:
            ch.put(running)
    except KeyboardInterrupt:
        interrupted = True
    ch.put(ExportProgress("failed", 1, 10, 0, 0, 0, 0.0, error="interrupted"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ch.close(grace_s=0.05, timeout_s=10)
    print(interrupted, got[-1].status, len(caught),
          signal.getsignal(signal.SIGINT) is signal.default_int_handler, flush=True)
"""


def test_a_signal_inside_put_never_strands_the_final_event() -> None:
    proc = subprocess.run([sys.executable, "-c", _PUT_UNDER_SIGINT], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rounds = proc.stdout.splitlines()
    # Every round: interrupted, the final event delivered last, no close() warning, and
    # Python's own SIGINT handler back in place after close().
    assert rounds == ["True failed 0 True"] * 40, proc.stdout


def test_a_signal_held_back_by_the_channel_is_raised_when_it_lets_go() -> None:
    shield = Shield()
    installed = shield.install()
    try:
        assert installed and signal.getsignal(signal.SIGINT) == shield._handler
        with pytest.raises(KeyboardInterrupt):
            with shield:
                with shield:  # nested: let go only by the outermost
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(0.05)  # the handler runs here, held back: nothing raised
                held = list(shield.pending)
        assert held == [signal.SIGINT] and not shield.pending
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # outside `with`: raised at once
            time.sleep(1)
    finally:
        shield.uninstall(installed)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


class _Term(Exception):
    pass


def _raise_term(signum: int, frame: object) -> None:
    raise _Term


def test_two_signals_held_back_are_both_raised() -> None:
    # Both arrive inside: letting go raises the first; the second stays held until the
    # last user uninstalls, which restores the handlers and raises it.
    previous = signal.signal(signal.SIGTERM, _raise_term)
    shield = Shield()
    installed = shield.install()
    try:
        with pytest.raises(KeyboardInterrupt):
            with shield:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
        assert shield.pending == [signal.SIGTERM]
        with pytest.raises(_Term):
            shield.uninstall(installed)
        assert signal.getsignal(signal.SIGTERM) is _raise_term and not shield.pending
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_shield_leaves_other_threads_and_plain_handlers_alone() -> None:
    shield = Shield()
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(shield.install()))
    t.start()
    t.join()
    assert got == [False] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # Installed on the main thread, let go on another (a channel closed elsewhere): no
    # handler can be set there, so ours stays and forwards; the next main-thread user ends it.
    installed = shield.install()
    t = threading.Thread(target=shield.uninstall, args=(installed,))
    t.start()
    t.join()
    assert shield.users == 0 and signal.getsignal(signal.SIGINT) == shield._handler
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)  # forwarded to Python's own handler
        time.sleep(1)
    shield.uninstall(shield.install())
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        installed = shield.install()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # never raises: not wrapped
        shield.uninstall(installed)
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_heartbeat_inside_sqlite_steps(tmp_path: Path, row_source: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The export's own heartbeat runs from SQLite's progress handler: with a zero
    heartbeat, events arrive while the single batch is still being read."""
    arc = posts_archive(tmp_path / "a.db", 3000)
    monkeypatch.setattr(archive_mod, "HEARTBEAT_STEPS", 200)
    monkeypatch.setattr(progress_mod, "HEARTBEAT_S", 0.0)
    events, result = collect(arc, tmp_path / "out", batch_size=10**6)
    assert result.post_count == 3000
    mid = [e for e in events if e.status == "running" and 0 < e.posts_processed < 3000]
    assert len(mid) >= 5
    assert all(e.posts_total == 3000 for e in mid)
    # Heartbeats while counting come before the totals are known: they say "queued".
    assert {e.status for e in events if e.posts_total == 0} == {"queued"}
    assert_monotonic(events)


def test_heartbeat_per_media_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One batch whose media take long to copy: events arrive between the files."""
    arc = posts_archive(tmp_path / "a.db", 12, media_every=2)
    real = media_mod.MediaCopier._write
    events: list[ExportProgress] = []
    waited: list[bool] = []

    def slow_copy(self: media_mod.MediaCopier, *args: object) -> str:
        # A long copy: it only ends once an event showing the files copied so far (from
        # after the previous file) has reached the callback.
        done = self.seen
        for _ in range(6000):
            if any(e.status == "running" and e.media_copied == done for e in events):
                break
            time.sleep(0.005)
        waited.append(any(e.media_copied == done for e in events))
        return real(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(media_mod.MediaCopier, "_write", slow_copy)
    monkeypatch.setattr(media_mod, "FAST_PATH", False)  # files one at a time, in Python
    monkeypatch.setattr(progress_mod, "HEARTBEAT_S", 0.1)
    result = skyexport.export(arc, tmp_path / "out", batch_size=1000, media=True,
                              on_progress=events.append)
    assert result.media_count == 6
    assert waited == [True] * 6
    during = [e for e in events if e.status == "running" and 0 < e.media_copied < 6]
    assert {e.media_copied for e in during} == {1, 2, 3, 4, 5}
    assert all(e.posts_processed == 12 for e in during)
    assert_monotonic(events)


def test_heartbeat_during_one_long_call(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A phase that is one long call (here: syncing the data file) still reports, from the
    delivery thread, at least every heartbeat (5 s is the most allowed)."""
    arc = posts_archive(tmp_path / "a.db", 50)
    real_close = sink_mod.FileSink.close

    events: list[ExportProgress] = []
    reported: list[bool] = []

    def after_last_batch() -> list[ExportProgress]:
        return [e for e in events if e.status == "running" and e.posts_processed == 50]

    def slow_close(self: sink_mod.FileSink, sync: bool = True) -> None:
        # One long call: it only returns once the delivery thread has reported, on its
        # own, four times after the last batch's event (nothing else puts events now).
        for _ in range(6000):
            if len(after_last_batch()) >= 5:
                break
            time.sleep(0.005)
        reported.append(len(after_last_batch()) >= 5)
        real_close(self, sync)

    monkeypatch.setattr(sink_mod.FileSink, "close", slow_close)
    monkeypatch.setattr(progress_mod, "HEARTBEAT_S", 0.1)
    skyexport.export(arc, tmp_path / "out", batch_size=1000, on_progress=events.append)
    assert reported == [True]
    assert events[-1].status == "completed"
    assert_monotonic(events)


# --- the command line -----------------------------------------------------------------------


def test_cli_jsonl(tmp_path: Path) -> None:
    arc = posts_archive(tmp_path / "a.db", 530, media_every=5)
    proc = run_cli("export", str(arc), "--output", str(tmp_path / "out"), "--media",
                   "--batch-size", "100", "--progress", "jsonl", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    every = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(isinstance(e, dict) and DESIGN_KEYS <= set(e) for e in every)
    events = batch_events(every)
    assert [e["status"] for e in events] == ["queued"] + ["running"] * 6 + ["completed"]
    assert [e["posts_processed"] for e in events[1:-1]] == [100, 200, 300, 400, 500, 530]
    last = events[-1]
    assert last["posts_total"] == last["posts_processed"] == 530
    assert last["media_total"] == last["media_copied"] == 106
    export_dir = Path(proc.stdout.splitlines()[-1])
    assert last["bytes_written"] == (export_dir / "posts.json").stat().st_size
    for a, b in itertools.pairwise(every):
        assert a["elapsed_s"] <= b["elapsed_s"]


def test_cli_jsonl_failure(tmp_path: Path) -> None:
    arc = posts_archive(tmp_path / "a.db", 30, bad_at=29)
    proc = run_cli("export", str(arc), "--output", str(tmp_path / "out"),
                   "--batch-size", "10", "--progress", "jsonl")
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[-1].startswith("skyexport: error: post " + URI.format(29))
    events = batch_events([json.loads(line) for line in lines[:-1]])
    assert events[-1]["status"] == "failed"
    assert URI.format(29) in events[-1]["error"]
    assert [e["status"] for e in events[:-1]] == ["queued"] + ["running"] * 2
    assert proc.stdout == ""


@pytest.mark.parametrize("flags", [["--progress", "none"], ["--quiet"], ["-q"], []])
def test_cli_no_progress(tmp_path: Path, flags: list[str]) -> None:
    """--progress none, --quiet, and the default (auto) when stderr is not a terminal."""
    arc = posts_archive(tmp_path / "a.db", 30)
    proc = run_cli("export", str(arc), "--output", str(tmp_path / "out"), *flags)
    assert proc.returncode == 0
    assert proc.stderr == ""
    assert Path(proc.stdout.splitlines()[-1]).is_dir()


def test_cli_bar_without_a_terminal(tmp_path: Path) -> None:
    arc = posts_archive(tmp_path / "a.db", 300, media_every=3)
    proc = run_cli("export", str(arc), "--output", str(tmp_path / "out"), "--media",
                   "--batch-size", "50", "--progress", "bar", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "posts" in proc.stderr and "300/300" in proc.stderr
    assert "media" in proc.stderr and "100/100" in proc.stderr
    assert "Traceback" not in proc.stderr
    out = proc.stdout.splitlines()
    assert Path(out[-1]).is_dir() and "posts" not in out[-1]


def test_cli_bar_in_a_terminal(tmp_path: Path) -> None:
    """--progress auto picks the bar when stderr is a terminal; it goes to stderr only."""
    arc = posts_archive(tmp_path / "a.db", 2000, media_every=4)
    master, slave = pty.openpty()
    env = dict(os.environ, TERM="xterm-256color", COLUMNS="100")
    proc = subprocess.Popen([sys.executable, "-m", "skyexport", "export", str(arc),
                             "--output", str(tmp_path / "out"), "--media",
                             "--batch-size", "100"],
                            stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL,
                            env=env, cwd=tmp_path)
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    stdout, _ = proc.communicate(timeout=120)
    reader.join(timeout=10)
    os.close(master)
    tty = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, tty
    assert "2000/2000" in tty and "500/500" in tty
    assert "Traceback" not in tty
    assert "\x1b[" in tty  # a live display: terminal control sequences
    lines = stdout.decode().splitlines()
    assert Path(lines[-1]).is_dir()
    assert all("\x1b" not in line for line in lines)


def test_reporters_in_process() -> None:
    buf = io.StringIO()
    rep = JsonLinesReporter(buf)
    rep(ExportProgress("queued", 0, 0, 0, 0, 0, 0.0))
    rep(ExportProgress("running", 5, 10, 1, 2, 300, 0.5))
    rep(ExportProgress("failed", 5, 10, 1, 2, 300, 0.6, error="disk full"))
    lines = [msgspec.json.decode(line) for line in buf.getvalue().splitlines()]
    assert [x["status"] for x in lines] == ["queued", "running", "failed"]
    assert lines[1]["rate"] == 10.0 and lines[-1]["error"] == "disk full"

    out = io.StringIO()
    bar = BarReporter(out)
    bar(ExportProgress("queued", 0, 0, 0, 0, 0, 0.0))
    bar(ExportProgress("running", 5, 10, 1, 2, 300, 0.5))
    bar(ExportProgress("completed", 10, 10, 2, 2, 600, 1.0))
    text = out.getvalue()
    assert "10/10" in text and "2/2" in text


def test_a_stuck_callback_does_not_hang_the_export(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    arc = posts_archive(tmp_path / "a.db", 30)
    release = threading.Event()
    seen: list[str] = []
    returned: list[bool] = []

    def stuck(ev: ExportProgress) -> None:
        seen.append(ev.status)
        if ev.status == "running":
            returned.append(release.wait(60))

    monkeypatch.setattr(progress_mod, "CLOSE_TIMEOUT_S", 0.3)
    with pytest.warns(RuntimeWarning, match="has not returned for 0.3 s"):
        result = skyexport.export(arc, tmp_path / "out", batch_size=10, on_progress=stuck)
    # export() returned while the callback was still stuck in its first running event.
    assert seen == ["queued", "running"] and returned == []
    assert result.post_count == 30
    release.set()
    for _ in range(600):
        if seen[-1] == "completed":
            break
        time.sleep(0.05)
    assert seen[0] == "queued" and seen[-1] == "completed"  # still last, when it returns
    assert returned == [True]


def test_output_failure_is_reported_and_leaves_no_thread(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """The temporary directory cannot be made: a failed event, and the delivery thread
    ends (no thread left behind per failed export)."""
    arc = posts_archive(tmp_path / "a.db", 3)
    staged_mod = sys.modules["skyexport.exporter.staged"]

    def refuse(out: Path) -> None:
        raise skyexport.OutputError(f"writing {out} failed: permission denied")

    monkeypatch.setattr(staged_mod, "_make_temp_dir", refuse)
    before = {t for t in threading.enumerate() if t.name == "skyexport-progress"}
    events: list[ExportProgress] = []
    with pytest.raises(skyexport.OutputError):
        skyexport.export(arc, tmp_path / "out", on_progress=events.append)
    assert [e.status for e in events] == ["queued", "failed"]
    assert "permission denied" in (events[-1].error or "")
    after = {t for t in threading.enumerate() if t.name == "skyexport-progress"}
    assert after <= before
