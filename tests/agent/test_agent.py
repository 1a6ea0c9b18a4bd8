# -*- test-case-name: tests.agent.test_agent -*-
"""
Tests for L{twisted_tunnel.agent}: what the agent may dial (L{Allowlist}),
how long it waits between attempts (L{backoffPolicy}), its reconnect loop
(L{Reconnector}) on a L{Clock} with tunnels joined in memory
(L{tests.memory.TunnelPair}), how a failed dial is reported
(L{_dialFailure}), and L{TunnelAgent.dial} on a L{MemoryReactorClock}.

No socket and no global reactor: everything here is synchronous.
"""

from __future__ import annotations

import ipaddress
import random
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import (
    ConnectBindError,
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
    DNSLookupError,
    NoRouteError,
    TCPTimedOutError,
    TimeoutError,
)
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.memory import RecordingHandler, TunnelPair, frames, framesOfType
from twisted_tunnel import wire
from twisted_tunnel.agent import (
    Allowlist,
    Reconnector,
    TunnelAgent,
    _dialFailure,
    backoffPolicy,
)
from twisted_tunnel.errors import StreamOpenFailed, TunnelClosed
from twisted_tunnel.mux import Refused, Tunnel, TunnelAddress
from twisted_tunnel.net.relay import RelayProtocol
from twisted_tunnel.wire import ErrorCode, OpenFailReason

ip = ipaddress.ip_address


class AllowlistTests(SynchronousTestCase):
    """The agent dials its node's IPs and loopback, and nothing else unless told."""

    def test_default(self) -> None:
        allow = Allowlist(["192.0.2.10", "fd00::10"])
        for permitted in ["192.0.2.10", "fd00::10", "127.0.0.1", "::1"]:
            self.assertTrue(allow.permits(ip(permitted)), permitted)
        for refused in [
            "127.0.0.2",
            "10.1.2.3",
            "192.0.2.1",
            "192.0.2.11",
            "fd00::11",
            "0.0.0.0",
            "::",
            "169.254.169.254",
            "::ffff:10.1.2.3",  # a mapped address is no way around the list
            "::ffff:192.0.2.1",
        ]:
            self.assertFalse(allow.permits(ip(refused)), refused)

    def test_noNodeIPs(self) -> None:
        """An agent that announces no IP may still dial loopback."""
        allow = Allowlist([])
        self.assertTrue(allow.permits(ip("127.0.0.1")))
        self.assertTrue(allow.permits(ip("::1")))
        self.assertFalse(allow.permits(ip("192.0.2.1")))

    def test_extraNetworks(self) -> None:
        """C{--allow} networks, IPv4 and IPv6, with host bits or without."""
        allow = Allowlist(["192.0.2.10"], ["10.0.0.0/8", "198.51.100.7/24", "fd00:1::/64"])
        for permitted in ["10.0.0.1", "10.255.255.255", "198.51.100.200", "fd00:1::5"]:
            self.assertTrue(allow.permits(ip(permitted)), permitted)
        for refused in ["11.0.0.1", "198.51.101.1", "fd00:2::1", "::ffff:10.0.0.1"]:
            self.assertFalse(allow.permits(ip(refused)), refused)

    def test_singleAddress(self) -> None:
        allow = Allowlist([], ["203.0.113.5"])
        self.assertTrue(allow.permits(ip("203.0.113.5")))
        self.assertFalse(allow.permits(ip("203.0.113.6")))

    def test_describe(self) -> None:
        described = Allowlist(["192.0.2.10"], ["10.0.0.0/8"]).describe()
        for part in ["192.0.2.10", "127.0.0.1", "::1", "10.0.0.0/8"]:
            self.assertIn(part, described)


