# -*- test-case-name: tests.forwarding.test_config -*-
"""
Tests for L{twisted_tunnel.forwarding.config}: the C{edge-tunnel-server-cfg} ConfigMap.

The two examples from ACK Edge's documentation load verbatim, both as
manifest files and as ConfigMap-volume directories laid out the way kubelet
writes them (C{..data} symlink swapped with one rename); every kind of
invalid content is refused with the key and the value named; the watcher
applies valid changes, refuses invalid ones and keeps the last good
configuration.  Real files in a temporary directory; time is a L{Clock}.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st
from twisted.application.service import IService
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from tests.pki import temporaryDirectory
from twisted_tunnel.forwarding.config import (
    DEFAULT_LOCALHOST_PORTS,
    ConfigError,
    ConfigWatcher,
    ProxyConfig,
    loadConfig,
    parseConfigData,
)

# The two examples from the product page, copied verbatim (the heredoc bodies
# of its two "cat <<EOF | kubectl apply -f -" commands).

SEED_1_20 = """\
apiVersion: v1
data:
  http-proxy-ports: "9051"
  https-proxy-ports: "9052, 8080"
  localhost-proxy-ports: "10250, 10255, 10266, 10267, 8080"
kind: ConfigMap
metadata:
  name: edge-tunnel-server-cfg
  namespace: kube-system
"""

SEED_1_18 = """\
apiVersion: v1
data:
  dnat-ports-pair: '9051=10264'
kind: ConfigMap
metadata:
  name: edge-tunnel-server-cfg
  namespace: kube-system
"""

EXPECTED_1_20 = ProxyConfig(
    httpPorts={9051, 10255},
    httpsPorts={9052, 8080, 10250},
    localhostPorts={10250, 10255, 10266, 10267, 8080},
)
EXPECTED_1_18 = ProxyConfig(dnatPorts={9051})

CONFIG_DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def manifest(data: Mapping[str, str]) -> str:
    """A ConfigMap manifest holding C{data}, as kubectl would take it."""
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "edge-tunnel-server-cfg", "namespace": "kube-system"},
            "data": dict(data),
        }
    )


def writeFile(path: str, content: str | bytes) -> None:
    with open(path, "wb") as f:
        f.write(content.encode("utf-8") if isinstance(content, str) else content)


class ConfigMapVolume:
    """
    A directory laid out as kubelet's AtomicWriter lays out a ConfigMap
    volume: C{..<timestamp>/} directories holding the files, a C{..data}
    symlink to the current one, and one C{<key> -> ..data/<key>} symlink per
    key.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._generation = 0

    @property
    def dataLink(self) -> str:
        return os.path.join(self.path, "..data")

    def prepare(self, data: Mapping[str, str]) -> str:
        """Write a new timestamped directory; return its name."""
        self._generation += 1
        name = f"..2026_01_02_03_04_05.{self._generation:09d}"
        os.mkdir(os.path.join(self.path, name))
        for key, value in data.items():
            writeFile(os.path.join(self.path, name, key), value)
        return name

    def swap(self, name: str) -> str | None:
        """Point C{..data} at C{name} with one rename; return the old target."""
        old = os.readlink(self.dataLink) if os.path.lexists(self.dataLink) else None
        temporary = os.path.join(self.path, "..data_tmp")
        os.symlink(name, temporary)
        os.replace(temporary, self.dataLink)
        return old

    def write(self, data: Mapping[str, str]) -> None:
        """Everything kubelet does for one update, in its order."""
        old = self.swap(self.prepare(data))
        for key in data:
            link = os.path.join(self.path, key)
            if not os.path.lexists(link):
                os.symlink(os.path.join("..data", key), link)
        for entry in os.listdir(self.path):
            if not entry.startswith("..") and entry not in data:
                os.unlink(os.path.join(self.path, entry))
        if old is not None and os.path.isdir(os.path.join(self.path, old)):
            shutil.rmtree(os.path.join(self.path, old))


def seedData(text: str) -> dict[str, str]:
    data: dict[str, str] = yaml.safe_load(text)["data"]
    return data


class SeedExamplesTests(SynchronousTestCase):
    """The product page's two examples, exactly as written there."""

    def manifestFile(self, text: str) -> str:
        path = os.path.join(temporaryDirectory(self), "edge-tunnel-server-cfg.yaml")
        writeFile(path, text)
        return path

    def volume(self, data: Mapping[str, str]) -> str:
        volume = ConfigMapVolume(temporaryDirectory(self))
        volume.write(data)
        return volume.path

    def assertSeed1_20(self, config: ProxyConfig) -> None:
        self.assertEqual(config, EXPECTED_1_20)
        self.assertEqual(config.protocolFor(9051), "http")
        self.assertEqual(config.protocolFor(9052), "https")
        self.assertEqual(config.protocolFor(8080), "https")
        self.assertEqual(config.protocolFor(10250), "https")
        self.assertEqual(config.protocolFor(10255), "http")
        self.assertIsNone(config.protocolFor(9100))
        self.assertIsNone(config.protocolFor(10266))
        self.assertTrue(config.isLocalhost(8080))
        self.assertFalse(config.isLocalhost(9052))
        self.assertEqual(config.forwardedPorts(), {9051, 9052, 8080, 10250, 10255})

    def assertSeed1_18(self, config: ProxyConfig) -> None:
        self.assertEqual(config, EXPECTED_1_18)
        self.assertEqual(config.protocolFor(9051), "http")
        self.assertFalse(config.isLocalhost(9051))
        self.assertEqual(config.localhostPorts, DEFAULT_LOCALHOST_PORTS)
        self.assertEqual(config.forwardedPorts(), {9051, 10250, 10255})

    def test_manifest1_20(self) -> None:
        self.assertSeed1_20(loadConfig(self.manifestFile(SEED_1_20)))

    def test_manifest1_18(self) -> None:
        self.assertSeed1_18(loadConfig(self.manifestFile(SEED_1_18)))

    def test_volume1_20(self) -> None:
        path = self.volume(seedData(SEED_1_20))
        self.assertEqual(
            sorted(os.listdir(path)),
            [
                "..2026_01_02_03_04_05.000000001",
                "..data",
                "http-proxy-ports",
                "https-proxy-ports",
                "localhost-proxy-ports",
            ],
        )
        self.assertSeed1_20(loadConfig(path))

    def test_volume1_18(self) -> None:
        self.assertSeed1_18(loadConfig(self.volume(seedData(SEED_1_18))))

    def test_plainDirectory(self) -> None:
        """A directory without C{..data} (made by hand) is read as it is."""
        path = temporaryDirectory(self)
        for key, value in seedData(SEED_1_20).items():
            writeFile(os.path.join(path, key), value + "\n")
        self.assertSeed1_20(loadConfig(path))

    def test_volumeReadsDataOnly(self) -> None:
        """
        Keys come from the directory C{..data} points at: a key symlink that
        kubelet has not removed yet (it dangles) does not count.
        """
        volume = ConfigMapVolume(temporaryDirectory(self))
        volume.write({"http-proxy-ports": "9051", "tcp-proxy-ports": "5432"})
        old = volume.swap(volume.prepare({"http-proxy-ports": "9051"}))
        assert old is not None
        shutil.rmtree(os.path.join(volume.path, old))
        self.assertTrue(os.path.lexists(os.path.join(volume.path, "tcp-proxy-ports")))
        self.assertEqual(loadConfig(volume.path), ProxyConfig(httpPorts={9051}))


