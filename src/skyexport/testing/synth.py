"""Synthetic bskyarchive archives: realistic, deterministic and fast to build.

skyexport's tests, its ``demo`` command and its benchmarks need archives of any size that
look like the ones bskyarchive (the Go tool) really writes, without a network or a Bluesky
account. :func:`build_archive` writes one.

What the archive contains, and why each part looks the way it does:

* **Schema**: exactly bskyarchive's v2 ``posts`` table (v1, without ``quote_count``, on
  request), the ``media`` table, the FTS5 table ``posts_fts`` (external content over
  ``posts``) with its ``posts_ai`` insert trigger, and the indexes ``idx_posts_did`` and
  ``idx_posts_created_at``.  The exporter's query plans depend on those indexes, so an archive
  without them would benchmark the wrong thing.  bskyarchive defines no delete or update
  trigger, so neither does this module.
* **Rows in fetch order, not time order**: bskyarchive pages through a feed newest first and
  later syncs fill in other stretches, so ``rowid`` order is only loosely related to
  ``created_at``.  Rows are generated in time-ordered chunks, the chunks are written mostly
  newest first with some out of place, and the 100-post pages inside a chunk are shuffled.  An
  exporter that silently relies on insertion order shows up as wrong output.
* **Timestamps in every form an archive holds**: mostly Go's ``time.Time.String()``
  (``2024-01-15 10:30:00.123 -0800 PST``, fraction of 0-9 digits) in UTC, US Pacific (PDT
  or PST by the date, as Go prints them), JST and IST, ~10 % with Go's monotonic suffix
  `` m=+12.345678901``; a few percent RFC 3339 and a few SQLite ``CURRENT_TIMESTAMP``
  values.  ``ORDER BY created_at`` is a text sort over this mixture, exactly as in a real
  archive.  ``archived_at`` is ``CURRENT_TIMESTAMP`` text from periodic syncs.
* **Text that exercises every escaping rule**: words with emoji (ZWJ sequences, flags), ``"``
  quotes, commas, newlines, the odd ``<``, ``>`` and ``&``, and sometimes a leading space.
* **Embeds and labels as stored JSON**: ~10 % image posts, ~3 % link cards with a
  thumbnail, ~3 % quotes, ~1 % quote-with-images, ~2 % label lists.  The JSON spacing varies
  (compact with Go's HTML escapes, Python's default, four-space indent) because stored JSON is
  re-indented by the exporter and must not depend on how it was written.
* **Skewed counts**: most posts have 0-5 likes, a few have thousands.
* **Media** (``media=True``): one ``media`` row per image or link thumbnail, each with a
  tiny file (the right magic bytes, a few hundred bytes, not a decodable image) under
  ``media_dir``, its path stored relative to the archive's directory.  ~2 % of the files
  have the same bytes as another and ~1 % of the rows name a file that was never written,
  because real archives have both.

The same ``seed`` and arguments always give the same rows (``random.Random(seed)`` drives
everything; no clock is read).  A million posts take well under a minute: rows are built a
column at a time from precomputed pools and string joins, go to SQLite through
``executemany`` in chunks inside one transaction with journaling off, the secondary indexes
are built once at the end and the full-text index is filled by one FTS5 ``rebuild``.  Only
one chunk of rows is held in memory.
"""

from __future__ import annotations

import bisect
import datetime as _dt
import json
import os
import random
import shutil
import sys
import time
import zlib
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from math import log as _log
from typing import Any, TypeVar, cast

import apsw

from .._platform import exclusive_temp
from ..errors import OutputError
from ..schema import (
    FTS,
    INDEXES,
    INSERT_MEDIA,
    INSERT_V1,
    INSERT_V2,
    MEDIA,
    POSTS_V1,
    POSTS_V2,
    TRIGGER,
)

__all__ = ["SynthStats", "build_archive"]

_T = TypeVar("_T")
_Row = tuple[Any, ...]
_Image = tuple[str, str, str, int, int, str]  # cid, mime type, extension, width, height, alt


@dataclass(frozen=True)
class SynthStats:
    """What :func:`build_archive` wrote: the archive's path, its number of posts, the number
    of media files written to disk, and the wall-clock build time."""

    path: str
    posts: int
    media_files: int
    seconds: float


# --- Schema ---------------------------------------------------------------------------------
# One definition (schema.py), shared with `import` and the tests.
_POSTS_V2, _POSTS_V1, _MEDIA, _FTS = POSTS_V2, POSTS_V1, MEDIA, FTS
_INDEXES, _TRIGGER = INDEXES, TRIGGER
_INSERT_V2, _INSERT_V1, _INSERT_MEDIA = INSERT_V2, INSERT_V1, INSERT_MEDIA

# --- Time line --------------------------------------------------------------------------------
# Fixed, so that no build depends on today's date: from Bluesky's public app launch to early
# 2026, about three years.
_T_START = int(_dt.datetime(2023, 2, 17, tzinfo=_dt.timezone.utc).timestamp())
_T_END = int(_dt.datetime(2026, 1, 31, tzinfo=_dt.timezone.utc).timestamp())
# The archiver's first run pulled the whole history; after it, a sync every six hours.
_T_FIRST_SYNC = _T_END - 400 * 86400
_SYNC_PERIOD = 6 * 3600

_CHUNK = 10_000  # rows per executemany and per on_progress call
_PAGE = 100  # bskyarchive's page size when it fetches a feed