class BackoffPolicyTests(SynchronousTestCase):
    """Exponential backoff with equal jitter."""

    def test_bounds(self) -> None:
        """Attempt M{n} waits between half and all of M{min(max, initial * 2^n)}."""
        low = backoffPolicy(initialDelay=1.0, maxDelay=30.0, jitter=lambda: 0.0)
        high = backoffPolicy(initialDelay=1.0, maxDelay=30.0, jitter=lambda: 1.0)
        for attempt, ceiling in enumerate([1, 2, 4, 8, 16, 30, 30, 30]):
            self.assertEqual(low(attempt), ceiling / 2, attempt)
            self.assertEqual(high(attempt), ceiling, attempt)

    def test_fixedJitter(self) -> None:
        policy = backoffPolicy(initialDelay=0.5, maxDelay=60.0, factor=3.0, jitter=lambda: 0.25)
        # ceiling 0.5 * 3^n; delay = ceiling * (1/2 + 0.25/2)
        for attempt in range(5):
            self.assertAlmostEqual(policy(attempt), 0.5 * 3**attempt * 0.625)
        self.assertEqual(policy(10), 60.0 * 0.625)

    def test_growsExponentially(self) -> None:
        policy = backoffPolicy(initialDelay=0.1, maxDelay=1000.0, jitter=lambda: 0.5)
        for attempt in range(12):
            self.assertAlmostEqual(policy(attempt + 1), 2 * policy(attempt))

    def test_neverAboveMaxDelay(self) -> None:
        policy = backoffPolicy(maxDelay=30.0, jitter=lambda: 1.0)
        for attempt in [5, 6, 64, 65, 1000, 10**9]:
            self.assertEqual(policy(attempt), 30.0, attempt)

    def test_keepsAtLeastHalf(self) -> None:
        """Whatever the jitter, a delay is never less than half its ceiling."""
        rng = random.Random(1234)
        policy = backoffPolicy(initialDelay=1.0, maxDelay=30.0, jitter=rng.random)
        for attempt in list(range(10)) * 50:
            ceiling = min(2.0**attempt, 30.0)
            delay = policy(attempt)
            self.assertTrue(ceiling / 2 <= delay <= ceiling, (attempt, delay))

    def test_defaultJitterSpreads(self) -> None:
        """The default jitter is random: a fleet does not come back in step."""
        policy = backoffPolicy()
        delays = {policy(3) for _ in range(20)}
        self.assertGreater(len(delays), 1)
        self.assertTrue(all(4.0 <= d <= 8.0 for d in delays), delays)


# -- the reconnect loop --------------------------------------------------------------


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """
    An endpoint whose attempts the test completes: C{connect} returns a
    L{Deferred} kept in C{attempts}; L{answer} connects a real L{Tunnel}
    from the caller's factory to a server-side L{Tunnel} through a
    L{TunnelPair}, L{fail} fails the attempt.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.attempts: list[tuple[IProtocolFactory, Deferred[IProtocol]]] = []
        self.cancelled = 0

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        def cancel(d: Deferred[IProtocol]) -> None:
            self.cancelled += 1

        d: Deferred[IProtocol] = Deferred(cancel)
        self.attempts.append((protocolFactory, d))
        return d

    def answer(self, serverHandler: RecordingHandler | None = None) -> TunnelPair:
        """Connect the last attempt through an in-memory pair and pump it."""
        factory, d = self.attempts[-1]
        pair = TunnelPair(serverHandler=serverHandler, clock=self.clock, connect=False)
        client = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 10262))
        assert isinstance(client, Tunnel)
        pair.client = client
        pair.connect()
        d.callback(client)
        pair.pump()
        return pair

    def answerWithoutHello(self) -> tuple[Tunnel, StringTransport]:
        """
        Connect the last attempt to a bare transport: the connection is
        made, but no HELLO from the server comes (unless the test sends it).
        """
        factory, d = self.attempts[-1]
        tunnel = factory.buildProtocol(None)
        assert isinstance(tunnel, Tunnel)
        transport = StringTransport()
        tunnel.makeConnection(transport)
        d.callback(tunnel)
        return tunnel, transport

    def fail(self, error: Exception) -> None:
        self.attempts[-1][1].errback(error)


class AgentTunnels(Factory):
    """Builds agent-side tunnels with a recording handler."""

    noisy = False

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def buildProtocol(self, addr: Any) -> Tunnel:
        return Tunnel(
            RecordingHandler({"node": "edge-1"}), self.clock, isClient=True, nodeName="edge-1"
        )


class RecordingPolicy:
    """A retry policy with known delays (10 s, 20 s, 30 s...) that remembers what it was asked."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def __call__(self, failures: int) -> float:
        self.asked.append(failures)
        return 10.0 * (failures + 1)