class ParseTests(SynchronousTestCase):
    """L{parseConfigData}: defaults, formats and the fixed rules."""

    def test_empty(self) -> None:
        config = parseConfigData({})
        self.assertEqual(config, ProxyConfig())
        self.assertEqual(config.httpPorts, {10255})
        self.assertEqual(config.httpsPorts, {10250})
        self.assertEqual(config.localhostPorts, {10250, 10255, 10266, 10267})
        self.assertEqual(config.dnatPorts, frozenset())
        self.assertEqual(config.tcpPorts, frozenset())
        self.assertEqual(config.forwardedPorts(), {10250, 10255})
        self.assertTrue(config.isLocalhost(10250))

    def test_emptyValues(self) -> None:
        """An empty value lists no ports: for localhost, that replaces the default."""
        config = parseConfigData(
            {
                "http-proxy-ports": "",
                "https-proxy-ports": " ",
                "localhost-proxy-ports": "",
                "dnat-ports-pair": "",
                "tcp-proxy-ports": "",
            }
        )
        self.assertEqual(config, ProxyConfig(localhostPorts=()))
        self.assertFalse(config.isLocalhost(10250))

    def test_fixedPortsListed(self) -> None:
        """Listing 10250 as HTTPS and 10255 as HTTP is allowed, and changes nothing."""
        config = parseConfigData({"http-proxy-ports": "10255", "https-proxy-ports": "10250"})
        self.assertEqual(config, ProxyConfig())

    def test_spacesOptional(self) -> None:
        for value in ["9052, 8080", "9052,8080", " 9052 ,8080 ", "8080,\t9052\n", "9052,  8080"]:
            config = parseConfigData({"https-proxy-ports": value})
            self.assertEqual(config.httpsPorts, {8080, 9052, 10250}, value)
        for value in [
            "9051=10264, 9053=10264",
            "9051=10264,9053=10264",
            " 9051 = 10264,9053=10264",
        ]:
            config = parseConfigData({"dnat-ports-pair": value})
            self.assertEqual(config.dnatPorts, {9051, 9053}, value)

    def test_repeatedPort(self) -> None:
        """The same port twice under one key is not a contradiction."""
        self.assertEqual(
            parseConfigData({"http-proxy-ports": "9051, 9051"}), ProxyConfig(httpPorts={9051})
        )

    def test_portBounds(self) -> None:
        config = parseConfigData({"tcp-proxy-ports": "1, 65535, 00022"})
        self.assertEqual(config.tcpPorts, {1, 22, 65535})

    def test_dnatAlsoHTTP(self) -> None:
        """A DNAT port is HTTP, so listing it under http-proxy-ports as well agrees."""
        config = parseConfigData({"dnat-ports-pair": "9051=10264", "http-proxy-ports": "9051"})
        self.assertEqual(config.protocolFor(9051), "http")
        self.assertEqual(config.dnatPorts, {9051})

    def test_dnatListenerPort(self) -> None:
        """The right side of a pair is whatever port the HTTP listener has."""
        config = parseConfigData({"dnat-ports-pair": "9051=8264"}, httpListenerPort=8264)
        self.assertEqual(config.dnatPorts, {9051})
        self.assertRaises(
            ConfigError, parseConfigData, {"dnat-ports-pair": "9051=10264"}, httpListenerPort=8264
        )

    def test_tcpAndLocalhost(self) -> None:
        """Our extension: raw TCP ports, which compose with localhost."""
        config = parseConfigData(
            {"tcp-proxy-ports": "5432, 6379", "localhost-proxy-ports": "6379"}
        )
        self.assertEqual(config.protocolFor(5432), "tcp")
        self.assertEqual(config.protocolFor(6379), "tcp")
        self.assertTrue(config.isLocalhost(6379))
        self.assertFalse(config.isLocalhost(5432))
        self.assertEqual(config.forwardedPorts(), {5432, 6379, 10250, 10255})

    def test_localhostAlone(self) -> None:
        """
        A localhost port that no other key lists is not forwarded (ACK's
        default lists 10266 and 10267 this way).
        """
        config = parseConfigData({"localhost-proxy-ports": "9100"})
        self.assertTrue(config.isLocalhost(9100))
        self.assertIsNone(config.protocolFor(9100))

    def test_describe(self) -> None:
        line = parseConfigData(seedData(SEED_1_20)).describe()
        self.assertEqual(
            line,
            "http 9051, 10255; https 8080, 9052, 10250; "
            "localhost 8080, 10250, 10255, 10266, 10267; dnat none; tcp none",
        )

    def test_changesFrom(self) -> None:
        old = ProxyConfig(httpPorts={9051})
        new = ProxyConfig(httpPorts={9051, 9100})
        self.assertEqual(new.changesFrom(old), "http ports 9051, 10255 → 9051, 9100, 10255")
        self.assertEqual(new.changesFrom(new), "")

    def test_recordInvariants(self) -> None:
        """A ProxyConfig built by hand keeps the fixed rules, and refuses contradictions."""
        self.assertEqual(ProxyConfig(httpPorts=[9051]).httpPorts, {9051, 10255})
        for kwargs in [
            {"httpPorts": {10250}},
            {"httpsPorts": {10255}},
            {"tcpPorts": {9051}, "httpPorts": {9051}},
            {"dnatPorts": {9052}, "httpsPorts": {9052}},
            {"tcpPorts": {0}},
            {"localhostPorts": {65536}},
        ]:
            self.assertRaises(ValueError, ProxyConfig, **kwargs)

    @given(
        ports=st.sets(
            st.integers(1, 65535).filter(lambda p: p not in (10250, 10255)),
            max_size=30,
        ),
        separators=st.lists(st.sampled_from([",", ", ", " ,", " , ", ",\t"]), min_size=30),
        key=st.sampled_from(["http", "https", "tcp", "localhost"]),
    )
    def test_roundTrip(self, ports: set[int], separators: list[str], key: str) -> None:
        """Any set of valid distinct ports, rendered like "p1, p2,p3", parses back."""
        ordered = list(ports)
        rendered = "".join(
            str(port) + (separators[i] if i < len(ordered) - 1 else "")
            for i, port in enumerate(ordered)
        )
        config = parseConfigData({f"{key}-proxy-ports": rendered})
        expected = {
            "http": ProxyConfig(httpPorts=ports),
            "https": ProxyConfig(httpsPorts=ports),
            "tcp": ProxyConfig(tcpPorts=ports),
            "localhost": ProxyConfig(localhostPorts=ports),
        }[key]
        self.assertEqual(config, expected)


