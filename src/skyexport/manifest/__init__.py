"""manifest.json: written at the end of an export (write.py), checked by `verify`
(verify.py, with scan.py and counters.py)."""
