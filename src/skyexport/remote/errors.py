"""The errors of `skyexport fetch`: each an ExportError, so the command line prints it as
one line and exits 1."""

from __future__ import annotations

from ..errors import ExportError


class FetchError(ExportError):
    """A backup did not complete.  The previous backup (if any) is as it was, plus any blob
    downloaded whole and checked.  `status` and `xrpc`: the HTTP status and XRPC error
    name of a refused request (0 and "" otherwise)."""

    status: int = 0
    xrpc: str = ""


class ResolveError(FetchError):
    """A handle or DID could not be resolved to a PDS; the message names the step."""


class AccountError(FetchError):
    """The PDS answered that the account cannot be served (`xrpc` holds the XRPC error
    name: RepoNotFound, RepoDeactivated, RepoTakendown, RepoSuspended)."""

    def __init__(self, message: str, xrpc: str) -> None:
        super().__init__(message)
        self.xrpc = xrpc
        self.status = 400
