"""Errors of the client library.

Exception tree::

    TransferError              the transfer did not finish; ``code`` is a protocol ErrorCode value
    ├── RelayUnavailable       the relay could not be reached or refused the WebSocket
    ├── TransferRefused        the relay or the peer refused or ended the transfer (room not found, declined...)
    ├── DeadlineExceeded       the relay or a peer went silent: a client-side deadline passed (says what for)
    └── LocalFailure           something on this machine: unreadable file, unsafe path, disk full, file exists
        └── Unreadable         (clients.offer) files or folders to send cannot be read; ``paths`` names them
"""

from __future__ import annotations

from relay.protocol import ErrorCode, escape_text


class TransferError(Exception):
    """A transfer that did not finish; the message is one line a person can act on."""

    def __init__(self, code: ErrorCode | str, message: str) -> None:
        super().__init__(escape_text(message))
        self.code = ErrorCode(code) if code in ErrorCode.__members__.values() else ErrorCode.INTERNAL_ERROR


class RelayUnavailable(TransferError):
    pass


class TransferRefused(TransferError):
    pass


class LocalFailure(TransferError):
    pass


class DeadlineExceeded(TransferError):
    """A wait had a bound and it passed; the message says what was awaited and for how long."""