def refusing() -> RecordingHandler:
    """A server side that turns the agent away after its HELLO."""
    handler = RecordingHandler({"server_id": "srv-a"})
    handler.refuse = Refused(ErrorCode.UNAUTHORIZED, "no such node")
    return handler


class ReconnectorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = FakeEndpoint(self.clock)
        self.policy = RecordingPolicy()
        self.reconnector = Reconnector(
            self.clock,
            self.endpoint,
            AgentTunnels(self.clock),
            self.policy,
            "127.0.0.1:10262",
        )

    def assertNoTimers(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def retryDelay(self) -> float:
        """The one pending call: the retry; how long until it runs."""
        (call,) = self.clock.getDelayedCalls()
        return call.getTime() - self.clock.seconds()

    def stopEstablished(self, pair: TunnelPair) -> None:
        """Stop the reconnector and check the tunnel is closed with GOAWAY SHUTTING_DOWN."""
        stopped = self.reconnector.stop()
        self.assertNoResult(stopped)
        goaways = framesOfType(frames(pair.clientTransport), wire.GoAway)
        self.assertEqual([g.code for g in goaways], [ErrorCode.SHUTTING_DOWN])
        self.assertTrue(pair.clientTransport.disconnecting)
        pair.lose(Failure(ConnectionDone()))
        self.assertIsNone(self.successResultOf(stopped))
        self.assertIsNone(self.reconnector.tunnel)
        self.assertNoTimers()

    def test_fakeEndpoint(self) -> None:
        self.assertTrue(verifyObject(IStreamClientEndpoint, self.endpoint))

    def test_connects(self) -> None:
        """Start dials at once; the tunnel counts as up once HELLO is done both ways."""
        connected = self.reconnector.whenConnected()
        self.reconnector.start()
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.assertNoResult(connected)
        pair = self.endpoint.answer()
        self.assertIs(self.successResultOf(connected), pair.client)
        self.assertIs(self.reconnector.tunnel, pair.client)
        self.assertIs(self.successResultOf(self.reconnector.whenConnected()), pair.client)
        self.assertEqual(pair.serverHandler.hellos[0]["node"], "edge-1")
        self.stopEstablished(pair)

    def test_helloPending(self) -> None:
        """Connected but no HELLO from the server yet: not connected."""
        connected = self.reconnector.whenConnected()
        self.reconnector.start()
        tunnel, transport = self.endpoint.answerWithoutHello()
        self.assertNoResult(connected)
        self.assertIsNone(self.reconnector.tunnel)
        # the server's HELLO, straight off the wire
        tunnel.dataReceived(wire.Hello(1, 1, {"server_id": "srv-b"}).encode())
        self.assertIs(self.successResultOf(connected), tunnel)
        tunnel.close(ErrorCode.NO_ERROR, "done")
        tunnel.connectionLost(Failure(ConnectionDone()))
        self.reconnector.stop()
        self.assertNoTimers()

    def test_successResetsFailures(self) -> None:
        self.reconnector.start()
        self.endpoint.fail(ConnectionRefusedError())
        self.assertEqual(self.reconnector.failures, 1)
        self.assertEqual(self.policy.asked, [1])
        self.assertEqual(self.retryDelay(), 20.0)
        self.clock.advance(19.9)
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.endpoint.attempts), 2)
        self.endpoint.fail(ConnectionRefusedError())
        self.assertEqual(self.reconnector.failures, 2)
        self.assertEqual(self.retryDelay(), 30.0)
        self.clock.advance(30.0)
        pair = self.endpoint.answer()
        self.assertEqual(self.reconnector.failures, 0)
        self.assertIs(self.reconnector.tunnel, pair.client)
        self.stopEstablished(pair)

    def test_refusedHelloIsAFailure(self) -> None:
        """
        A server that answers our HELLO with GOAWAY UNAUTHORIZED: the attempt
        failed, and the next one waits C{retryPolicy(failures)}.
        """
        connected = self.reconnector.whenConnected()
        self.reconnector.start()
        pair = self.endpoint.answer(refusing())
        self.assertTrue(pair.lost)
        self.assertEqual(len(pair.serverHandler.hellos), 1)
        self.assertNoResult(connected)
        self.assertIsNone(self.reconnector.tunnel)
        self.assertEqual(self.reconnector.failures, 1)
        self.assertEqual(self.policy.asked, [1])
        self.assertEqual(self.retryDelay(), 20.0)
        self.clock.advance(20.0)
        self.assertEqual(len(self.endpoint.attempts), 2)
        pair = self.endpoint.answer(refusing())
        self.assertEqual(self.reconnector.failures, 2)
        self.assertEqual(self.retryDelay(), 30.0)
        self.clock.advance(30.0)
        pair = self.endpoint.answer()
        self.assertIs(self.successResultOf(connected), pair.client)
        self.assertEqual(self.reconnector.failures, 0)
        self.stopEstablished(pair)

    def test_lostTunnelReconnects(self) -> None:
        """A tunnel that was up and is lost: dial again after C{retryPolicy(0)}."""
        self.reconnector.start()
        first = self.endpoint.answer()
        first.lose(Failure(ConnectionLost()))
        self.assertIsNone(self.reconnector.tunnel)
        self.assertEqual(self.policy.asked, [0])
        self.assertEqual(self.reconnector.failures, 0)
        self.assertEqual(self.retryDelay(), 10.0)
        self.clock.advance(9.9)
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.endpoint.attempts), 2)
        second = self.endpoint.answer()
        self.assertIs(self.reconnector.tunnel, second.client)
        self.stopEstablished(second)

    def test_failAfterFailures(self) -> None:
        """C{whenConnected(failAfterFailures=2)} fails with the second failure's reason."""
        bounded = self.reconnector.whenConnected(failAfterFailures=2)
        patient = self.reconnector.whenConnected()
        self.reconnector.start()
        self.endpoint.fail(ConnectionRefusedError())
        self.assertNoResult(bounded)
        self.clock.advance(self.retryDelay())
        self.endpoint.answer(refusing())
        self.failureResultOf(bounded, TunnelClosed)
        self.assertNoResult(patient)
        self.clock.advance(self.retryDelay())
        pair = self.endpoint.answer()
        self.assertIs(self.successResultOf(patient), pair.client)
        self.stopEstablished(pair)

    def test_stopCancelsRetry(self) -> None:
        self.reconnector.start()
        self.endpoint.fail(ConnectionRefusedError())
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertIsNone(self.successResultOf(self.reconnector.stop()))
        self.assertNoTimers()
        self.clock.advance(1000)
        self.assertEqual(len(self.endpoint.attempts), 1)

    def test_stopCancelsAttempt(self) -> None:
        """Stopping while the endpoint is still connecting cancels the attempt, quietly."""
        self.reconnector.start()
        self.assertIsNone(self.successResultOf(self.reconnector.stop()))
        self.assertEqual(self.endpoint.cancelled, 1)
        self.assertEqual(self.reconnector.failures, 0)
        self.assertNoTimers()

    def test_stopLostTunnelNoRetry(self) -> None:
        """Once stopped, the end of the tunnel schedules nothing."""
        self.reconnector.start()
        pair = self.endpoint.answer()
        self.stopEstablished(pair)
        self.clock.advance(1000)
        self.assertEqual(len(self.endpoint.attempts), 1)

    def test_stopDuringHello(self) -> None:
        """
        Stopping after the connection is made but before the server's HELLO
        closes that connection: a stopped agent leaves nothing behind.
        """
        waiting = self.reconnector.whenConnected()
        self.reconnector.start()
        tunnel, transport = self.endpoint.answerWithoutHello()
        stopped = self.reconnector.stop()
        try:
            closed = transport.disconnecting or transport.disconnected
            self.assertTrue(closed, "the connection was left open")
            tunnel.connectionLost(Failure(ConnectionDone()))
            self.successResultOf(stopped)
            self.assertNoTimers()
        finally:
            # clean up whatever the code under test left behind
            tunnel.connectionLost(Failure(ConnectionDone()))
            waiting.addErrback(lambda f: None)

    def test_stopFailsWaiters(self) -> None:
        waiting = self.reconnector.whenConnected()
        self.reconnector.start()
        self.endpoint.fail(ConnectionRefusedError())
        self.reconnector.stop()
        self.failureResultOf(waiting, CancelledError)