# (data, key named, value named, a fragment of the reason)
INVALID: list[tuple[dict[str, str], str, str, str]] = [
    ({"http-proxy-ports": "abc"}, "http-proxy-ports", "abc", "'abc' is not a port number"),
    ({"http-proxy-ports": "9051, 90x2"}, "http-proxy-ports", "9051, 90x2", "'90x2'"),
    ({"http-proxy-ports": "0"}, "http-proxy-ports", "0", "0 is outside 1-65535"),
    ({"https-proxy-ports": "65536"}, "https-proxy-ports", "65536", "outside 1-65535"),
    ({"https-proxy-ports": "123456789"}, "https-proxy-ports", "123456789", "outside"),
    ({"tcp-proxy-ports": "-1"}, "tcp-proxy-ports", "-1", "not a port number"),
    ({"tcp-proxy-ports": "+22"}, "tcp-proxy-ports", "+22", "not a port number"),
    ({"http-proxy-ports": "９０５１"}, "http-proxy-ports", "９０５１", "not a port number"),
    ({"http-proxy-ports": "9051 9052"}, "http-proxy-ports", "9051 9052", "not a port"),
    ({"http-proxy-ports": "9051;9052"}, "http-proxy-ports", "9051;9052", "not a port"),
    ({"http-proxy-ports": "9051,"}, "http-proxy-ports", "9051,", "empty entry"),
    ({"http-proxy-ports": "9051,,9052"}, "http-proxy-ports", "9051,,9052", "empty entry"),
    ({"localhost-proxy-ports": "x"}, "localhost-proxy-ports", "x", "not a port number"),
    (
        {"http-proxy-ports": "9051, 8080", "https-proxy-ports": "9052, 8080"},
        "https-proxy-ports",
        "9052, 8080",
        "port 8080 is also under http-proxy-ports",
    ),
    (
        {"http-proxy-ports": "5432", "tcp-proxy-ports": "5432"},
        "tcp-proxy-ports",
        "5432",
        "also under http-proxy-ports",
    ),
    (
        {"https-proxy-ports": "5432", "tcp-proxy-ports": "5432"},
        "tcp-proxy-ports",
        "5432",
        "also under https-proxy-ports",
    ),
    (
        {"dnat-ports-pair": "5432=10264", "tcp-proxy-ports": "5432"},
        "tcp-proxy-ports",
        "5432",
        "also under dnat-ports-pair",
    ),
    (
        {"dnat-ports-pair": "9052=10264", "https-proxy-ports": "9052"},
        "dnat-ports-pair",
        "9052=10264",
        "also under https-proxy-ports",
    ),
    ({"http-proxy-port": "9051"}, "http-proxy-port", "9051", "did you mean 'http-proxy-ports'"),
    ({"metrics-ports": "9100"}, "metrics-ports", "9100", "unknown key"),
    ({"HTTP-PROXY-PORTS": "9051"}, "HTTP-PROXY-PORTS", "9051", "unknown key"),
    ({"dnat-ports-pair": "9051"}, "dnat-ports-pair", "9051", "pair '9051' is not P=Q"),
    ({"dnat-ports-pair": "9051:10264"}, "dnat-ports-pair", "9051:10264", "not P=Q"),
    ({"dnat-ports-pair": "9051=10264=1"}, "dnat-ports-pair", "9051=10264=1", "not P=Q"),
    ({"dnat-ports-pair": "=10264"}, "dnat-ports-pair", "=10264", "pair '=10264'"),
    ({"dnat-ports-pair": "9051="}, "dnat-ports-pair", "9051=", "pair '9051='"),
    ({"dnat-ports-pair": "x=10264"}, "dnat-ports-pair", "x=10264", "'x' is not a port"),
    (
        {"dnat-ports-pair": "9051=10264, 9052=10263"},
        "dnat-ports-pair",
        "9051=10264, 9052=10263",
        "pair '9052=10263': the right side must be the HTTP proxy listener's port 10264",
    ),
    (
        {"dnat-ports-pair": "9051=10263"},
        "dnat-ports-pair",
        "9051=10263",
        "pair '9051=10263'",
    ),
    ({"dnat-ports-pair": "10250=10264"}, "dnat-ports-pair", "10250=10264", "always HTTPS"),
    (
        {"http-proxy-ports": "9051, 10250"},
        "http-proxy-ports",
        "9051, 10250",
        "10250 is always HTTPS",
    ),
    ({"https-proxy-ports": "10255"}, "https-proxy-ports", "10255", "10255 is always HTTP"),
    ({"tcp-proxy-ports": "10250"}, "tcp-proxy-ports", "10250", "10250 is always HTTPS"),
    ({"tcp-proxy-ports": "10255"}, "tcp-proxy-ports", "10255", "10255 is always HTTP"),
]


