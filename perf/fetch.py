"""`skyexport fetch` against curl on loopback (`perf/bench.py --fetch` runs this).

A server in its own process (Python's http.server, the repository sent with sendfile)
serves com.atproto.sync.getRepo of a synthetic repository (`skyexport synth --car N`,
cached in perf/.cache/) and listBlobs/getBlob of generated blobs.  Measured side by side,
alternating, several rounds; medians:

- the repository: `curl -o FILE URL` vs `skyexport fetch DID --pds URL --no-blobs` (the
  download, then skyexport's check of every block, the fsync and the rename);
- the blobs: `curl --parallel --parallel-max 4` of every getBlob URL vs `skyexport fetch`
  of the same blobs (`--jobs 4`; listBlobs, the SHA-256 checks and the renames included;
  the repository is small here);
- the peak RSS of each skyexport run (VmHWM);
- the CPU time of each side (user + system, from its rusage) and of the server while it
  served that side (from /proc/PID/stat, Linux), so that a server busy for one side only
  shows.

Targets: repository <= 1.2x curl, blobs <= 1.5x curl, peak RSS <= 64 MB.

`--rate MB/S` paces the repository's body (both sides alike) to a network link's speed:
on an unpaced loopback both sides are bound by the CPU, on a link by its speed, and the
ratio then shows what skyexport's check costs after the last byte.  The paced row is
INFO: the target is for the unpaced loopback.  `--blobs 0` measures the repository alone.

    python perf/fetch.py [--posts 100k] [--blobs 10000] [--blob-size 20000] [--rounds 3]
                         [--rate MB/S]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
PY = sys.executable

SERVER = r'''
import http.server, json, os, sys, time, urllib.parse
root, port_file, rate = sys.argv[1], sys.argv[2], float(sys.argv[3])
car = os.path.join(root, "repo.car")
cids = sorted(os.listdir(os.path.join(root, "blobs")))
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def log_message(self, *a): pass
    def do_GET(self):
        u = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        if u.path == "/xrpc/com.atproto.sync.getRepo":
            self.file(car, rate)
        elif u.path == "/xrpc/com.atproto.sync.getBlob":
            path = os.path.join(root, "blobs", os.path.basename(q.get("cid", "x")))
            if os.path.isfile(path):
                self.file(path)
            else:  # the synthetic posts' images: referenced, never uploaded
                self.body(400, b'{"error":"BlobNotFound"}')
        elif u.path == "/xrpc/com.atproto.sync.listBlobs":
            i = int(q.get("cursor", "0"))
            page = {"cids": cids[i:i + 1000]}
            if i + 1000 < len(cids):
                page["cursor"] = str(i + 1000)
            self.body(200, json.dumps(page).encode())
        else:
            self.body(501, b'{"error":"MethodNotImplemented"}')
    def body(self, status, data):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def file(self, path, rate=0.0):
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            self.wfile.flush()
            if rate <= 0:
                self.connection.sendfile(f)
                return
            # paced: 256 KiB at a time, never ahead of `rate` bytes a second
            sent, t0 = 0, time.monotonic()
            while sent < size:
                n = self.connection.sendfile(f, sent, min(1 << 18, size - sent))
                if n == 0:  # the file ended early: the client sees a short body
                    return
                sent += n
                ahead = t0 + sent / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
class S(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
s = S(("127.0.0.1", 0), H)
with open(port_file + ".tmp", "w") as f:
    f.write(str(s.server_port))
os.rename(port_file + ".tmp", port_file)
s.serve_forever()
'''

PEAK = r'''
import sys
from skyexport.cli import main
report = sys.argv.pop(1)
code = main(sys.argv[1:])
with open("/proc/self/status") as f:
    kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
with open(report, "w") as f:
    f.write(str(kb * 1024))
sys.exit(code)
'''


def parse_size(text: str) -> int:
    t = text.lower().replace("_", "")
    mult = {"k": 1000, "m": 1000_000}.get(t[-1:], 1)
    return int(t.rstrip("km")) * mult


def blob_cid(data: bytes) -> str:
    raw = bytes([0x01, 0x55, 0x12, 0x20]) + hashlib.sha256(data).digest()
    return "b" + base64.b32encode(raw).decode().lower().rstrip("=")


def build_root(posts: int, blobs: int, blob_size: int) -> Path:
    root = CACHE / f"fetch-p{posts}-b{blobs}x{blob_size}"
    if (root / "done").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    (root / "blobs").mkdir(parents=True)
    t = time.perf_counter()
    subprocess.run([PY, "-m", "skyexport", "synth", str(root / "repo.car"), "--car", str(posts),
                    "--seed", "1"], check=True, stdout=subprocess.DEVNULL)
    rng = __import__("random").Random(7)
    for _ in range(blobs):
        data = rng.randbytes(blob_size)
        (root / "blobs" / blob_cid(data)).write_bytes(data)
    (root / "done").write_text("")
    print(f"  built {root.name} in {time.perf_counter() - t:.1f} s", flush=True)
    return root


CPU: dict[str, list[float]] = {}  # "<side> client" / "<side> server": CPU seconds per run
SERVER_PIDS: list[int] = []


def _server_cpu() -> float:
    """CPU seconds the servers have used so far (0 where /proc is not there)."""
    total = 0.0
    for pid in SERVER_PIDS:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            pass
    return total


def timed(argv: list[str], side: str = "") -> float:
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server = _server_cpu()
    t = time.perf_counter()
    p = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({p.returncode}): {p.stderr.strip()}")
    if side:
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        CPU.setdefault(f"{side} client", []).append(
            after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        CPU.setdefault(f"{side} server", []).append(_server_cpu() - server)
    return wall


def did_of(car: Path) -> str:
    out = subprocess.run([PY, "-m", "skyexport", "info", str(car)], check=True,
                         capture_output=True, text=True).stdout
    return next(line.split()[1] for line in out.splitlines() if line.startswith("did:"))


def serve(root: Path, work: Path, rate: float = 0.0) -> tuple[subprocess.Popen[bytes], str]:
    """The server of `root` (getRepo paced to `rate` bytes a second; 0: as fast as it
    goes) and its URL."""
    port_file = work / f"port-{os.urandom(3).hex()}"
    proc = subprocess.Popen([PY, "-c", SERVER, str(root), str(port_file), str(rate)])
    for _ in range(200):
        if port_file.exists():
            return proc, f"http://127.0.0.1:{port_file.read_text()}"
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("the server did not start")


def skyexport_run(did: str, url: str, out: Path, peak: Path, side: str,
                  *extra: str) -> tuple[float, int]:
    t = timed([PY, "-c", PEAK, str(peak), "fetch", did, "--pds", url, "-o", str(out), "-q",
               "--progress", "none", *extra], side)
    return t, int(peak.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--posts", default="100k", help="posts of the synthetic repository "
                   "(it also has 2x likes and 0.2x follows; 1M is about 1.1 GB)")
    p.add_argument("--blobs", type=int, default=10_000)
    p.add_argument("--blob-size", type=int, default=20_000, help="bytes per blob")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rate", type=float, default=0.0, metavar="MB/S",
                   help="send the repository at most this fast (a network link's speed; "
                        "the row is then INFO: the target is for the unpaced loopback)")
    args = p.parse_args(argv)
    if shutil.which("curl") is None:
        raise SystemExit("curl is not installed")
    posts = parse_size(args.posts)
    print(f"fetch: {posts:,}-post repository vs curl -o; {args.blobs:,} blobs of "
          f"{args.blob_size:,} bytes vs curl --parallel --parallel-max 4; {args.rounds} "
          "rounds, alternating, medians", flush=True)
    load0 = os.getloadavg()
    repo_root = build_root(posts, 0, 0)
    blob_root = build_root(1000, args.blobs, args.blob_size)
    repo_did, blob_did = did_of(repo_root / "repo.car"), did_of(blob_root / "repo.car")
    work = Path(tempfile.mkdtemp(prefix="fetch-bench-", dir=CACHE))
    results: dict[str, list[float]] = {"curl repo": [], "skyexport repo": [],
                                       "curl blobs": [], "skyexport blobs": []}
    peaks: list[int] = []
    servers = []
    try:
        rs, rurl = serve(repo_root, work, args.rate * 1e6)
        bs, burl = serve(blob_root, work)
        servers = [rs, bs]
        SERVER_PIDS[:] = [rs.pid, bs.pid]
        cids = sorted(os.listdir(blob_root / "blobs"))
        # Each run starts with nothing of the last one's still to write: every run is
        # followed by a sync (not timed), or curl, which does not fsync, would leave its
        # gigabyte to be written back during the next run (and be throttled itself by
        # the one before).  The repository's files are then deleted (a few inodes: no
        # inode-reuse trap, and a gigabyte less of page cache); the blobs, tens of
        # thousands of files, are kept until the end: on ext4 a create right after a mass
        # delete is slowed (perf/README.md, the inode-reuse trap).
        for r in range(args.rounds):
            car = work / f"c{r}.car"
            results["curl repo"].append(timed(
                ["curl", "-sSf", "-o", str(car),
                 f"{rurl}/xrpc/com.atproto.sync.getRepo?did={repo_did}"], "curl repo"))
            os.sync()
            car.unlink()
            t, peak = skyexport_run(repo_did, rurl, work / f"so{r}", work / "peak",
                                    "skyexport repo", "--no-blobs")
            results["skyexport repo"].append(t)
            peaks.append(peak)
            shutil.rmtree(work / f"so{r}")
            os.sync()
            if cids:  # not with --blobs 0 (the repository alone)
                (work / f"cb{r}").mkdir()
                cfg = work / f"curl-blobs{r}.cfg"
                with cfg.open("w") as f:
                    for cid in cids:
                        f.write(f'url = "{burl}/xrpc/com.atproto.sync.getBlob?did={blob_did}'
                                f'&cid={cid}"\noutput = "{work}/cb{r}/{cid}"\n')
                results["curl blobs"].append(timed(
                    ["curl", "-sSf", "--no-progress-meter", "--parallel", "--parallel-max", "4",
                     "-K", str(cfg)], "curl blobs"))
                os.sync()
                t, peak = skyexport_run(blob_did, burl, work / f"sb{r}", work / "peak",
                                        "skyexport blobs", "--jobs", "4")
                results["skyexport blobs"].append(t)
                peaks.append(peak)
                os.sync()
            print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s"
                                                   for k, v in results.items() if v), flush=True)
    finally:
        for s in servers:
            s.terminate()
            s.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in results.items() if v}
    size = (repo_root / "repo.car").stat().st_size
    paced = f" at {args.rate:g} MB/s" if args.rate > 0 else ""
    rows: list[tuple[str, float, float | None, str]] = [
        (f"fetch repo {posts:,} posts ({size / 1e6:,.0f} MB){paced} vs curl",
         med["skyexport repo"] / med["curl repo"], None if paced else 1.2,
         f"{med['skyexport repo']:.2f} s vs {med['curl repo']:.2f} s"),
    ]
    if args.blobs:
        rows.append((f"fetch {args.blobs:,} blobs --jobs 4 vs curl --parallel-max 4",
                     med["skyexport blobs"] / med["curl blobs"], 1.5,
                     f"{med['skyexport blobs']:.2f} s vs {med['curl blobs']:.2f} s"))
    failed = False
    for name, ratio, target, note in rows:
        if target is None:  # paced: what a link of that speed gives, not the target
            print(f"  {name:<58} {ratio:6.2f}x  {'':>8}  INFO  {note}")
            continue
        ok = ratio <= target
        failed |= not ok
        print(f"  {name:<58} {ratio:6.2f}x  <= {target}x  {'PASS' if ok else 'FAIL'}  {note}")
    print("  CPU seconds, medians (the client's own; the server's while it served that "
          "client):")
    for side in ("repo", "blobs") if args.blobs else ("repo",):
        print("    " + "; ".join(
            f"{who} {statistics.median(CPU[f'{who} {side} client']):.2f} client + "
            f"{statistics.median(CPU[f'{who} {side} server']):.2f} server"
            for who in ("curl", "skyexport")) + f"  ({side})")
    load1 = os.getloadavg()
    print(f"  load (1/5/15 min): {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} at start, "
          f"{load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f} at end ({os.cpu_count()} CPUs)")
    peak_mb = max(peaks) / 2**20
    ok = peak_mb <= 64
    failed |= not ok
    print(f"  {'fetch peak RSS (every run)':<58} {peak_mb:6.1f}MB <= 64MB  "
          f"{'PASS' if ok else 'FAIL'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