class DialFailureTests(SynchronousTestCase):
    """How a failed dial is reported to the server (OPEN_FAIL reason and text)."""

    address = TunnelAddress("edge-1", "192.0.2.10", 10250)

    def check(self, error: Exception, reason: OpenFailReason, *words: str) -> None:
        result = _dialFailure(Failure(error), self.address, 2.5)
        self.assertIsInstance(result, StreamOpenFailed)
        self.assertEqual(result.reason, reason, error)
        self.assertIn("192.0.2.10:10250", result.text)
        self.assertEqual(str(result), result.text)
        for word in words:
            self.assertIn(word, result.text)

    def test_refused(self) -> None:
        self.check(ConnectionRefusedError(), OpenFailReason.REFUSED, "refused")

    def test_timeout(self) -> None:
        self.check(TimeoutError(), OpenFailReason.TIMEOUT, "timed out", "2.5s")
        self.check(TCPTimedOutError(), OpenFailReason.TIMEOUT, "timed out")

    def test_unreachable(self) -> None:
        self.check(NoRouteError(), OpenFailReason.UNREACHABLE)
        self.check(DNSLookupError("nowhere"), OpenFailReason.UNREACHABLE)
        self.check(ConnectBindError(), OpenFailReason.UNREACHABLE)

    def test_other(self) -> None:
        self.check(ValueError("surprise"), OpenFailReason.INTERNAL, "surprise")