class InvalidDataTests(SynchronousTestCase):
    """Each refusal names the key and the value, on one line."""

    def assertRefusal(self, error: ConfigError, key: str, value: str | None, reason: str) -> None:
        message = str(error)
        self.assertEqual(error.key, key, message)
        self.assertEqual(error.value, value, message)
        self.assertIn(reason, error.reason, message)
        self.assertIn(repr(key), message)
        if value is not None:
            self.assertIn(repr(value), message)
        self.assertNotIn("\n", message)

    def test_invalid(self) -> None:
        for data, key, value, reason in INVALID:
            with self.assertRaises(ConfigError, msg=repr(data)) as caught:
                parseConfigData(data)
            self.assertRefusal(caught.exception, key, value, reason)

    def test_invalidFromFiles(self) -> None:
        """The same refusals through both file forms, with the path named first."""
        for data, key, value, reason in INVALID:
            path = os.path.join(temporaryDirectory(self), "cfg.yaml")
            writeFile(path, manifest(data))
            volume = ConfigMapVolume(temporaryDirectory(self))
            volume.write(data)
            for where in [path, volume.path]:
                with self.assertRaises(ConfigError, msg=repr(data)) as caught:
                    loadConfig(where)
                self.assertRefusal(caught.exception, key, value, reason)
                self.assertEqual(caught.exception.path, where)
                self.assertTrue(str(caught.exception).startswith(where + ": "))

    def test_longValueShortened(self) -> None:
        value = ", ".join(["9051"] * 200) + ", x"
        with self.assertRaises(ConfigError) as caught:
            parseConfigData({"http-proxy-ports": value})
        self.assertEqual(caught.exception.value, value)
        self.assertLess(len(str(caught.exception)), 250)

    def test_newlineInValue(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            parseConfigData({"http-proxy-ports": "9051\nx"})
        self.assertNotIn("\n", str(caught.exception))
        self.assertIn(r"'9051\nx'", str(caught.exception))


class ManifestTests(SynchronousTestCase):
    """The manifest file form: what YAML is accepted, and what is refused."""

    def load(self, text: str | bytes) -> ProxyConfig:
        path = os.path.join(temporaryDirectory(self), "cfg.yaml")
        writeFile(path, text)
        return loadConfig(path)

    def refused(self, text: str | bytes) -> ConfigError:
        with self.assertRaises(ConfigError, msg=repr(text)) as caught:
            self.load(text)
        error: ConfigError = caught.exception
        self.assertNotIn("\n", str(error))
        return error

    def test_unquotedNumbers(self) -> None:
        """Values YAML reads as numbers are taken as written."""
        config = self.load(
            "apiVersion: v1\nkind: ConfigMap\ndata:\n"
            "  http-proxy-ports: 9051\n  https-proxy-ports: 9052, 8080\n"
            "  tcp-proxy-ports: 05432\n"
        )
        self.assertEqual(config.httpPorts, {9051, 10255})
        self.assertEqual(config.httpsPorts, {9052, 8080, 10250})
        self.assertEqual(config.tcpPorts, {5432})

    def test_unquotedNumberAsWritten(self) -> None:
        """
        YAML 1.1 reads C{0x2352} as 9042 and C{2:30} as 150: the text as
        written is what is checked, so these are refused, not reinterpreted.
        """
        for written in ["0x2352", "2:30", "9_051"]:
            error = self.refused(
                f"apiVersion: v1\nkind: ConfigMap\ndata:\n  http-proxy-ports: {written}\n"
            )
            self.assertEqual(error.key, "http-proxy-ports")
            self.assertEqual(error.value, written)

    def test_noData(self) -> None:
        for text in [
            "apiVersion: v1\nkind: ConfigMap\n",
            "apiVersion: v1\nkind: ConfigMap\ndata:\n",
            "apiVersion: v1\nkind: ConfigMap\ndata: {}\n",
        ]:
            self.assertEqual(self.load(text), ProxyConfig(), text)

    def test_json(self) -> None:
        """JSON is YAML: C{kubectl get -o json} output loads too."""
        config = self.load(
            '{"apiVersion": "v1", "kind": "ConfigMap", "data": {"tcp-proxy-ports": "5432"}}'
        )
        self.assertEqual(config.tcpPorts, {5432})

    def test_notYAML(self) -> None:
        error = self.refused(SEED_1_20.replace('"9051"', '"9051'))
        self.assertIsNone(error.key)
        self.assertIn("YAML does not parse", str(error))
        self.assertIn("line ", str(error))

    def test_notConfigMap(self) -> None:
        for text, key, value in [
            (SEED_1_20.replace("kind: ConfigMap", "kind: Secret"), "kind", "Secret"),
            (SEED_1_20.replace("kind: ConfigMap\n", ""), "kind", None),
            (SEED_1_20.replace("apiVersion: v1", "apiVersion: v2"), "apiVersion", "v2"),
        ]:
            error = self.refused(text)
            self.assertEqual((error.key, error.value), (key, value))
            self.assertIn("not a ConfigMap", error.reason)
        for text in ["", "# nothing\n", "- a\n- b\n", "just text\n", "9051\n"]:
            error = self.refused(text)
            self.assertIsNone(error.key)
            self.assertIn("not a ConfigMap manifest", error.reason)

    def test_dataNotMapping(self) -> None:
        for data in ['"9051"', "[9051]"]:
            error = self.refused(f"apiVersion: v1\nkind: ConfigMap\ndata: {data}\n")
            self.assertEqual(error.key, "data")
            self.assertIn("not a mapping", error.reason)

    def test_valueNotString(self) -> None:
        for written, reason in [
            ("[9051, 9052]", "a YAML list"),
            ("{a: 1}", "a YAML dict"),
            ("9051.5", "a YAML float"),
            ("true", "boolean"),
            ("", "null"),
            ("null", "null"),
        ]:
            error = self.refused(
                f"apiVersion: v1\nkind: ConfigMap\ndata:\n  http-proxy-ports: {written}\n"
            )
            self.assertEqual(error.key, "http-proxy-ports", written)
            self.assertIn(reason, error.reason, written)

    def test_duplicateKey(self) -> None:
        """safe_load would keep the last of two equal keys; we refuse."""
        error = self.refused(
            SEED_1_20.replace(
                '  http-proxy-ports: "9051"\n',
                '  http-proxy-ports: "9051"\n  http-proxy-ports: "9100"\n',
            )
        )
        self.assertEqual(error.key, "http-proxy-ports")
        self.assertIn("twice", error.reason)
        error = self.refused(SEED_1_18 + "data: {}\n")
        self.assertEqual(error.key, "data")

    def test_twoDocuments(self) -> None:
        error = self.refused(SEED_1_20 + "---\n" + SEED_1_18)
        self.assertIn("YAML does not parse", error.reason)

    def test_binaryData(self) -> None:
        error = self.refused(SEED_1_18 + "binaryData:\n  http-proxy-ports: OTA1MQ==\n")
        self.assertEqual(error.key, "binaryData")

    def test_notUTF8(self) -> None:
        error = self.refused(SEED_1_18.encode("utf-8").replace(b"9051", b"9\xff51"))
        self.assertIn("YAML does not parse", error.reason)

    def test_deeplyNested(self) -> None:
        """
        Refused at the cap while the events are walked, before anything
        recurses; deeper still, the parser itself refuses.
        """
        error = self.refused("[" * 40 + "]" * 40)
        self.assertIn("YAML refused: nested deeper than 32 levels", error.reason)
        error = self.refused("[" * 100_000)
        self.assertIn("YAML", error.reason)
        self.assertIn("nest", error.reason)

    def test_tooLarge(self) -> None:
        error = self.refused(SEED_1_18 + "#" * (1024 * 1024))
        self.assertIn("1 MiB", error.reason)

    def test_missing(self) -> None:
        path = os.path.join(temporaryDirectory(self), "absent.yaml")
        with self.assertRaises(ConfigError) as caught:
            loadConfig(path)
        self.assertEqual(str(caught.exception), f"{path}: No such file or directory")


class DirectoryTests(SynchronousTestCase):
    """The directory form: refusals specific to it."""

    def test_unknownKeyFile(self) -> None:
        path = temporaryDirectory(self)
        writeFile(os.path.join(path, "http-proxy-ports.swp"), "")
        with self.assertRaises(ConfigError) as caught:
            loadConfig(path)
        self.assertEqual(caught.exception.key, "http-proxy-ports.swp")
        self.assertIn("did you mean 'http-proxy-ports'", caught.exception.reason)

    def test_subdirectory(self) -> None:
        path = temporaryDirectory(self)
        os.mkdir(os.path.join(path, "http-proxy-ports"))
        with self.assertRaises(ConfigError) as caught:
            loadConfig(path)
        self.assertEqual(caught.exception.key, "http-proxy-ports")
        self.assertIn("is a directory", caught.exception.reason)

    def test_notUTF8(self) -> None:
        path = temporaryDirectory(self)
        writeFile(os.path.join(path, "http-proxy-ports"), b"9\xff51")
        with self.assertRaises(ConfigError) as caught:
            loadConfig(path)
        self.assertEqual(caught.exception.key, "http-proxy-ports")
        self.assertIn("not UTF-8", caught.exception.reason)

    def test_empty(self) -> None:
        self.assertEqual(loadConfig(temporaryDirectory(self)), ProxyConfig())


class Recorder:
    """An C{onChange} callback that remembers what it was given."""

    def __init__(self) -> None:
        self.calls: list[ProxyConfig] = []

    def __call__(self, config: ProxyConfig) -> None:
        self.calls.append(config)


def levels(events: Iterable[dict[str, Any]], level: LogLevel) -> list[dict[str, Any]]:
    return [event for event in events if event["log_level"] == level]


class WatcherTests(SynchronousTestCase):
    """L{ConfigWatcher} on a manifest file."""

    INTERVAL = 2.0

    def setUp(self) -> None:
        self.path = os.path.join(temporaryDirectory(self), "edge-tunnel-server-cfg.yaml")
        writeFile(self.path, SEED_1_20)
        self.clock = Clock()
        self.changes = Recorder()
        self.watcher = ConfigWatcher(
            self.path, self.clock, loadConfig(self.path), self.changes, interval=self.INTERVAL
        )
        self.watcher.startService()
        self.addCleanup(self.stop)

    def stop(self) -> None:
        if self.watcher.running:
            self.watcher.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def write(self, data: Mapping[str, str]) -> None:
        writeFile(self.path, manifest(data))

    def poll(self) -> list[dict[str, Any]]:
        """Let one interval pass; return what was logged."""
        with capturedLogs() as events:
            self.clock.advance(self.INTERVAL)
        return list(events)

    def test_interfaces(self) -> None:
        self.assertTrue(verifyObject(IService, self.watcher))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(self.clock.getDelayedCalls()[0].getTime(), self.INTERVAL)

    def test_noChange(self) -> None:
        for _ in range(5):
            events = self.poll()
            self.assertEqual(levels(events, LogLevel.info) + levels(events, LogLevel.warn), [])
        self.assertEqual(self.changes.calls, [])
        self.assertEqual(self.watcher.current, EXPECTED_1_20)
        self.assertFalse(self.watcher.stale)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_validChange(self) -> None:
        self.poll()
        data = seedData(SEED_1_20)
        data["http-proxy-ports"] = "9051, 9100"
        self.write(data)
        events = self.poll()
        expected = ProxyConfig(
            httpPorts={9051, 9100},
            httpsPorts={9052, 8080},
            localhostPorts=EXPECTED_1_20.localhostPorts,
        )
        self.assertEqual(self.changes.calls, [expected])
        self.assertEqual(self.watcher.current, expected)
        self.assertEqual(self.watcher.lastLoaded, 2 * self.INTERVAL)
        self.assertFalse(self.watcher.stale)
        [info] = levels(events, LogLevel.info)
        self.assertEqual(
            formatEvent(info),
            f"config reloaded from {self.path}: http ports 9051, 10255 → 9051, 9100, 10255",
        )
        self.assertEqual(info["path"], self.path)
        self.assertEqual(info["config"], expected.describe())
        self.assertEqual(levels(events, LogLevel.warn), [])
        # And nothing more while it stays the same.
        self.poll()
        self.poll()
        self.assertEqual(len(self.changes.calls), 1)

    def test_sameSecondChange(self) -> None:
        """Same size, same mtime, different bytes: still seen."""
        self.poll()
        before = os.stat(self.path)
        writeFile(self.path, SEED_1_20.replace('"9051"', '"9053"'))
        os.utime(self.path, ns=(before.st_atime_ns, before.st_mtime_ns))
        self.assertEqual(os.stat(self.path).st_size, before.st_size)
        self.poll()
        self.assertEqual([c.httpPorts for c in self.changes.calls], [{9053, 10255}])

    def test_cosmeticChange(self) -> None:
        """New bytes with the same meaning: no callback, no info line."""
        self.poll()
        writeFile(self.path, SEED_1_20.replace('"9052, 8080"', '"8080,9052"') + "# edited\n")
        events = self.poll()
        self.assertEqual(self.changes.calls, [])
        self.assertEqual(levels(events, LogLevel.info) + levels(events, LogLevel.warn), [])
        self.assertEqual(self.watcher.lastLoaded, 2 * self.INTERVAL)

    def test_invalidChange(self) -> None:
        self.poll()
        data = seedData(SEED_1_20)
        data["https-proxy-ports"] = "9052, 80x80"
        self.write(data)
        events = self.poll()
        self.assertEqual(self.changes.calls, [])
        self.assertEqual(self.watcher.current, EXPECTED_1_20)
        self.assertTrue(self.watcher.stale)
        self.assertEqual(levels(events, LogLevel.info), [])
        [warning] = levels(events, LogLevel.warn)
        self.assertEqual(warning["key"], "https-proxy-ports")
        self.assertEqual(warning["value"], "9052, 80x80")
        self.assertEqual(warning["reason"], "'80x80' is not a port number")
        self.assertEqual(warning["path"], self.path)
        text = formatEvent(warning)
        self.assertEqual(
            text,
            "config refused, the last good one stays active: "
            f"{self.path}: key 'https-proxy-ports', value '9052, 80x80': "
            "'80x80' is not a port number",
        )
        self.assertEqual(self.watcher.staleReason, text.split(": ", 1)[1])
        # Said once, not at every poll.
        for _ in range(3):
            self.assertEqual(levels(self.poll(), LogLevel.warn), [])
        self.assertTrue(self.watcher.stale)

        # Fixing it applies the fix and clears the staleness.
        data["https-proxy-ports"] = "9052, 8443"
        self.write(data)
        events = self.poll()
        self.assertFalse(self.watcher.stale)
        self.assertIsNone(self.watcher.staleReason)
        self.assertEqual(self.watcher.current.httpsPorts, {9052, 8443, 10250})
        self.assertEqual(self.changes.calls, [self.watcher.current])
        self.assertEqual(levels(events, LogLevel.warn), [])
        self.assertEqual(len(levels(events, LogLevel.info)), 1)

    def test_invalidThenRestored(self) -> None:
        """Back to the content in force: staleness cleared, no callback."""
        self.poll()
        writeFile(self.path, "kind: ConfigMap\ndata: [\n")
        self.poll()
        self.assertTrue(self.watcher.stale)
        self.assertIn("YAML does not parse", self.watcher.staleReason or "")
        writeFile(self.path, SEED_1_20)
        events = self.poll()
        self.assertFalse(self.watcher.stale)
        self.assertEqual(self.changes.calls, [])
        [info] = levels(events, LogLevel.info)
        self.assertIn("valid again", formatEvent(info))

    def test_eachInvalidKind(self) -> None:
        """Every refusal keeps the config in force and names the key in one warning."""
        self.poll()
        for data, key, value, _ in INVALID:
            self.write(data)
            events = self.poll()
            [warning] = levels(events, LogLevel.warn)
            self.assertEqual((warning["key"], warning["value"]), (key, value))
            self.assertIn(repr(key), formatEvent(warning))
            self.assertTrue(self.watcher.stale)
        self.assertEqual(self.changes.calls, [])
        self.assertEqual(self.watcher.current, EXPECTED_1_20)

    def test_vanishedBriefly(self) -> None:
        """Gone at one poll and back by the next: not stale, not empty."""
        self.poll()
        os.remove(self.path)
        events = self.poll()
        self.assertEqual(levels(events, LogLevel.warn), [])
        self.assertFalse(self.watcher.stale)
        self.assertEqual(self.watcher.current, EXPECTED_1_20)
        writeFile(self.path, SEED_1_18)
        self.poll()
        self.assertEqual(self.changes.calls, [EXPECTED_1_18])
        self.assertFalse(self.watcher.stale)

    def test_vanished(self) -> None:
        """Gone for good: one warning, stale, last good config kept."""
        self.poll()
        os.remove(self.path)
        self.poll()
        [warning] = levels(self.poll(), LogLevel.warn)
        self.assertIn("No such file or directory", formatEvent(warning))
        self.assertTrue(self.watcher.stale)
        for _ in range(3):
            self.assertEqual(levels(self.poll(), LogLevel.warn), [])
        self.assertEqual(self.watcher.current, EXPECTED_1_20)
        # The same content coming back clears the staleness.
        writeFile(self.path, SEED_1_20)
        self.poll()
        self.assertFalse(self.watcher.stale)
        self.assertEqual(self.changes.calls, [])

    def test_unreadable(self) -> None:
        """A read error other than "missing" is refused at once, and said once."""
        os.remove(self.path)
        os.mkdir(self.path)
        os.mkdir(os.path.join(self.path, "tcp-proxy-ports"))
        [warning] = levels(self.poll(), LogLevel.warn)
        self.assertEqual(warning["key"], "tcp-proxy-ports")
        self.assertTrue(self.watcher.stale)
        self.assertEqual(levels(self.poll(), LogLevel.warn), [])

    def test_firstPollChanged(self) -> None:
        """Changed between loading and starting: the first poll applies it."""
        self.write({"http-proxy-ports": "9100"})
        self.poll()
        self.assertEqual(self.changes.calls, [ProxyConfig(httpPorts={9100})])

    def test_callbackFails(self) -> None:
        """
        A callback that fails on the new configuration refuses it: logged
        once, stale, the callback handed the last good one back, which
        stays in force; polling goes on.
        """
        new = ProxyConfig(httpPorts={9100})

        def broken(config: ProxyConfig) -> None:
            self.changes(config)
            if config == new:
                raise RuntimeError("boom")

        self.watcher.onChange = broken
        self.write({"http-proxy-ports": "9100"})
        events = self.poll()
        [critical] = levels(events, LogLevel.critical)
        self.assertIn("config refused, the last good one stays active", formatEvent(critical))
        self.assertIn("applying it failed: RuntimeError: boom", formatEvent(critical))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.changes.calls, [new, EXPECTED_1_20])
        self.assertEqual(self.watcher.current, EXPECTED_1_20)
        self.assertTrue(self.watcher.stale)
        self.assertEqual(self.watcher.refusals, 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_pollNow(self) -> None:
        """C{poll()} checks at once (for a SIGHUP handler, say)."""
        self.write({"http-proxy-ports": "9100"})
        self.watcher.poll()
        self.assertEqual(self.changes.calls, [ProxyConfig(httpPorts={9100})])

    def test_stop(self) -> None:
        self.watcher.stopService()
        self.assertFalse(self.watcher.running)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.write({"http-proxy-ports": "9100"})
        self.clock.advance(10 * self.INTERVAL)
        self.assertEqual(self.changes.calls, [])


class VolumeWatcherTests(SynchronousTestCase):
    """L{ConfigWatcher} on a ConfigMap volume updated the way kubelet updates it."""

    def setUp(self) -> None:
        self.volume = ConfigMapVolume(temporaryDirectory(self))
        self.volume.write(seedData(SEED_1_20))
        self.clock = Clock()
        self.changes = Recorder()
        self.watcher = ConfigWatcher(
            self.volume.path, self.clock, loadConfig(self.volume.path), self.changes
        )
        self.watcher.startService()
        self.addCleanup(self.stop)

    def stop(self) -> None:
        self.watcher.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def poll(self) -> list[dict[str, Any]]:
        with capturedLogs() as events:
            self.clock.advance(2)
        return list(events)

    def test_noChange(self) -> None:
        for _ in range(3):
            self.poll()
        self.assertEqual(self.changes.calls, [])

    def test_swap(self) -> None:
        """A new C{..<timestamp>} directory, then C{..data} renamed over: picked up."""
        self.poll()
        data = seedData(SEED_1_20)
        data["http-proxy-ports"] = "9051, 9100"
        name = self.volume.prepare(data)
        events = self.poll()
        self.assertEqual(self.changes.calls, [], "not before the swap")
        self.volume.swap(name)
        events = self.poll()
        self.assertEqual([c.httpPorts for c in self.changes.calls], [{9051, 9100, 10255}])
        [info] = levels(events, LogLevel.info)
        self.assertIn("http ports 9051, 10255 → 9051, 9100, 10255", formatEvent(info))

    def test_swapSameContent(self) -> None:
        """kubelet may swap in identical content: nothing to do."""
        self.poll()
        self.volume.write(seedData(SEED_1_20))
        events = self.poll()
        self.assertEqual(self.changes.calls, [])
        self.assertEqual(levels(events, LogLevel.info), [])

    def test_keyAddedAndRemoved(self) -> None:
        self.poll()
        self.volume.write({"tcp-proxy-ports": "5432"})
        self.poll()
        self.assertEqual(self.changes.calls, [ProxyConfig(tcpPorts={5432})])

    def test_invalidSwap(self) -> None:
        self.poll()
        self.volume.write({"dnat-ports-pair": "9051=10263"})
        [warning] = levels(self.poll(), LogLevel.warn)
        self.assertEqual(warning["key"], "dnat-ports-pair")
        self.assertEqual(warning["value"], "9051=10263")
        self.assertIn("pair '9051=10263'", formatEvent(warning))
        self.assertTrue(self.watcher.stale)
        self.assertEqual(self.watcher.current, EXPECTED_1_20)
        self.volume.write(seedData(SEED_1_18))
        self.poll()
        self.assertFalse(self.watcher.stale)
        self.assertEqual(self.changes.calls, [EXPECTED_1_18])

    def test_midSwap(self) -> None:
        """
        C{..data} pointing at a directory that is not there (yet, or any
        more) is retried at the next poll, not read as an empty ConfigMap.
        """
        self.poll()
        self.volume.swap("..2026_01_02_03_04_05.999999999")
        events = self.poll()
        self.assertEqual(levels(events, LogLevel.warn), [])
        self.assertFalse(self.watcher.stale)
        self.assertEqual(self.watcher.current, EXPECTED_1_20)
        self.volume.write(seedData(SEED_1_18))
        self.poll()
        self.assertEqual(self.changes.calls, [EXPECTED_1_18])
        self.assertFalse(self.watcher.stale)


class DocumentationTests(SynchronousTestCase):
    """C{docs/config.md} shows the seed's examples and the refusals as the code has them."""

    def test_seedExamples(self) -> None:
        doc = CONFIG_DOC.read_text()
        for example in [SEED_1_20, SEED_1_18]:
            self.assertIn(f"```yaml\n{example}```\n", doc)
        self.assertIn(parseConfigData(seedData(SEED_1_20)).describe(), " ".join(doc.split()))
        self.assertIn(parseConfigData(seedData(SEED_1_18)).describe(), doc)

    def test_refusals(self) -> None:
        """Every manifest refusal in the table is the message the code gives."""
        doc = CONFIG_DOC.read_text()
        head = "apiVersion: v1\nkind: ConfigMap\n"
        cases = [
            manifest({"http-proxy-ports": "9051, 91OO"}),
            manifest({"http-proxy-ports": "70000"}),
            manifest({"http-proxy-ports": "9051,,9100"}),
            manifest({"http-proxy-ports": "9051", "https-proxy-ports": "9051"}),
            manifest({"http-proxy-ports": "5432", "tcp-proxy-ports": "5432"}),
            manifest({"dnat-ports-pair": "9052=10264", "https-proxy-ports": "9052"}),
            manifest({"http-proxy-port": "9051"}),
            manifest({"dnat-ports-pair": "9051"}),
            manifest({"dnat-ports-pair": "9051=10263"}),
            manifest({"http-proxy-ports": "10250"}),
            manifest({"https-proxy-ports": "10255"}),
            head + 'data:\n  http-proxy-ports: "9051\n',
            "apiVersion: v1\nkind: Secret\ndata: {}\n",
            head + "data: [9051]\n",
            head + "data:\n  http-proxy-ports: [9051]\n",
            head + "data:\n  tcp-proxy-ports:\n",
            head + "data:\n  http-proxy-ports: '1'\n  http-proxy-ports: '2'\n",
        ]
        for text in cases:
            path = os.path.join(temporaryDirectory(self), "cfg.yaml")
            writeFile(path, text)
            with self.assertRaises(ConfigError) as caught:
                loadConfig(path)
            line = str(caught.exception).replace(path, "/etc/edge-tunnel/cfg.yaml")
            self.assertIn(f"| `{line}` |", doc)


class PolicyPortsTests(SynchronousTestCase):
    """C{policy-ports}, our extension: custom policies bound to forwarded ports."""

    def test_bindings(self) -> None:
        config = parseConfigData(
            {
                "http-proxy-ports": "9100, 9200",
                "policy-ports": "9200=mytools.policies:strict,9100 = metrics-only",
            }
        )
        self.assertEqual(
            config.policyPorts, ((9100, "metrics-only"), (9200, "mytools.policies:strict"))
        )
        self.assertEqual(config.policyName(9100), "metrics-only")
        self.assertIsNone(config.policyName(10250))
        self.assertIn("policies 9100=metrics-only", config.describe())

    def test_refused(self) -> None:
        for value, words in [
            ("9100", "entry '9100' is not PORT=POLICY"),
            ("9100=", "entry '9100=' is not PORT=POLICY"),
            ("x=metrics-only", "'x' is not a port number"),
            ("9300=metrics-only", "port 9300 is not forwarded"),
            ("9100=a, 9100=b", "port 9100 is bound twice"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                parseConfigData({"http-proxy-ports": "9100", "policy-ports": value})
            self.assertEqual(caught.exception.key, "policy-ports", value)
            self.assertIn(words, str(caught.exception), value)

    def test_unknownPolicyRefused(self) -> None:
        """A binding the resolver cannot find refuses the configuration, naming the entry."""

        def resolve(name: str) -> object:
            raise LookupError(f"no policy named {name!r}")

        with self.assertRaises(ConfigError) as caught:
            parseConfigData(
                {"http-proxy-ports": "9100", "policy-ports": "9100=nosuch"}, resolvePolicy=resolve
            )
        self.assertIn("entry '9100=nosuch': no policy named 'nosuch'", str(caught.exception))

    def test_changesFrom(self) -> None:
        old = parseConfigData({"http-proxy-ports": "9100"})
        new = parseConfigData({"http-proxy-ports": "9100", "policy-ports": "9100=m"})
        self.assertEqual(new.changesFrom(old), "policies none → 9100=m")
