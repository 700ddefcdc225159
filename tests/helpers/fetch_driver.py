"""Runs `skyexport ARGS` (cli.main) in this process after setting the fetch's private test
seams from a JSON file, then writes the process's peak RSS (VmHWM, bytes) to a file:

    python tests/helpers/fetch_driver.py SEAMS.json PEAK_FILE fetch HANDLE ...

SEAMS.json: {"nameserver": [ip, port], "plc": url, "cafile": path, "hosts": {name: [ip,
port]}, "policy": {attribute: value}} (each optional).  The library reads no environment
variable for any of these: the seams are module attributes, set here."""

from __future__ import annotations

import json
import sys

from skyexport.cli import main
from skyexport.remote import http, resolve

seams = json.loads(open(sys.argv[1]).read())
report = sys.argv[2]
if seams.get("nameserver"):
    resolve._TEST["nameserver"] = tuple(seams["nameserver"])
if seams.get("plc"):
    resolve._TEST["plc"] = seams["plc"]
if seams.get("cafile"):
    http._TEST["cafile"] = seams["cafile"]
http._TEST["hosts"] = {k: tuple(v) for k, v in seams.get("hosts", {}).items()}
if seams.get("policy"):
    policy = http.Policy()
    for k, v in seams["policy"].items():
        setattr(policy, k, v)
    http._TEST["policy"] = policy
code = main(sys.argv[3:])
sys.stdout.flush()
with open("/proc/self/status") as f:
    kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
with open(report, "w") as f:
    f.write(str(kb * 1024))
sys.exit(code)
