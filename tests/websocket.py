"""
WebSocket ends for tests of C{Upgrade} through the proxy (wsproto on both
sides, so the handshake and frames are real).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from wsproto import ConnectionType, WSConnection
from wsproto import events as ws

_DONE = Failure(ConnectionDone())


class WebSocketEcho(Protocol):
    """A WebSocket server that echoes text messages as C{echo: <text>}."""

    def __init__(self) -> None:
        self.ws = WSConnection(ConnectionType.SERVER)

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, ws.Request):
                self.transport.write(self.ws.send(ws.AcceptConnection()))
            elif isinstance(event, ws.TextMessage):
                self.transport.write(self.ws.send(ws.Message(data="echo: " + event.data)))
            elif isinstance(event, ws.CloseConnection):
                self.transport.write(self.ws.send(event.response()))
                self.transport.loseConnection()


class WebSocketClient(Protocol):
    """A WebSocket client that records the text messages it gets."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.accepted = False
        self.messages: list[str] = []
        self.isLost = False
        self.reason: Failure | None = None
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.ws.send(ws.Request(host=self.host, target="/ws")))

    def dataReceived(self, data: bytes) -> None:
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, ws.AcceptConnection):
                self.accepted = True
            elif isinstance(event, ws.TextMessage):
                self.messages.append(event.data)

    def sendText(self, text: str) -> None:
        assert self.transport is not None
        self.transport.write(self.ws.send(ws.Message(data=text)))

    def connectionLost(self, reason: Failure = _DONE) -> None:
        self.isLost = True
        self.reason = reason
        self.lost.callback(None)
