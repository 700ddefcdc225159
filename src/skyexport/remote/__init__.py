"""`skyexport fetch`: back up an account from the network - its repository (`repo.car`) and
its blobs - into a backup directory, verified, resumable and polite to the server.

    resolve.py  handle -> DID -> DID document -> PDS (DNS TXT or HTTPS; did:plc, did:web)
    http.py     the HTTP policy: timeouts, retries, 429, redirects, caps, verified TLS
    repo.py     com.atproto.sync.getRepo streamed to a temporary file, checked, renamed
    blobs.py    listBlobs + getBlob, a few at once, each checked against its CID
    backup.py   the backup directory, fetch.json, `fetch()` (read back by sources/backup.py)

The command, `skyexport fetch`, is cli/fetch.py (cli/ imports remote/, never the other
way).  Nothing here is imported by `export`: dnspython loads only when a handle is
resolved.
"""
