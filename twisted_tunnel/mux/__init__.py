# -*- test-case-name: tests.mux.test_mux -*-
"""
The multiplexer: many streams over one connection, each a real transport.

L{Tunnel} is the protocol that runs on the (TLS) connection between an
agent and a server.  It speaks the frames of L{twisted_tunnel.wire} and
gives each stream to an ordinary Twisted protocol through a L{Stream}, which
provides C{ITransport}, C{IConsumer} and C{IPushProducer} like a TCP
connection does.

Flow control follows the HTTP/2 implementation in C{twisted.web._http2}:

 - a stream whose send credit is exhausted keeps what it was given in its
   own backlog and pauses I{only its own} producer;
 - inbound data for a stream whose consumer paused it is kept in that
   stream's buffer, and credit goes back to the peer only once the
   consumer has actually taken the bytes, so the peer can never make us
   hold more than one window per stream;
 - the tunnel itself is the producer registered with the connection: when
   the connection pushes back, every stream keeps its data and the backlog
   drains in turn when the connection resumes.

The role-specific parts (what to say in HELLO, who may connect, how to
dial) live in an L{ITunnelHandler}, so the same code runs on both ends.

The modules: L{settings} (HELLO settings, keepalive timing, the agent's
stream budget), L{interfaces} (what the multiplexer asks of its users),
L{states} (the states of streams and connections, and their legal
moves), L{stream} (L{Stream}), L{tunnel} (L{Tunnel}), L{keepalive}
(L{KeepaliveSweep}) and L{drain} (L{drainTunnels}); their public names
are all here.
"""

from .drain import drainTunnels
from .interfaces import (
    IEarlyStreamFactory,
    IStreamCarrier,
    ITunnelHandler,
    ITunnelMeter,
    Refused,
    TunnelAddress,
)
from .keepalive import KeepaliveSweep
from .settings import (
    BUDGET_LOG_INTERVAL,
    FD_MARGIN,
    MAX_SERVER_ID,
    MAX_SERVERS,
    Keepalive,
    Settings,
    StreamBudget,
    openFileLimit,
    validServerId,
)
from .states import MOVES, ConnectionState, Delivery, Receiving, Sending
from .stream import Stream
from .tunnel import (
    CLOSE_TIMEOUT,
    FORBIDDEN_OPENS_PERIOD,
    GRACEFUL,
    MAX_FORBIDDEN_OPENS,
    MAX_PENDING_CONTROL,
    PAUSE_READING_AFTER,
    ROUTINE_REFUSALS,
    Tunnel,
)

__all__ = [
    "BUDGET_LOG_INTERVAL",
    "CLOSE_TIMEOUT",
    "ConnectionState",
    "Delivery",
    "FD_MARGIN",
    "FORBIDDEN_OPENS_PERIOD",
    "GRACEFUL",
    "IEarlyStreamFactory",
    "IStreamCarrier",
    "ITunnelHandler",
    "ITunnelMeter",
    "Keepalive",
    "KeepaliveSweep",
    "MAX_FORBIDDEN_OPENS",
    "MAX_PENDING_CONTROL",
    "MAX_SERVERS",
    "MAX_SERVER_ID",
    "MOVES",
    "PAUSE_READING_AFTER",
    "ROUTINE_REFUSALS",
    "Receiving",
    "Refused",
    "Sending",
    "Settings",
    "Stream",
    "StreamBudget",
    "Tunnel",
    "TunnelAddress",
    "drainTunnels",
    "openFileLimit",
    "validServerId",
]