# --- Identifiers --------------------------------------------------------------------------------
_S32 = "234567abcdefghijklmnopqrstuvwxyz"  # atproto's sortable base32 (TIDs)
_S32_PAIRS = [a + b for a in _S32 for b in _S32]
_B32 = "abcdefghijklmnopqrstuvwxyz234567"  # RFC 4648 lower case (DIDs, CIDs)
_CID_DAG_CBOR = "bafyrei"  # "b" + base32 of CIDv1, dag-cbor, sha2-256, 32 bytes: a record
_CID_RAW = "bafkrei"  # the same with the raw codec: a blob (image)
_CDN = "https://cdn.bsky.app/img/"
_CLOCKS = range(1024)  # TID clock ids, drawn like a pool


def _tid(us: int, clock: int) -> str:
    """A 13-character TID (microseconds since the epoch, 10-bit clock id), the record key of
    every post, so the URIs of a synthetic archive sort like real ones."""
    v = (us << 10) | (clock & 1023)
    p = _S32_PAIRS
    return (
        _S32[v >> 60]
        + p[(v >> 50) & 1023]
        + p[(v >> 40) & 1023]
        + p[(v >> 30) & 1023]
        + p[(v >> 20) & 1023]
        + p[(v >> 10) & 1023]
        + p[v & 1023]
    )


# Byte -> base32 character maps for bytes.translate, which turns a chunk's random bytes into
# CID text in one C call (base64.b32encode is pure Python and was a third of the build time).
_TR_ANY = bytes(ord(_B32[b & 31]) for b in range(256))
_TR_HEAD = bytes(ord(_B32[b & 7]) for b in range(256))  # 2 prefix bits (00) + 3 digest bits
_TR_TAIL = bytes(ord(_B32[(b & 7) << 2]) for b in range(256))  # 3 digest bits + 2 pad bits


def _cids(rng: random.Random, prefix: str, n: int) -> list[str]:
    """n CIDv1 strings of random sha2-256 digests, 59 characters like real ones.  Base32 of
    the 36 binary bytes is the fixed prefix, a character carrying the prefix's last two bits
    (always 0) and three digest bits, 50 characters of five digest bits, and a last character
    with three digest bits and two zero padding bits; drawing each character directly
    gives the same text as encoding random digests."""
    heads = rng.randbytes(n).translate(_TR_HEAD).decode("ascii")
    body = rng.randbytes(50 * n).translate(_TR_ANY).decode("ascii")
    tails = rng.randbytes(n).translate(_TR_TAIL).decode("ascii")
    return [prefix + h + body[j : j + 50] + t
            for h, j, t in zip(heads, range(0, 50 * n, 50), tails, strict=True)]


def _did(rng: random.Random) -> str:
    return "did:plc:" + "".join(rng.choices(_B32, k=24))


# --- Pools ----------------------------------------------------------------------------------
# Per-row random choices are drawn from pools whose length is a power of two, indexed by random
# 16-bit integers made in one call per chunk: three times cheaper than random.choices.

_BIG_ENDIAN = sys.byteorder == "big"


def _draw(rng: random.Random, pool: Sequence[_T], k: int) -> list[_T]:
    """k uniform draws from `pool` (length a power of two, at most 65536)."""
    idx = array("H")
    idx.frombytes(rng.randbytes(2 * k))
    if _BIG_ENDIAN:  # the same draws on every machine
        idx.byteswap()
    mask = len(pool) - 1
    return [pool[i & mask] for i in idx]


