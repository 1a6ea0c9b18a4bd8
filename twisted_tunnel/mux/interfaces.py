# -*- test-case-name: tests.mux.test_mux -*-
"""
What the multiplexer asks of the rest of the package: the role of each end
(L{ITunnelHandler}), the meter (L{ITunnelMeter}), a stream's address, and a
refusal; and what a stream asks of its tunnel (L{IStreamCarrier}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
)
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from .. import wire
from ..wire import ErrorCode

if TYPE_CHECKING:
    from .stream import Stream
    from .tunnel import Tunnel


@implementer(IAddress)
@frozen
class TunnelAddress:
    """
    One end of a stream: which node's tunnel carries it and which host and
    port the edge side dials (or, for the local end, the stream's id).
    """

    node: str
    host: str
    port: int


class Refused(Exception):
    """
    Raised by L{ITunnelHandler.helloReceived} to turn a peer away; the
    code and text go to the peer in GOAWAY and to our log.
    """

    def __init__(self, code: ErrorCode, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


class ITunnelHandler(Interface):
    """
    The role-specific half of a tunnel: the server's and the agent's.
    """

    def helloInfo() -> dict[str, Any]:
        """
        Identity and facts to announce in our HELLO (settings are added).
        """

    def helloReceived(tunnel: Tunnel, info: dict[str, Any]) -> None:
        """
        The peer's HELLO arrived and the version is agreed.

        @raise Refused: to end the connection with the given reason.
        """

    def openRequested(tunnel: Tunnel, address: TunnelAddress) -> Deferred[IProtocol]:
        """
        The peer asks us to connect a new stream to C{address.host}:C{port}.

        @return: fires with the protocol that will own the stream, or fails
            with L{StreamOpenFailed}.  It is cancelled if the peer gives up.
        """

    def tunnelDraining(tunnel: Tunnel) -> None:
        """The peer sent a graceful GOAWAY: open no new streams on this tunnel."""

    def tunnelLost(tunnel: Tunnel, reason: Failure) -> None:
        """The connection is gone; every stream has been told."""


class IEarlyStreamFactory(Interface):
    """
    A mark on a protocol factory (an C{IProtocolFactory}) whose protocols
    take their stream at once, before the far side has answered the open:
    L{Tunnel.openStream} builds the
    protocol and connects it as soon as OPEN is sent, so that what it
    writes first travels right behind the OPEN (protocol version 2; with a
    version 1 peer it waits in the stream for OPEN_OK), instead of a round
    trip later.

    Why a mark on the factory rather than a flag of C{openStream}: whether
    a protocol may be connected before the open succeeds is a property of
    the protocol (it must take a C{connectionLost} whose reason is the
    open's failure), and the factory travels unchanged through an
    C{IStreamClientEndpoint.connect} (the server's C{NodeEndpoint}) that
    knows nothing of it.

    If the open fails, the protocol's C{connectionLost} gets the failure
    first (L{StreamOpenFailed<twisted_tunnel.errors.StreamOpenFailed>}
    with the agent's reason and text, L{StreamOpenTimeout}, or
    L{TunnelClosed}: a L{TunnelError<twisted_tunnel.errors.TunnelError>},
    never an ordinary connection error), and then the Deferred
    C{openStream} returned fails with the same error; so a front door
    can still answer its client cleanly (a 502 with the reason) after it
    already sent the client's first bytes.  The Deferred fires with the
    protocol at OPEN_OK, as for any open.
    """


class ITunnelMeter(Interface):
    """
    What metrics need to hear from a tunnel: the few events that counting
    on the fly cannot see.  Streams count their own bytes; a meter reads
    them when scraped, and is told when a stream is gone so that its
    counts are kept.
    """

    def tunnelStarted(tunnel: Tunnel) -> None:
        """C{tunnel} is connected (HELLO not done yet)."""

    def streamRetired(tunnel: Tunnel, stream: Stream) -> None:
        """C{stream} is gone; its byte counts are final."""

    def tunnelEnded(tunnel: Tunnel) -> None:
        """C{tunnel}'s connection is gone, and so are all its streams."""

    def keepaliveTimedOut(tunnel: Tunnel) -> None:
        """C{tunnel} was declared dead: nothing heard for too long."""

    def floodDetected(tunnel: Tunnel, reason: str) -> None:
        """
        C{tunnel} is being closed because its peer flooded it: C{reason} is
        C{forbidden_opens} (OPENs to a side that accepts none) or
        C{control_backlog} (requests for replies that it does not read).
        """


class IStreamCarrier(Interface):
    """
    What a L{Stream} asks of the connection it rides on (L{Tunnel} provides
    it).  A tunnel hands its streams their frames through the stream's
    methods for the tunnel (C{dataArrived}, C{creditArrived}, ...); a stream
    answers through these.  Neither reads the other's fields.
    """

    nodeName = Attribute("Which edge node the connection belongs to (for addresses).")
    log = Attribute("The Logger that a stream's protocol errors are logged to.")
    settings = Attribute(
        "Our L{Settings}: C{settings.window} is what each stream grants the peer."
    )
    sendMaxFrame = Attribute("The largest DATA payload the peer accepts in one frame.")
    finalClose = Attribute(
        "Whether a CLOSE sent after the peer's EOF may be FINAL (protocol version 2): the peer "
        "then forgets the stream without answering."
    )

    def maySend() -> bool:
        """
        Whether the connection takes DATA now (it is not pushing back, nor
        closing).
        """

    def wantsToSend(stream: Stream) -> None:
        """
        C{stream} has DATA and credit but L{maySend} said no: call its
        C{resumeSending} when the connection has room, in turn with the
        others.
        """

    def sendData(streamId: int, data: bytes) -> None:
        """Send one DATA frame (C{data} fits L{sendMaxFrame} and the credit)."""

    def sendFrame(frame: wire.Frame) -> None:
        """Send a frame of the stream's own (EOF, CLOSE, RESET, WINDOW)."""

    def streamEnded(stream: Stream) -> None:
        """
        C{stream} has ended one of its halves: forget its id once both
        have.
        """
