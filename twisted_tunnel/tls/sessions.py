# -*- test-case-name: tests.tls.test_upstream -*-
"""
TLS client sessions kept for resumption, by destination: bounded in count
and in age, and dropped as a whole when the credentials they were made
with are replaced.

A resumed handshake proves that the server holds the session's secret, and
nothing else: it does not check the server's certificate again, and the
server does not see our certificate again.  So a session may only be
offered to exactly what its first, full handshake verified (the key says
what that was), only for a short while after that verification
(L{SESSION_MAX_AGE}), and never after the trust or our own certificate
changed (the cache is dropped with the credentials, L{ClientSessions.retire}).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

from attrs import frozen
from OpenSSL.SSL import Session

#: How long (seconds) after the full handshake that verified a server its
#: sessions may be resumed, through any number of resumptions.  OpenSSL's
#: own default session lifetime; Go's servers accept tickets for up to 7
#: days, which is far too long to go on trusting a certificate check: a
#: kubelet whose serving certificate expired or was replaced must be
#: checked again within minutes, and five minutes already turns a kubelet
#: asked every few seconds (metrics, probes, logs) from a full handshake
#: per connection into one per five minutes.
SESSION_MAX_AGE = 300.0

#: How many destinations' sessions are kept (the least recently stored go
#: first).  A session holds the server's certificate chain, a few KiB.
SESSION_ENTRIES = 4096


@frozen
class Kept:
    """
    A session, and when the full handshake it descends from verified the
    server (on the cache's clock): a resumption inherits it, it never
    refreshes it.
    """

    session: Session
    verifiedAt: float


class ClientSessions:
    """
    The resumable sessions of one set of TLS client credentials, at most
    one per destination (the newest), at most C{maxEntries} of them, none
    older than C{maxAge} seconds since its server was verified.

    @param clock: monotonic seconds (for tests).
    """

    def __init__(
        self,
        *,
        maxEntries: int = SESSION_ENTRIES,
        maxAge: float = SESSION_MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.maxEntries = maxEntries
        self.maxAge = maxAge
        self.clock = clock
        self.retired = False
        self._kept: OrderedDict[Hashable, Kept] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, key: Hashable) -> Kept | None:
        """The session to offer to C{key}, if one is young enough (an old one is dropped)."""
        kept = self._kept.get(key)
        if kept is None:
            return None
        if self.clock() - kept.verifiedAt >= self.maxAge:
            del self._kept[key]
            return None
        return kept

    def put(self, key: Hashable, session: Session, verifiedAt: float) -> None:
        """
        Keep C{session} for C{key}, in place of any older one, unless it is
        already too old or these credentials are retired.
        """
        if self.retired or self.clock() - verifiedAt >= self.maxAge:
            self._kept.pop(key, None)
            return
        self._kept[key] = Kept(session, verifiedAt)
        self._kept.move_to_end(key)
        while len(self._kept) > self.maxEntries:
            self._kept.popitem(last=False)

    def discard(self, key: Hashable, kept: Kept) -> None:
        """Forget C{kept} for C{key} (a handshake offering it failed), unless replaced since."""
        if self._kept.get(key) is kept:
            del self._kept[key]

    def retire(self) -> None:
        """
        The credentials were replaced: drop every session, and keep none
        from now on (connections still being set up with the old
        credentials must not refill the cache).
        """
        self.retired = True
        self._kept.clear()
