"""Handle -> DID -> DID document -> PDS, as atproto's identity spec says.

- A handle resolves through DNS (`TXT _atproto.HANDLE`, one `did=...` value) or, failing
  that, HTTPS (`https://HANDLE/.well-known/atproto-did`, the DID as the body).
- A DID resolves to its document: did:plc from the PLC directory, did:web from
  `https://HOST/.well-known/did.json` (host-level did:web only, as atproto allows).
- The PDS is the document's `#atproto_pds` service (`AtprotoPersonalDataServer`).
- A handle is accepted only if the document names it back (`alsoKnownAs: at://HANDLE`).

Every failure is a ResolveError naming the step.  Every answer is untrusted input.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

from .errors import FetchError, ResolveError
from .http import Client, clean

PLC_DIRECTORY = "https://plc.directory"
DNS_TIMEOUT_S = 5.0

#: Private seam for the tests: `nameserver` ((ip, port) of the DNS server to ask instead
#: of the system's), `plc` (the PLC directory's base URL).  Never set by the library.
_TEST: dict[str, Any] = {"nameserver": None, "plc": None}

_HANDLE = re.compile(r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
_DID = re.compile(r"^did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]$")
_PLC = re.compile(r"^did:plc:[a-z2-7]{24}$")


def is_did(text: str) -> bool:
    return len(text) <= 2048 and _DID.match(text) is not None


def normalize_handle(text: str) -> str:
    h = text.strip().removeprefix("@").lower()
    if len(h) > 253 or not _HANDLE.match(h):
        raise ResolveError(f"{clean(text)!r} is neither a handle (like alice.bsky.social) nor "
                           "a DID (did:plc:... or did:web:...)")
    return h


def handle_by_dns(handle: str) -> tuple[str | None, str]:
    """(the DID, or None with why) from `TXT _atproto.HANDLE`."""
    try:
        import dns.exception
        import dns.resolver
    except ImportError:
        return None, "dnspython is not installed (pip install dnspython)"

    if _TEST["nameserver"] is not None:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [_TEST["nameserver"][0]]
        resolver.port = _TEST["nameserver"][1]
    else:
        try:
            resolver = dns.resolver.Resolver()
        except dns.exception.DNSException as exc:
            return None, f"no DNS resolver configured ({exc})"
    resolver.lifetime = DNS_TIMEOUT_S
    try:
        answer = resolver.resolve(f"_atproto.{handle}", "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None, "no TXT record"
    except dns.exception.Timeout:
        return None, "timed out"
    except dns.exception.DNSException as exc:
        return None, clean(str(exc) or type(exc).__name__)
    dids = set()
    for rr in answer:
        text = b"".join(rr.strings).decode("utf-8", "replace")
        if text.startswith("did="):
            dids.add(text[4:].strip())
    if len(dids) > 1:
        return None, f"{len(dids)} different did= records (ambiguous)"
    if not dids:
        return None, "no did= TXT record"
    did = dids.pop()
    if not is_did(did):
        return None, f"the record holds {clean(did)!r}, not a DID"
    return did, ""


def handle_by_https(handle: str, client: Client) -> tuple[str | None, str]:
    url = f"https://{handle}/.well-known/atproto-did"
    try:
        body = client.get_bytes(url, None, f"GET {url}", cap=4096).decode("utf-8", "replace")
    except FetchError as exc:
        return None, str(exc).removeprefix(f"GET {url}: ")
    did = body.strip()
    if not is_did(did):
        return None, f"the answer is {clean(did)!r}, not a DID"
    return did, ""


def resolve_handle(handle: str, client: Client) -> str:
    did, dns_why = handle_by_dns(handle)
    if did is not None:
        return did
    did, https_why = handle_by_https(handle, client)
    if did is not None:
        return did
    raise ResolveError(f"handle {handle}: no DID found (DNS TXT _atproto.{handle}: "
                       f"{dns_why}; https://{handle}/.well-known/atproto-did: {https_why}); "
                       "check the handle, or pass the DID")


def document_url(did: str) -> str:
    if _PLC.match(did):
        return f"{_TEST['plc'] or PLC_DIRECTORY}/{did}"
    if did.startswith("did:web:"):
        host = did[len("did:web:"):]
        if ":" in host:
            raise ResolveError(f"{did}: did:web with a path is not used by atproto; only "
                               "did:web:HOST is")
        host = unquote(host)  # a port is written %3A
        if not re.match(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$", host):
            raise ResolveError(f"{did}: not a valid did:web host")
        return f"https://{host}/.well-known/did.json"
    raise ResolveError(f"{clean(did)}: not a DID method atproto uses (did:plc, did:web)")


def resolve_did(did: str, client: Client) -> dict[str, Any]:
    url = document_url(did)
    try:
        doc = client.get_json(url, None, f"DID document of {did} ({url})", cap=1 << 20)
    except ResolveError:
        raise
    except FetchError as exc:
        raise ResolveError(str(exc)) from None
    if not isinstance(doc, dict) or doc.get("id") != did:
        got = clean(str(doc.get("id") if isinstance(doc, dict) else None))
        raise ResolveError(f"DID document of {did} ({url}): it is not the document of "
                           f"{did} (its id is {got})")
    return doc


def pds_of(did: str, doc: dict[str, Any]) -> str:
    services = doc.get("service")
    for s in services if isinstance(services, list) else []:
        if not isinstance(s, dict) or s.get("id") not in ("#atproto_pds", f"{did}#atproto_pds"):
            continue
        endpoint = s.get("serviceEndpoint")
        if (s.get("type") == "AtprotoPersonalDataServer" and isinstance(endpoint, str)
                and re.match(r"^https?://[^/?#\s]+/?$", endpoint)):
            return endpoint.rstrip("/")
        raise ResolveError(f"DID document of {did}: its #atproto_pds service is not a "
                           f"PDS URL ({clean(str(endpoint))})")
    raise ResolveError(f"DID document of {did}: no #atproto_pds service (the account has no "
                       "PDS); pass --pds URL if you know it")


def handles_of(doc: dict[str, Any]) -> list[str]:
    aka = doc.get("alsoKnownAs")
    return [a[5:].lower() for a in (aka if isinstance(aka, list) else [])
            if isinstance(a, str) and a.startswith("at://")]


class Identity:
    """Who is backed up, and where from.  `pds_from`: "--pds" (given by the caller) or
    "did-document" (the DID document's #atproto_pds service); `handle_verified`: the
    handle was resolved to the DID and the DID's document names it back."""

    __slots__ = ("handle", "did", "pds", "pds_from", "handle_verified")

    def __init__(self, handle: str | None, did: str, pds: str, pds_from: str = "did-document",
                 handle_verified: bool = False) -> None:
        self.handle, self.did, self.pds = handle, did, pds
        self.pds_from, self.handle_verified = pds_from, handle_verified


def resolve(who: str, client: Client, pds: str | None = None) -> Identity:
    """HANDLE or DID -> Identity.  `pds` replaces only the PDS endpoint: a handle is still
    resolved to its DID and checked both ways against the DID's document (which must be
    reachable); a DID given with `pds` is taken as it is, its document not asked for."""
    who = who.strip()
    handle: str | None = None
    if who.startswith("did:"):
        if not is_did(who):
            raise ResolveError(f"{clean(who)!r} is not a valid DID")
        did = who
    else:
        handle = normalize_handle(who)
        did = resolve_handle(handle, client)
    if pds is not None and handle is None:
        return Identity(None, did, pds.rstrip("/"), "--pds")
    try:
        doc = resolve_did(did, client)
    except ResolveError as exc:
        if pds is None:
            raise
        raise ResolveError(f"{exc} (with --pds too, a handle is checked against its DID's "
                           "document; pass the DID instead of the handle to skip it)") \
            from None
    if handle is not None and handle not in handles_of(doc):
        named = ", ".join(handles_of(doc)) or "no handle"
        raise ResolveError(f"handle {handle} resolves to {did}, but that DID's document "
                           f"names {clean(named)}, not at://{handle}: the handle is not "
                           "verified; pass the DID to back it up anyway")
    if pds is not None:
        return Identity(handle, did, pds.rstrip("/"), "--pds", handle_verified=True)
    verified = handle is not None
    if handle is None:
        names = handles_of(doc)
        handle = names[0] if names else None
    return Identity(handle, did, pds_of(did, doc), handle_verified=verified)
