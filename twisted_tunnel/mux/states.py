# -*- test-case-name: tests.mux.test_mux_states -*-
"""
The states of the multiplexer, and the one table of their legal moves
(L{MOVES}): each half of a stream (L{Sending}, L{Receiving}), what a
stream's protocol has been told (L{Delivery}), and a connection's life
(L{ConnectionState}).  L{Stream} and L{Tunnel} change their states in one
method each, which asserts the move against L{MOVES}.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum


class State(Enum):
    """
    A state, hashed by identity: members are tested per frame, and an
    Enum's own hash is a Python-level call on its name (~90 ns), identity
    a C one.  Members are singletons, so identity is their equality too.
    """

    __hash__ = object.__hash__


class Sending(State):
    """
    Our half of a stream: what we have told the peer, or will tell it as
    soon as the backlog ahead of it is out.

    An EOF or CLOSE asked for while DATA waits for credit is I{queued}: it
    goes out behind that DATA, never ahead of it.
    """

    #: DATA may be written
    OPEN = "open"
    #: C{loseWriteConnection}: EOF goes out after the backlog
    EOF_QUEUED = "EOF queued"
    #: C{loseWriteConnection}, then C{loseConnection}: EOF, then CLOSE
    EOF_CLOSE_QUEUED = "EOF and CLOSE queued"
    #: C{loseConnection}: CLOSE goes out after the backlog
    CLOSE_QUEUED = "CLOSE queued"
    #: half-closed: we write no more and said so; the peer may still write
    EOF_SENT = "EOF sent"
    #: C{abortWhenSent}: RESET goes out after the backlog (a relay passing
    #: on a reset that came after data)
    RESET_QUEUED = "RESET queued"
    #: CLOSE or RESET sent (or the tunnel is gone): nothing more goes out
    ENDED = "ended"


class Receiving(State):
    """The peer's half of a stream: what it has told us."""

    #: DATA may arrive
    OPEN = "open"
    #: the peer sent EOF: it writes no more, but may still read
    EOF = "EOF received"
    #: the peer sent CLOSE or RESET (or the tunnel is gone)
    ENDED = "ended"


class Delivery(State):
    """What the stream's protocol has been told of the stream's end."""

    #: nothing yet: data goes to C{dataReceived}
    OPEN = "open"
    #: C{readConnectionLost}, or the stream's own close, for the peer's EOF
    EOF = "EOF delivered"
    #: C{connectionLost}: given, or due the moment the protocol returns
    LOST = "lost"


class ConnectionState(State):
    """
    Where a tunnel's connection is in its life.  (Whether HELLO is done is
    L{Tunnel.version}: a connection may drain or close before it.)
    """

    #: streams come and go
    OPEN = "open"
    #: a GOAWAY SHUTTING_DOWN went one way or the other: no new streams
    #: from the side that sent it; the connection closes once idle
    DRAINING = "draining"
    #: this end closes it: GOAWAY sent, the transport is going
    CLOSING = "closing"
    #: closing after an error (ours or the peer's): nothing more is read
    FAILED = "failed"
    #: gone, after this end closed it
    CLOSED = "closed"
    #: gone, without this end closing it (the peer or the network did)
    LOST = "lost"


# Every member as a module name too: looking a member up on its Enum class
# goes through a descriptor (~70 ns on CPython 3.11), a module global takes
# ~8 ns, and streams and tunnels test their states per frame.
SENDING_OPEN = Sending.OPEN
SENDING_EOF_QUEUED = Sending.EOF_QUEUED
SENDING_EOF_CLOSE_QUEUED = Sending.EOF_CLOSE_QUEUED
SENDING_CLOSE_QUEUED = Sending.CLOSE_QUEUED
SENDING_EOF_SENT = Sending.EOF_SENT
SENDING_RESET_QUEUED = Sending.RESET_QUEUED
SENDING_ENDED = Sending.ENDED
RECEIVING_OPEN = Receiving.OPEN
RECEIVING_EOF = Receiving.EOF
RECEIVING_ENDED = Receiving.ENDED
DELIVERY_OPEN = Delivery.OPEN
DELIVERY_EOF = Delivery.EOF
DELIVERY_LOST = Delivery.LOST
CONNECTION_OPEN = ConnectionState.OPEN
CONNECTION_DRAINING = ConnectionState.DRAINING
CONNECTION_CLOSING = ConnectionState.CLOSING
CONNECTION_FAILED = ConnectionState.FAILED
CONNECTION_CLOSED = ConnectionState.CLOSED
CONNECTION_LOST = ConnectionState.LOST


#: The legal moves of every state: what it may become next.
MOVES: Mapping[State, frozenset[State]] = {
    Sending.OPEN: frozenset(
        {Sending.EOF_QUEUED, Sending.CLOSE_QUEUED, Sending.RESET_QUEUED, Sending.ENDED}
    ),
    Sending.EOF_QUEUED: frozenset(
        {Sending.EOF_SENT, Sending.EOF_CLOSE_QUEUED, Sending.RESET_QUEUED, Sending.ENDED}
    ),
    Sending.EOF_CLOSE_QUEUED: frozenset(
        {Sending.CLOSE_QUEUED, Sending.RESET_QUEUED, Sending.ENDED}
    ),
    Sending.CLOSE_QUEUED: frozenset({Sending.RESET_QUEUED, Sending.ENDED}),
    Sending.EOF_SENT: frozenset({Sending.CLOSE_QUEUED, Sending.ENDED}),
    Sending.RESET_QUEUED: frozenset({Sending.ENDED}),
    Sending.ENDED: frozenset(),
    Receiving.OPEN: frozenset({Receiving.EOF, Receiving.ENDED}),
    Receiving.EOF: frozenset({Receiving.ENDED}),
    Receiving.ENDED: frozenset(),
    Delivery.OPEN: frozenset({Delivery.EOF, Delivery.LOST}),
    Delivery.EOF: frozenset({Delivery.LOST}),
    Delivery.LOST: frozenset(),
    ConnectionState.OPEN: frozenset(
        {
            ConnectionState.DRAINING,
            ConnectionState.CLOSING,
            ConnectionState.FAILED,
            ConnectionState.LOST,
        }
    ),
    ConnectionState.DRAINING: frozenset(
        {ConnectionState.CLOSING, ConnectionState.FAILED, ConnectionState.LOST}
    ),
    ConnectionState.CLOSING: frozenset({ConnectionState.FAILED, ConnectionState.CLOSED}),
    ConnectionState.FAILED: frozenset({ConnectionState.CLOSED}),
    ConnectionState.CLOSED: frozenset(),
    ConnectionState.LOST: frozenset(),
}