class DialTests(SynchronousTestCase):
    """L{TunnelAgent.dial}: refused before the reactor, or a TCP dial with the timeout."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.agent = TunnelAgent(
            self.reactor,
            None,
            ("127.0.0.1", 10262),
            "edge-1",
            ["192.0.2.10", "fd00::10"],
            allow=["10.0.0.0/8"],
            dialTimeout=2.5,
        )

    def dial(self, host: str, port: int = 10250) -> Deferred[IProtocol]:
        return self.agent.dial(TunnelAddress("edge-1", host, port))

    def assertNotAllowed(self, host: str) -> StreamOpenFailed:
        error = self.failureResultOf(self.dial(host), StreamOpenFailed).value
        assert isinstance(error, StreamOpenFailed)
        self.assertEqual(error.reason, OpenFailReason.NOT_ALLOWED, host)
        self.assertEqual(self.reactor.tcpClients, [])
        return error

    def test_notAnIP(self) -> None:
        for host in ["example.com", "localhost", "", "10.0.0.1.nip.io"]:
            error = self.assertNotAllowed(host)
            self.assertIn("not an IP address", error.text)

    def test_notAllowed(self) -> None:
        for host in ["192.0.2.1", "127.0.0.2", "11.0.0.1", "fd00::11", "169.254.169.254"]:
            error = self.assertNotAllowed(host)
            self.assertIn("may not dial", error.text)
            self.assertIn(":10250", error.text)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_dialsWithTimeout(self) -> None:
        """An allowed IP: C{connectTCP} with the dial timeout; the relay end when it connects."""
        dialed = self.dial("192.0.2.10")
        self.assertNoResult(dialed)
        ((host, port, factory, timeout, _bind),) = self.reactor.tcpClients
        self.assertEqual((host, port, timeout), ("192.0.2.10", 10250, 2.5))
        target = factory.buildProtocol(IPv4Address("TCP", host, port))
        target.makeConnection(StringTransport())
        streamEnd = self.successResultOf(dialed)
        self.assertIsInstance(streamEnd, RelayProtocol)
        assert isinstance(streamEnd, RelayProtocol)
        self.assertIsInstance(streamEnd.peer, RelayProtocol)

    def test_dialsAllowedNetworksAndLoopback(self) -> None:
        for host, expected in [
            ("10.1.2.3", "10.1.2.3"),
            ("127.0.0.1", "127.0.0.1"),
            ("::1", "::1"),
            ("[::1]", "::1"),
            ("FD00:0::10", "fd00::10"),
        ]:
            self.dial(host)
            self.assertEqual(self.reactor.tcpClients[-1][0], expected, host)
            self.assertEqual(self.reactor.tcpClients[-1][3], 2.5, host)

    def test_dialRefused(self) -> None:
        """The target refuses: OPEN_FAIL REFUSED naming host and port."""
        dialed = self.dial("192.0.2.10", 9)
        factory = self.reactor.tcpClients[0][2]
        factory.clientConnectionFailed(
            self.reactor.connectors[0], Failure(ConnectionRefusedError())
        )
        error = self.failureResultOf(dialed, StreamOpenFailed).value
        assert isinstance(error, StreamOpenFailed)
        self.assertEqual(error.reason, OpenFailReason.REFUSED)
        self.assertIn("192.0.2.10:9", error.text)

    def test_dialTimedOut(self) -> None:
        dialed = self.dial("192.0.2.10")
        factory = self.reactor.tcpClients[0][2]
        factory.clientConnectionFailed(self.reactor.connectors[0], Failure(TimeoutError()))
        error = self.failureResultOf(dialed, StreamOpenFailed).value
        assert isinstance(error, StreamOpenFailed)
        self.assertEqual(error.reason, OpenFailReason.TIMEOUT)
        self.assertIn("2.5s", error.text)


class AgentOverPumpTests(SynchronousTestCase):
    """The whole agent service, on a fake endpoint and an in-memory server tunnel."""

    def test_startAndStop(self) -> None:
        reactor = MemoryReactorClock()
        endpoint = FakeEndpoint(reactor)
        agent = TunnelAgent(
            reactor,
            None,
            ("127.0.0.1", 10262),
            "edge-1",
            ["192.0.2.10"],
            endpoint=endpoint,
            retryPolicy=RecordingPolicy(),
        )
        agent.startService()
        connected = agent.whenConnected()
        pair = endpoint.answer()
        self.assertIs(self.successResultOf(connected), pair.client)
        self.assertIs(agent.tunnel, pair.client)
        (hello,) = pair.serverHandler.hellos
        self.assertEqual((hello["node"], hello["ips"]), ("edge-1", ["192.0.2.10"]))
        self.assertEqual(agent.serverId, "srv-a")
        stopped = agent.stopService()
        assert stopped is not None
        goaways = framesOfType(frames(pair.clientTransport), wire.GoAway)
        self.assertEqual([g.code for g in goaways], [ErrorCode.SHUTTING_DOWN])
        pair.lose(Failure(ConnectionDone()))
        self.successResultOf(stopped)
        self.assertIsNone(agent.tunnel)
        self.assertEqual(reactor.getDelayedCalls(), [])
        self.assertEqual(reactor.tcpClients, [])
