"""Write the fuzz targets' seed corpora: the real repositories in tests/car/ (cut to
their first 256 KB too, so the fuzzer can work on small inputs), the hostile cases of
tests/helpers/hostile.py at small sizes, some of their blocks on their own, and every committed
regression input (fuzz/regressions/).  Usage: python fuzz/seeds.py OUTDIR"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

import hostile  # noqa: E402

from skyexport import _core  # noqa: E402


def blocks(raw: bytes, limit: int = 40) -> list[bytes]:
    """The data of the first `limit` blocks of a CAR."""
    out = []
    try:
        n, used = _core.read_uvarint(raw)
        pos = used + (n or 0)
        while pos < len(raw) and len(out) < limit:
            ln, k = _core.read_uvarint(raw, pos)
            if ln is None:
                break
            frame = raw[pos + k:pos + k + ln]
            out.append(frame[36:])
            pos += k + ln
    except ValueError:
        pass
    return out


def main(outdir: str) -> None:
    car_dir = Path(outdir) / "car"
    json_dir = Path(outdir) / "json"
    car_dir.mkdir(parents=True, exist_ok=True)
    json_dir.mkdir(parents=True, exist_ok=True)
    seeds: dict[str, bytes] = {}
    for p in sorted((ROOT / "tests" / "car").glob("*.car")):
        raw = p.read_bytes()
        if len(raw) <= 64 << 10:
            seeds[p.stem] = raw
        seeds[p.stem + ".head"] = raw[:16 << 10]
        for i, b in enumerate(blocks(raw)):
            seeds[f"{p.stem}.block{i}"] = b
    for name, make in hostile.CASES.items():
        seeds["hostile." + name] = make()
    for p in sorted((ROOT / "fuzz" / "regressions" / "car").glob("*")):
        seeds["regression." + p.name] = p.read_bytes()
    for name, data in seeds.items():
        (car_dir / name).write_bytes(data)
    js = [b'\x01{"a":[1,2,{"b":"c"}],"d":null}', b'\x03[]', b'\x00{"$type":"x","v":1.5e3}',
          b'\x05"\\u2028<>&"', b'\x02{"a":{"b":{"c":[true,false]}}}']
    for p in sorted((ROOT / "fuzz" / "regressions" / "json").glob("*")):
        js.append(p.read_bytes())
    for i, d in enumerate(js):
        (json_dir / f"seed{i}").write_bytes(d)
    for p in sorted((ROOT / "tests" / "car").glob("*.car"))[:2]:
        raw = p.read_bytes()
        for i, b in enumerate(blocks(raw, 20)):
            try:
                (json_dir / f"{p.stem}.{i}").write_bytes(b"\x01" + _core.testing.cbor_to_json(b))
            except ValueError:
                pass


if __name__ == "__main__":
    main(sys.argv[1])