def _weighted_pool(items: Sequence[tuple[_T, int]], size: int) -> list[_T]:
    """A pool of `size` entries holding each item in proportion to its weight (rounded down;
    the first item takes what rounding leaves)."""
    total = sum(w for _, w in items)
    pool: list[_T] = []
    for item, w in items:
        pool.extend([item] * (w * size // total))
    return [items[0][0]] * (size - len(pool)) + pool


# --- Text -----------------------------------------------------------------------------------

_WORDS = [
    "the", "be", "to", "of", "and", "a", "in", "that", "have", "i", "it", "for", "not", "on",
    "with", "he", "as", "you", "do", "at", "this", "but", "his", "by", "from", "they", "we",
    "say", "her", "she", "or", "an", "will", "my", "one", "all", "would", "there", "their",
    "what", "so", "up", "out", "if", "about", "who", "get", "which", "go", "me", "when", "make",
    "can", "like", "time", "no", "just", "him", "know", "take", "people", "into", "year",
    "your", "good", "some", "could", "them", "see", "other", "than", "then", "now", "look",
    "only", "come", "its", "over", "think", "also", "back", "after", "use", "two", "how", "our",
    "work", "first", "well", "way", "even", "new", "want", "because", "any", "these", "give",
    "day", "most", "us", "is", "are", "was", "were", "been", "being", "has", "had", "did",
    "going", "really", "still", "never", "always", "maybe", "today", "tonight", "tomorrow",
    "yesterday", "morning", "night", "week", "weekend", "bluesky", "skeet", "post", "thread",
    "feed", "timeline", "repost", "quote", "reply", "like", "follow", "followers", "mute",
    "block", "custom", "domain", "handle", "atproto", "federation", "protocol", "server", "app",
    "open", "source", "code", "bug", "fix", "release", "coffee", "tea", "breakfast", "lunch",
    "dinner", "cat", "dog", "bird", "garden", "walk", "run", "bike", "train", "bus", "rain",
    "snow", "sun", "cloud", "sky", "ocean", "mountain", "city", "music", "song", "album",
    "concert", "movie", "book", "chapter", "poem", "art", "photo", "picture", "drawing",
    "painting", "game", "play", "win", "lose", "team", "match", "season", "vote", "news",
    "article", "paper", "science", "research", "data", "model", "study", "result", "question",
    "answer", "idea", "plan", "project", "meeting", "deadline", "happy", "sad", "tired",
    "excited", "nervous", "proud", "grateful", "sorry", "funny", "weird", "wild", "great",
    "awesome", "terrible", "cute", "lovely", "beautiful", "strange", "quiet", "loud", "small",
    "big", "little", "huge", "early", "late", "fast", "slow", "hot", "cold",
]

_DECORATED = [
    "#bluesky", "#art", "#photography", "#caturday", "#science", "#books", "#gamedev",
    "@alice.bsky.social", "@bob.example.com", "@jay.bsky.team",
    "https://example.com/posts?id=42&ref=bsky",
    "https://en.wikipedia.org/wiki/Bluesky_(social_network)",
    "😀", "😂", "🥲", "❤️", "🔥", "👍🏽", "✨", "🦋", "🇫🇷", "🇯🇵", "👨‍👩‍👧", "🏳️‍🌈", "☕",
    '"really"', '"quoted"', '"so', 'it"', "it's", "don't", "can't", "I'm",
    "<3", "&", "->", "<->", "R&D", "a<b", "café", "naïve", "日本語", "Ünïcödé", "—", "…",
]


def _token_pool(rng: random.Random) -> list[str]:
    """A few thousand tokens with Zipf-like word frequencies, attached punctuation, emoji and
    line breaks; posts are uniform draws from it, which is far cheaper than weighted draws."""
    pool: list[str] = []
    for rank, word in enumerate(_WORDS):
        pool.extend([word] * max(1, 60 // (rank // 12 + 1)))
    for i, word in enumerate(pool):
        r = rng.random()
        if r < 0.06:
            pool[i] = word + ","
        elif r < 0.09:
            pool[i] = word + "."
        elif r < 0.10:
            pool[i] = word + "!"
        elif r < 0.105:
            pool[i] = word + "?"
        elif r < 0.11:
            pool[i] = word.capitalize()
    pool.extend(_DECORATED * 3)
    n = len(pool)
    pool.extend(["\n"] * (n // 60) + ["\n\n"] * (n // 120))
    return rng.choices(pool, k=16384)


# --- Counts ---------------------------------------------------------------------------------


def _count_pool(rng: random.Random, zero: float, small: int, tail: float, cap: int) -> list[int]:
    """Values for a count column: `zero` of them 0, most of the rest 1..small, and a Pareto
    tail (shape `tail`) reaching `cap`, like the likes and reposts of a real account."""
    out = []
    for _ in range(4096):
        r = rng.random()
        if r < zero:
            out.append(0)
        elif r < 0.93:
            out.append(rng.randint(1, small))
        else:
            out.append(min(cap, int(small * rng.paretovariate(tail))))
    return out


# --- Time stamps ------------------------------------------------------------------------------


def _pacific_dst_bounds() -> list[int]:
    """UTC instants where US Pacific daylight time starts and ends, for every year the time
    line touches (second Sunday of March 10:00 UTC, first Sunday of November 09:00 UTC): a
    Go program in Los Angeles prints PDT between them and PST outside."""
    out = []
    for year in range(2022, 2028):
        mar1 = _dt.date(year, 3, 1)
        start = mar1 + _dt.timedelta(days=(6 - mar1.weekday()) % 7 + 7)
        nov1 = _dt.date(year, 11, 1)
        end = nov1 + _dt.timedelta(days=(6 - nov1.weekday()) % 7)
        for day, hour in ((start, 10), (end, 9)):
            out.append(int(_dt.datetime(day.year, day.month, day.day, hour,
                                        tzinfo=_dt.timezone.utc).timestamp()))
    return out


_DST = _pacific_dst_bounds()
_gmtime = time.gmtime

# Zone choice for Go-form created_at: weight, offset seconds, name ("pacific" resolves by date).
_ZONES = [(55, 0, "+0000 UTC"), (20, None, "pacific"), (13, 9 * 3600, "+0900 JST"),
          (12, 19800, "+0530 IST")]


# Three timestamps a row, formatted a whole column at a time: cached day strings and
# minute/second tables in one comprehension are several times faster than time.gmtime and
# %-formatting each one.
class _Days(dict[int, str]):
    """Day number since the epoch -> ``YYYY-MM-DD``, computed the first time it is asked for."""

    def __missing__(self, day: int) -> str:
        t = _gmtime(day * 86400)
        date = self[day] = f"{t[0]:04d}-{t[1]:02d}-{t[2]:02d}"
        return date


_DAYS = _Days()
_HH_MM = [f"{h:02d}:{m:02d}" for h in range(24) for m in range(60)]
_SS = [f":{s:02d}" for s in range(60)]
# Go's fraction of a millisecond count (0-999): trailing zeros dropped, nothing for zero.
_MS = [""] + ["." + f"{ms:03d}".rstrip("0") for ms in range(1, 1000)]
_PDT, _PST = (-25200, "-0700 PDT"), (-28800, "-0800 PST")


def _ymdhms(secs: int, sep: str = " ") -> str:
    """`YYYY-MM-DD HH:MM:SS` (or with `T`) for seconds since the epoch, read as UTC."""
    return _DAYS[secs // 86400] + sep + _HH_MM[secs % 86400 // 60] + _SS[secs % 60]


def _ymdhms_all(secs: Iterable[int], sep: str = " ") -> list[str]:
    """:func:`_ymdhms` of every value, in one comprehension (no call per value)."""
    days, hh_mm, ss = _DAYS, _HH_MM, _SS
    return [days[s // 86400] + sep + hh_mm[s % 86400 // 60] + ss[s % 60] for s in secs]


def _frac(ns: int) -> str:
    """Go's `.999999999` fraction: trailing zeros dropped, nothing at all for zero."""
    return "." + f"{ns:09d}".rstrip("0") if ns else ""


# --- JSON ---------------------------------------------------------------------------------------


def _dump(obj: object, style: float) -> str:
    """Stored JSON in one of the spellings real archives hold: Go's json.Marshal (compact,
    `<>&` as \\u003c etc.), Python's default spacing, or four-space indent."""
    if style < 0.55:
        s = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
        if "<" in s or ">" in s or "&" in s:
            s = s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        return s
    if style < 0.85:
        return json.dumps(obj, ensure_ascii=False)
    return json.dumps(obj, ensure_ascii=False, indent=4)


_LABEL_SRC = "did:plc:ar7c4by46qjdydhdevvrndac"
_LABEL_VALS = ["graphic-media", "nudity", "sexual", "porn", "!warn", "!hide", "spam", "rude"]
_JPEG, _PNG, _WEBP = ("image/jpeg", ".jpg"), ("image/png", ".png"), ("image/webp", ".webp")
_ASPECTS = [(4, 3), (3, 4), (16, 9), (9, 16), (1, 1), (3, 2), (2, 3)]
_LINK_SITES = [
    "https://example.com/blog/", "https://news.example.org/2024/",
    "https://www.youtube.com/watch?v=", "https://github.com/bluesky-social/atproto/pull/",
    "https://en.wikipedia.org/wiki/",
]


# --- Media files ------------------------------------------------------------------------------

_JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"


def _media_bytes(rng: random.Random, mime: str, w: int, h: int) -> bytes:
    """A few hundred bytes with the format's magic numbers and header (enough for `file` to
    recognise it), a random comment making the content unique; not a decodable image."""
    body = rng.randbytes(rng.randint(120, 600))
    if mime == "image/png":
        def chunk(kind: bytes, data: bytes) -> bytes:
            return (len(data).to_bytes(4, "big") + kind + data
                    + zlib.crc32(kind + data).to_bytes(4, "big"))

        ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + b"\x08\x02\x00\x00\x00"
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"tEXt", b"Comment\0" + body)
                + chunk(b"IEND", b""))
    if mime == "image/webp":
        payload = b"WEBP" + b"VP8X" + (len(body)).to_bytes(4, "little") + body
        return b"RIFF" + len(payload).to_bytes(4, "little") + payload
    return _JPEG_HEAD + b"\xff\xfe" + (len(body) + 2).to_bytes(2, "big") + body + b"\xff\xd9"


class _MediaWriter:
    """Writes media files and collects their `media` rows for the current chunk."""

    def __init__(self, rng: random.Random, media_dir: str, rel_dir: str) -> None:
        self.rng = rng
        self.media_dir = media_dir
        self.rel_dir = rel_dir
        self.made_dirs: set[str] = set()
        self.rows: list[_Row] = []
        self.files = 0
        self.last: dict[str, bytes] = {}
        self.created = False  # media_dir made by this build (removed if it fails)

    def add(self, cid: str, post_uri: str, mime: str, ext: str, w: int, h: int, alt: str,
            created: str) -> None:
        rng = self.rng
        shard = cid[-2:]  # every CID starts "bafkrei": shard on the end, not the start
        name = cid + ext
        r = rng.random()
        if r < 0.01:
            # A row whose file is gone: the archiver's download failed or someone cleaned up.
            size = rng.randint(20_000, 900_000)
        else:
            if r < 0.03 and mime in self.last:
                data = self.last[mime]  # the same image posted twice under another CID
            else:
                data = _media_bytes(rng, mime, w, h)
                self.last[mime] = data
            d = os.path.join(self.media_dir, shard)
            if d not in self.made_dirs:
                os.makedirs(d, exist_ok=True)
                self.made_dirs.add(d)
            with open(os.path.join(d, name), "xb") as f:  # in our own new directory
                f.write(data)
            self.files += 1
            size = len(data)
        self.rows.append((cid, post_uri, mime, self.rel_dir + shard + "/" + name, size, w, h,
                          alt, created))


# --- Rows -----------------------------------------------------------------------------------


class _Generator:
    """Produces rows chunk by chunk.  All randomness comes from one `random.Random`, consumed
    in a fixed order, which is what makes a build reproducible.

    A chunk is built a column group at a time (identifiers, text, created_at, indexed_at and
    archived_at, replies, embeds, labels, counts), each over the whole chunk in comprehensions
    and C-level random draws; only the rows a rare feature touches (a reply, an embed, a
    label, a non-Go timestamp) get a loop of their own.  `chunk` zips the columns into rows.
    """

    def __init__(self, rng: random.Random, dids: int, schema_version: int,
                 media: _MediaWriter | None) -> None:
        self.rng = rng
        self.v2 = schema_version >= 2
        self.media = media
        owners = [_did(rng) for _ in range(max(1, dids))]
        # One account owns ~90 % of the rows (the archive's owner); the rest are shared out.
        self.owner = owners[0]
        weights = [(owners[0], 9 * max(1, len(owners) - 1))] + [(d, 1) for d in owners[1:]]
        self.did_pool = _weighted_pool(weights, 1024 if dids <= 100 else 65536)
        self.uri_prefix = {d: "at://" + d + "/app.bsky.feed.post/" for d in owners}
        # Accounts this one replies to and quotes.
        self.others = [_did(rng) for _ in range(200)] + ["did:web:example.com"]
        self.tokens = _token_pool(rng)
        self.nwords = [rng.choice((3, 4, 5, 6, 8, 10, 12, 15, 18, 22, 28, 34, 42, 50))
                       for _ in range(1024)]
        self.likes = _count_pool(rng, 0.30, 5, 0.6, 250_000)
        self.reposts = _count_pool(rng, 0.60, 3, 0.8, 60_000)
        self.replies = _count_pool(rng, 0.55, 3, 1.0, 5_000)
        self.quotes = _count_pool(rng, 0.85, 2, 1.2, 2_000)
        self.zones = _weighted_pool([((off, name), w) for w, off, name in _ZONES], 1024)

    # --- Shared pieces: each makes a whole list in one go --------------------------------------

    def _word_runs(self, lo: int, hi: int, m: int) -> list[str]:
        """m texts of lo..hi tokens each."""
        rnd = self.rng.random
        lengths = [lo + int(rnd() * (hi - lo + 1)) for _ in range(m)]
        tokens = _draw(self.rng, self.tokens, sum(lengths))
        join = " ".join
        return [join(tokens[e - k : e]).strip()
                for e, k in zip(accumulate(lengths), lengths, strict=True)]

    def _images(self, m: int) -> list[_Image]:
        """m images: CID, format (mostly JPEG), a common aspect ratio and size, alt text on
        45 % of them."""
        rng = self.rng
        rnd = rng.random
        cids = _cids(rng, _CID_RAW, m)
        formats = [_JPEG if r < 0.85 else _PNG if r < 0.97 else _WEBP
                   for r in [rnd() for _ in range(m)]]
        aspects = rng.choices(_ASPECTS, k=m)
        scales = rng.choices((250, 320, 400, 500), k=m)
        alts = [""] * m
        described = [i for i in range(m) if rnd() >= 0.55]
        for i, alt in zip(described, self._word_runs(2, 14, len(described)), strict=True):
            alts[i] = alt
        return [(cid, mime, ext, aw * scale, ah * scale, alt)
                for cid, (mime, ext), (aw, ah), scale, alt
                in zip(cids, formats, aspects, scales, alts, strict=True)]

    @staticmethod
    def _image_list(did: str, imgs: list[_Image], sized: list[bool]) -> list[dict[str, Any]]:
        """The `images` array of an embed; `sized` says which items carry aspectRatio (newer
        clients send it)."""
        out = []
        for (cid, mime, _ext, w, h, alt), with_size in zip(imgs, sized, strict=True):
            fmt = "@png" if mime == "image/png" else "@jpeg"
            item: dict[str, Any] = {"alt": alt,
                          "fullsize": _CDN + "feed_fullsize/plain/" + did + "/" + cid + fmt,
                          "thumb": _CDN + "feed_thumbnail/plain/" + did + "/" + cid + fmt}
            if with_size:
                item["aspectRatio"] = {"width": w, "height": h}
            out.append(item)
        return out

    def _other_uris(self, us: list[int]) -> list[str]:
        """For each instant (microseconds), the URI of another account's post from a little
        (about an hour, exponentially) before it."""
        rng = self.rng
        rnd = rng.random
        others = rng.choices(self.others, k=len(us))
        clocks = _draw(rng, _CLOCKS, len(us))
        # _tid stays a call per URI: seven table lookups inlined here would be unreadable.
        return ["at://" + other + "/app.bsky.feed.post/"
                + _tid(max(u - int(-_log(1.0 - rnd()) * 3.6e9) - 1, 0), clock)
                for u, other, clock in zip(us, others, clocks, strict=True)]

    # --- Column groups ---------------------------------------------------------------------------

    def _identities(self, t0: int, t1: int, n: int
                    ) -> tuple[list[int], list[str], list[str], list[str]]:
        """Creation instants (ns, sorted), DIDs, URIs and CIDs of n posts in [t0, t1)."""
        rng = self.rng
        rnd = rng.random
        # Sorted uniform instants, the i-th moved i microseconds later so no two share a
        # microsecond (TIDs and therefore URIs stay unique); the draw leaves room for that
        # inside the chunk's span.
        room = (t1 - t0) * 1_000_000_000 - 1000 * n
        base = t0 * 1_000_000_000
        stamps = [base + s + 1000 * i
                  for i, s in enumerate(sorted([int(rnd() * room) for _ in range(n)]))]
        dids = _draw(rng, self.did_pool, n)
        clocks = _draw(rng, _CLOCKS, n)
        prefix = self.uri_prefix
        # _tid stays a call per row: seven table lookups inlined here would be unreadable.
        uris = [prefix[did] + _tid(s // 1000, clock)
                for did, s, clock in zip(dids, stamps, clocks, strict=True)]
        return stamps, dids, uris, _cids(rng, _CID_DAG_CBOR, n)

    def _texts(self, n: int) -> list[str]:
        """Post texts: consecutive slices of one token stream, 20-300 characters."""
        rng = self.rng
        rnd = rng.random
        nwords = _draw(rng, self.nwords, n)
        words = _draw(rng, self.tokens, sum(nwords) + 64)
        ends = list(accumulate(nwords))
        join = " ".join
        texts = [join(words[e - k : e]) for e, k in zip(ends, nwords, strict=True)]
        # A line break takes no space beside it, and a post neither starts nor ends with one.
        texts = [t.replace(" \n", "\n").replace("\n ", "\n").strip("\n") if "\n" in t else t
                 for t in texts]
        # Too short: borrow the next tokens (a loop over those rows only).
        for i in [i for i, t in enumerate(texts) if len(t) < 20]:
            t, j = texts[i], ends[i]
            while len(t) < 20:
                t = (t + " " + words[j % len(words)]).strip()
                j += 1
            texts[i] = t
        # Pasted text keeps its leading space (1 %); some start with a capital (5 %).
        return [" " + t if r < 0.01 else t[0].upper() + t[1:] if r < 0.06 else t
                for t, r in zip([t[:300].rstrip() if len(t) > 300 else t for t in texts],
                                [rnd() for _ in range(n)], strict=True)]

    def _created_at(self, stamps: list[int]) -> list[str]:
        """created_at: 94 % in Go's String() form (zone, 0-9 digit fraction, 10 % with a
        monotonic clock reading), 3 % RFC 3339, 3 % CURRENT_TIMESTAMP."""
        rng = self.rng
        rnd = rng.random
        n = len(stamps)
        secs = [s // 1_000_000_000 for s in stamps]
        nss = [s % 1_000_000_000 for s in stamps]
        # US Pacific: the offset and the name follow the date, as Go prints them.
        dst, after = _DST, bisect.bisect_right
        zones = cast(list[tuple[int, str]],  # no None left, which mypy cannot tell
                     [zone if zone[0] is not None else _PDT if after(dst, s) & 1 else _PST
                      for zone, s in zip(_draw(rng, self.zones, n), secs, strict=True)])
        # Precision: milliseconds, microseconds, nanoseconds or whole seconds.
        fracs = [ns - ns % 1_000_000 if p < 0.70 else ns - ns % 1000 if p < 0.80
                 else ns if p < 0.92 else 0
                 for ns, p in zip(nss, [rnd() for _ in range(n)], strict=True)]
        monos = [f" m=+{int(rnd() * 90_000)}.{int(rnd() * 1e9):09d}" if rnd() < 0.10 else ""
                 for _ in range(n)]
        local = _ymdhms_all([s + zone[0] for s, zone in zip(secs, zones, strict=True)])
        created = [t + ("." + f"{f:09d}".rstrip("0") if f else "") + " " + zone[1] + mono
                   for t, f, zone, mono in zip(local, fracs, zones, monos, strict=True)]
        # The other forms (a loop over those rows only).
        for i in [i for i in range(n) if rnd() >= 0.94]:
            s = secs[i]
            if rnd() < 0.5:
                created[i] = _ymdhms(s)
            elif rnd() < 0.75:
                created[i] = _ymdhms(s, "T") + _MS[nss[i] // 1_000_000] + "Z"
            else:
                created[i] = _ymdhms(s + 7200, "T") + "+02:00"
        return created

    def _indexed_archived(self, stamps: list[int]) -> tuple[list[str], list[str], list[int]]:
        """indexed_at (UTC, Go form), archived_at (CURRENT_TIMESTAMP form) and indexed_at in
        seconds, which the labels need."""
        rnd = self.rng.random
        # The AppView saw the post a moment later (50 ms plus an exponential lag of mean 1.5 s,
        # inlined: expovariate is a Python call); bskyarchive wrote UTC, in milliseconds,
        # 5 % with the monotonic suffix.
        seen = [s + int(-_log(1.0 - rnd()) * 1.5e9) + 50_000_000 for s in stamps]
        isecs = [x // 1_000_000_000 for x in seen]
        monos = [f" m=+{int(rnd() * 90_000)}.{x % 1_000_000_000:09d}" if rnd() < 0.05 else ""
                 for x in seen]
        ms = _MS
        indexed = [t + ms[x // 1_000_000 % 1000] + " +0000 UTC" + mono
                   for t, x, mono in zip(_ymdhms_all(isecs), seen, monos, strict=True)]
        # archived_at: the first sync after the post (the initial sync for old posts).
        first, period = _T_FIRST_SYNC, _SYNC_PERIOD
        archived = _ymdhms_all([
            first + int(rnd() * 5400) if s < first
            else first + -(-(s - first) // period) * period + int(rnd() * 600)
            for s in isecs])
        return indexed, archived, isecs

    def _replies(self, stamps: list[int], dids: list[str], uris: list[str]
                 ) -> tuple[list[int], list[str]]:
        """is_reply and reply_parent: 20 % are replies; 40 % of those continue this account's
        own thread (one of its 30 posts before), the rest answer other accounts."""
        rnd = self.rng.random
        n = len(stamps)
        owner = self.owner
        own = [uri for uri, did in zip(uris, dids, strict=True) if did is owner]
        before = list(accumulate([did is owner for did in dids], initial=0))  # own posts before
        is_reply = [1 if rnd() < 0.20 else 0 for _ in range(n)]
        parent = [""] * n
        outside = []
        for i in [i for i, r in enumerate(is_reply) if r]:  # a loop over the replies only
            k = before[i]
            if k and rnd() < 0.4:
                w = min(k, 30)
                parent[i] = own[k - w + int(rnd() * w)]
            else:
                outside.append(i)
        for i, uri in zip(outside, self._other_uris([stamps[i] // 1000 for i in outside]),
                          strict=True):
            parent[i] = uri
        return is_reply, parent

    def _embeds(self, stamps: list[int], dids: list[str]) -> tuple[
            list[int], list[str], list[str | None], list[tuple[int, list[_Image]]]]:
        """has_media, embed_type and embed_data, and (row, images) for the media writer:
        10 % images, 3 % link cards with a thumbnail, 3 % quotes, 1 % quotes with images."""
        rng = self.rng
        rnd = rng.random
        n = len(stamps)
        kinds = [rnd() for _ in range(n)]
        rows = [i for i, r in enumerate(kinds) if r < 0.17]
        counts = [1 + int(rnd() ** 2 * 4) if r < 0.10 else 1 if r < 0.13 else 0 if r < 0.16
                  else 1 + int(rnd() * 2) for r in [kinds[i] for i in rows]]
        images = self._images(sum(counts))
        sized = [rnd() < 0.6 for _ in images]
        styles = [rnd() for _ in rows]
        quoting = [i for i in rows if kinds[i] >= 0.13]
        quotes = iter(zip(self._other_uris([stamps[i] // 1000 for i in quoting]),
                          _cids(rng, _CID_DAG_CBOR, len(quoting)), strict=True))
        m = sum(1 for i in rows if 0.10 <= kinds[i] < 0.13)
        links = iter(zip(rng.choices(_LINK_SITES, k=m), [rng.getrandbits(20) for _ in range(m)],
                         self._word_runs(2, 9, m), self._word_runs(0, 25, m),
                         [rnd() < 0.8 for _ in range(m)], strict=True))

        has_media, etype = [0] * n, [""] * n
        edata: list[str | None] = [None] * n
        media: list[tuple[int, list[_Image]]] = []
        obj: dict[str, Any]
        at = 0
        # One json.dumps per embed is unavoidable; the rows without one are not visited.
        for i, count, style in zip(rows, counts, styles, strict=True):
            r, did = kinds[i], dids[i]
            imgs, with_size = images[at : at + count], sized[at : at + count]
            at += count
            if r < 0.10:
                etype[i] = "images"
                obj = {"images": self._image_list(did, imgs, with_size)}
            elif r < 0.13:
                site, number, title, description, described = next(links)
                cid0, _mime, _ext, w, h, _alt = imgs[0]
                etype[i] = "external"
                obj = {"external": {
                    "uri": site + str(number),
                    "title": title.title(),
                    "description": description if described else "",
                    "thumb": _CDN + "feed_thumbnail/plain/" + did + "/" + cid0 + "@jpeg",
                }}
                imgs = [(cid0, "image/jpeg", ".jpg", w, h, "")]
            else:
                quoted, quoted_cid = next(quotes)
                obj = {"record": {"uri": quoted, "cid": quoted_cid}}
                if r < 0.16:
                    etype[i] = "record"
                else:
                    etype[i] = "record_with_media"
                    obj["media"] = {"images": self._image_list(did, imgs, with_size)}
            edata[i] = _dump(obj, style)
            if imgs:
                has_media[i] = 1
                media.append((i, imgs))
        return has_media, etype, edata, media

    def _labels(self, uris: list[str], cids: list[str], isecs: list[int]) -> list[str | None]:
        """labels: 2 % carry one or two moderation labels applied within a day of indexing."""
        rng = self.rng
        rnd = rng.random
        labels: list[str | None] = [None] * len(uris)
        for i in [i for i in range(len(uris)) if rnd() < 0.02]:  # a loop over those rows only
            cts = _ymdhms(isecs[i] + 60 + int(rnd() * 86400), "T") + ".000Z"
            labels[i] = _dump([{"src": _LABEL_SRC, "uri": uris[i], "cid": cids[i], "val": v,
                                "cts": cts}
                               for v in rng.sample(_LABEL_VALS, 1 + (rnd() < 0.2))], rnd())
        return labels

    def _counts(self, n: int) -> tuple[list[int], list[int], list[int], list[int]]:
        """like, repost, reply and quote counts: skewed, from the precomputed pools."""
        rng = self.rng
        return (_draw(rng, self.likes, n), _draw(rng, self.reposts, n),
                _draw(rng, self.replies, n), _draw(rng, self.quotes, n))

    def chunk(self, t0: int, t1: int, n: int) -> list[_Row]:
        """n posts created in [t0, t1) seconds, in the order bskyarchive would store them."""
        stamps, dids, uris, cids = self._identities(t0, t1, n)
        texts = self._texts(n)
        created = self._created_at(stamps)
        indexed, archived, isecs = self._indexed_archived(stamps)
        is_reply, parent = self._replies(stamps, dids, uris)
        has_media, etype, edata, media = self._embeds(stamps, dids)
        labels = self._labels(uris, cids, isecs)
        likes, reposts, replies, quotes = self._counts(n)
        if self.media is not None:  # in time order, each file dated by its post's sync
            add = self.media.add
            for i, imgs in media:
                for cid, mime, ext, w, h, alt in imgs:
                    add(cid, uris[i], mime, ext, w, h, alt, archived[i])

        columns: list[list[Any]] = [
            uris, cids, dids, texts, created, indexed, has_media, likes, reposts, replies,
            quotes, is_reply, parent, etype, edata, labels, archived]
        if not self.v2:
            del columns[10]  # v1 has no quote_count
        rows = list(zip(*columns, strict=True))
        # Feeds are fetched newest first, 100 posts a page; pages of one chunk land in a
        # shuffled order (retries, resumed syncs), so rowid order is not time order.
        rows.reverse()
        pages = [rows[j : j + _PAGE] for j in range(0, n, _PAGE)]
        self.rng.shuffle(pages)
        return [row for page in pages for row in page]


def _chunk_order(rng: random.Random, nchunks: int) -> list[int]:
    """Chunk indices (0 = oldest) in the order they are written: newest first, with about
    one in ten swapped with a random other chunk, as when a later sync fills a gap."""
    order = list(range(nchunks - 1, -1, -1))
    for i in range(nchunks):
        if rng.random() < 0.1:
            j = rng.randrange(nchunks)
            order[i], order[j] = order[j], order[i]
    return order


def _check_writable_dir(final: str, directory: str) -> None:
    """The archive's directory exists and this user may create files in it, else one
    clear line (OutputError) before anything is written."""
    if not os.path.isdir(directory):
        what = "does not exist" if not os.path.lexists(directory) else "is not a directory"
        raise OutputError(f"cannot write {final}: directory {directory} {what}; create it "
                          "first or choose another path")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {final}: directory {directory} is not writable; "
                          "choose another path or fix its permissions")


def build_archive(
    path: str | os.PathLike[str],
    posts: int,
    *,
    seed: int = 0,
    media: bool = False,
    media_dir: str | os.PathLike[str] | None = None,
    schema_version: int = 2,
    dids: int = 1,
    on_progress: Callable[[int], None] | None = None,
) -> SynthStats:
    """Write a synthetic bskyarchive archive with `posts` posts at `path`.

    The archive is built under a fresh hidden name beside `path` and linked to `path` only
    when complete; on failure the temporary file is removed.  Nothing synth did not create is
    ever deleted, replaced or written into: an existing `path` is refused
    (`FileExistsError`), and so is an existing media directory; a missing or unwritable
    directory raises OutputError, before anything is written.  `schema_version` is 2 (with
    ``quote_count``) or 1.  `dids` accounts own the posts, the first about 90 % of them.
    With `media`, image files are written into a new directory `media_dir` (default:
    ``media`` beside the archive) and listed in the ``media`` table with paths relative to the
    archive's directory; a failed build removes that directory again.
    `on_progress` receives the number of posts written after every chunk.  The same arguments
    always produce the same file.
    """
    started = time.perf_counter()
    if posts < 0:
        raise ValueError(f"posts must be >= 0, not {posts}")
    if schema_version not in (1, 2):
        raise ValueError(f"schema_version must be 1 or 2, not {schema_version}")
    if not 1 <= dids <= 1000:
        raise ValueError(f"dids must be between 1 and 1000, not {dids}")
    final = os.fspath(path)
    if os.path.lexists(final):
        raise FileExistsError(f"refusing to overwrite {final}")
    archive_dir = os.path.dirname(os.path.abspath(final))
    _check_writable_dir(final, archive_dir)

    rng = random.Random(seed)
    writer = None
    if media:
        mdir = os.path.abspath(os.fspath(media_dir) if media_dir is not None
                               else os.path.join(archive_dir, "media"))
        rel = os.path.relpath(mdir, archive_dir).replace(os.sep, "/")
        # Media files draw from their own generator, so the posts table of a build does not
        # depend on whether media was asked for.
        writer = _MediaWriter(random.Random(f"skyexport-media-{seed}"), mdir,
                              "" if rel == "." else rel + "/")
    gen = _Generator(rng, dids, schema_version, writer)

    # A name of our own (O_EXCL): a file someone left at `path.tmp` is not ours to delete.
    tmp = exclusive_temp(final)
    con = None
    try:
        if writer is not None:
            os.mkdir(writer.media_dir)  # a new directory, or FileExistsError
            writer.created = True
        con = apsw.Connection(tmp)
        # Nothing needs to survive a crash half-way (the file is deleted), so journaling and
        # syncing are off while building; locking_mode saves re-checking the lock per chunk.
        # A small page cache is as fast as a big one here (the OS caches the file) and keeps
        # the build's memory flat; a sort too big for it spills to a temporary file.
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "locking_mode=EXCLUSIVE",
                       "cache_size=-4096", "temp_store=FILE", "threads=2"):
            con.execute("PRAGMA " + pragma).fetchall()  # execute() is lazy: step it
        insert = _INSERT_V2 if schema_version == 2 else _INSERT_V1
        with con:  # one transaction
            con.execute(_POSTS_V2 if schema_version == 2 else _POSTS_V1)
            con.execute(_MEDIA)
            con.execute(_FTS)
            nchunks = max(1, -(-posts // _CHUNK))
            span = (_T_END - _T_START) / nchunks
            done = 0
            for c in _chunk_order(rng, nchunks):
                n = posts // nchunks + (c < posts % nchunks)
                if n == 0:
                    continue
                rows = gen.chunk(_T_START + int(c * span), _T_START + int((c + 1) * span), n)
                con.executemany(insert, rows)
                if writer is not None and writer.rows:
                    con.executemany(_INSERT_MEDIA, writer.rows)
                    writer.rows.clear()
                done += n
                if on_progress is not None:
                    on_progress(done)
            # Indexes built once over the finished table (a sort) rather than maintained
            # row by row; the same for the full-text index, whose trigger comes last so
            # the schema is complete without it having fired.
            for sql in _INDEXES:
                con.execute(sql)
            con.execute("INSERT INTO posts_fts(posts_fts) VALUES('rebuild')")
            con.execute(_TRIGGER)
        # A normal rollback-journal database, so readers (read-only ones too) open it as usual.
        con.execute("PRAGMA locking_mode=NORMAL").fetchall()
        con.execute("PRAGMA journal_mode=DELETE").fetchall()
        con.close()
        try:
            # link() fails if `final` appeared meanwhile, where rename() would replace it.
            os.link(tmp, final)
        except FileExistsError:
            raise FileExistsError(f"refusing to overwrite {final}") from None
        except (AttributeError, OSError):  # no hard links here: check, then rename
            if os.path.lexists(final):
                raise FileExistsError(f"refusing to overwrite {final}") from None
            os.replace(tmp, final)
        else:
            os.remove(tmp)
    except BaseException:
        if con is not None:
            con.close()  # a no-op if already closed
        for leftover in (tmp, tmp + "-journal"):
            if os.path.lexists(leftover):
                os.remove(leftover)
        if writer is not None and writer.created:
            shutil.rmtree(writer.media_dir, ignore_errors=True)  # ours: made just now
        raise
    return SynthStats(final, posts, writer.files if writer is not None else 0,
                      time.perf_counter() - started)
