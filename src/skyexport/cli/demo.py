"""`skyexport demo`: a synthetic archive built, exported as JSON (with media) and CSV, each
export in a process of its own, and the numbers measured."""

from __future__ import annotations

import argparse
import os
import sys

from .render import EXIT_OK, usage

# typing is not imported at run time: start-up is part of every export.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


# The demo's export, in a process of its own: the export as a user runs it, then its peak
# RSS on the last line.  Read in the child itself: a child's getrusage/wait4 maxrss also
# counts the parent's memory it was forked from (Linux carries it across exec).
_EXPORT_CHILD = """\
import sys
from skyexport.cli import main
from skyexport.cli.demo import own_peak_rss_mb
code = main(sys.argv[1:])
sys.stdout.write(f"peak {own_peak_rss_mb()}\\n")
sys.exit(code)
"""


def own_peak_rss_mb() -> float | None:
    """This process's peak RSS in MB: VmHWM (Linux: this program's own, since its exec),
    else getrusage where it exists (kilobytes; bytes on macOS); None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    from .._platform import peak_rss_bytes

    peak = peak_rss_bytes()
    return None if peak is None else peak / (1 << 20)


def _export_child(argv: list[str]) -> tuple[str, float | None]:
    """Run `skyexport export ARGV` as a process of its own (stderr shared: its progress
    bar draws here) and return the export directory it printed and its own peak RSS in
    MB (None where the system does not say): nothing this process did before (building
    the archive) counted in."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", _EXPORT_CHILD, "export", *argv],
                          stdout=subprocess.PIPE, text=True, check=False)
    *lines, last = done.stdout.splitlines() or [""]
    if done.returncode != 0 or not lines or not last.startswith("peak "):
        from ..errors import ExportError

        raise ExportError(f"demo: the export failed (exit {done.returncode}; its message "
                          "is above)")
    peak = last.split()[1]
    return lines[-1], None if peak == "None" else float(peak)


def _demo_root(output: str | None) -> tuple[str, bool]:
    """The demo's own directory, and whether it is a temporary one.  demo writes only into a
    directory it creates (or an empty one it is given): never next to someone's archive."""
    import tempfile

    from ..errors import OptionError

    if output is None:
        return tempfile.mkdtemp(prefix="skyexport-demo-"), True
    try:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        os.mkdir(output)
    except FileExistsError:
        if not os.path.isdir(output) or os.path.islink(output) or os.listdir(output):
            raise OptionError(f"demo --output {output}: already exists and is not an empty "
                              "directory; demo writes only into a new (or empty) directory, "
                              "so name one that does not exist") from None
    except OSError as exc:
        raise OptionError(f"demo --output {output}: cannot create it: "
                          f"{exc.strerror or exc}") from None
    return output, False


def run(args: argparse.Namespace) -> int:
    import shutil

    from ..errors import OptionError

    try:
        root, temporary = _demo_root(args.output)
    except OptionError as exc:
        return usage(args, str(exc))
    keep = args.keep or not temporary
    try:
        last = _demo(root, args)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    out = sys.stdout
    if keep:
        out.write(f"{last}\n")
    else:
        out.write(f"removed the temporary directory {root} (--keep keeps it)\n")
    return EXIT_OK


def _read_manifest(directory: str) -> dict[str, Any]:
    import json

    with open(os.path.join(directory, "manifest.json"), "rb") as f:
        manifest: dict[str, Any] = json.load(f)
    return manifest


def _demo(root: str, args: argparse.Namespace) -> str:
    from ..testing.synth import build_archive

    data = os.path.join(root, "data")
    os.mkdir(data)
    archive = os.path.join(data, "archive.db")
    out = sys.stdout
    out.write(f"building a synthetic archive of {args.posts} posts with media in {root} ...\n")
    out.flush()
    stats = build_archive(archive, args.posts, seed=1, media=True)
    out.write(f"  {stats.posts} posts, {stats.media_files} media files, "
              f"{os.path.getsize(archive) / 1e6:.1f} MB in {stats.seconds:.1f} s\n")
    last = ""
    for fmt in ("json", "csv"):
        out.write(f"exporting as {fmt}{' with media' if fmt == 'json' else ''} ...\n")
        out.flush()
        # In a process of its own, as a user runs it: its peak memory is the export's own.
        argv = [archive, "-o", os.path.join(root, "exports"), "-f", fmt, "-q",
                "--progress", args.progress]
        if fmt == "json":
            argv += ["--media", "--media-root", data]
        directory, peak = _export_child(argv)
        m = _read_manifest(directory)
        (name,) = (n for n in m["checksums"] if n != "media.sha256")
        size, digest = m["checksums"][name]["bytes"], m["checksums"][name]["sha256"]
        secs = max(m["duration_s"], 1e-3)
        out.write(f"  {m['post_count']} posts -> {os.path.join(directory, name)} "
                  f"({size / 1e6:.1f} MB)\n"
                  f"  {m['post_count'] / secs:,.0f} posts/s, "
                  f"{size / 1e6 / secs:.1f} MB/s, {secs:.2f} s\n"
                  f"  manifest: {m['post_count']} posts, {m['media_count']} media files, "
                  f"sha256 {digest[:16]}...\n")
        if m["warnings_total"]:
            out.write(f"  {m['warnings_total']} warnings: the media files the synthetic "
                      "archive leaves out on purpose (about 1 %), as a real archive's failed "
                      "downloads\n")
        if peak is None:
            out.write("  peak memory (RSS): not measured on this system\n")
        else:
            out.write(f"  peak memory (RSS), the export's own process: {peak:.0f} MB\n")
        last = directory
    return last


