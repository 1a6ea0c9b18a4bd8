"""
Pins every Twisted internal that C{twisted_tunnel.net._twisted} reads or
sets, against the Twisted installed: a release that renames one fails here.
"""

from __future__ import annotations

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import reactor as _reactor
from twisted.internet.abstract import FileDescriptor
from twisted.internet.endpoints import TCP4ServerEndpoint, serverFromString
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from tests.services import listen
from twisted_tunnel.net._twisted import (
    innerProducer,
    listeningPort,
    queuedBytes,
    raiseListenErrors,
    sendBufferIdle,
)


def _descriptor() -> FileDescriptor:
    descriptor = FileDescriptor(reactor=MemoryReactor())  # type: ignore[no-untyped-call]
    descriptor.connected = True
    return descriptor


class SendBufferTests(SynchronousTestCase):
    def test_queuedBytes(self) -> None:
        """A FileDescriptor's unsent bytes: C{dataBuffer} from C{offset}, and C{_tempDataLen}."""
        descriptor = _descriptor()
        descriptor.write(b"x" * 1000)
        self.assertEqual(queuedBytes(descriptor), 1000)
        descriptor.dataBuffer, descriptor.offset = b"y" * 500, 200
        self.assertEqual(queuedBytes(descriptor), 300 + 1000)
        self.assertEqual(queuedBytes(StringTransport()), 0)

    def test_sendBufferIdle(self) -> None:
        """Idle when connected, open for writing and with nothing queued."""
        descriptor = _descriptor()
        self.assertTrue(sendBufferIdle(descriptor))
        descriptor.write(b"x")
        self.assertFalse(sendBufferIdle(descriptor))
        descriptor = _descriptor()
        descriptor.loseWriteConnection()
        self.assertFalse(sendBufferIdle(descriptor))


@implementer(IPushProducer)
class _Producer:
    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class TLSMembraneTests(SynchronousTestCase):
    def test_innerProducer(self) -> None:
        """TLS registers a membrane around a producer, which keeps it as C{_producer}."""
        factory = TLSMemoryBIOFactory(CertificateOptions(), False, Factory.forProtocol(Protocol))
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        producer = _Producer()
        protocol.registerProducer(producer, True)
        self.assertIsNot(transport.producer, producer)
        self.assertIs(innerProducer(transport.producer), producer)
        self.assertIsNone(innerProducer(producer))


class ListenErrorTests(TestCase):
    def test_raiseListenErrors(self) -> None:
        """With it, a port in use fails C{startService} instead of being only logged."""
        port = listen(self, Factory.forProtocol(Protocol))
        service = StreamServerEndpointService(
            TCP4ServerEndpoint(_reactor, port, interface="127.0.0.1"),
            Factory.forProtocol(Protocol),
        )
        raiseListenErrors(service)
        with self.assertRaises(Exception) as caught:
            service.startService()
        self.assertIn("Address already in use", str(caught.exception))

    def test_listeningPort(self) -> None:
        """A TCP server endpoint knows its port before it listens; a UNIX one has none."""
        self.assertEqual(
            listeningPort(serverFromString(_reactor, "tcp:10264:interface=127.0.0.1")), 10264
        )
        self.assertEqual(listeningPort(TCP4ServerEndpoint(_reactor, 10263)), 10263)
        self.assertIsNone(listeningPort(serverFromString(_reactor, "unix:/tmp/x.sock")))
