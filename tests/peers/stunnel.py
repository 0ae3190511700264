"""stunnel as the TLS leg of a plain-TCP peer (Debian's SIPp is built without TLS).

Two shapes, both real (mutual) TLS with the lab PKI:
- `stunnel_client`: a plain-TCP peer connects to `port`; stunnel opens TLS to `connect`,
  presenting a client certificate and checking the server's chain and host name.
- `stunnel_server`: accepts TLS on `port` (requiring a client certificate from the lab
  CA) and forwards the cleartext to a plain-TCP peer at `connect`.
The config file lives in its own temp directory; stunnel runs in the foreground with no
pid file and logs to stderr, where "bound to" tells that it is listening.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.peers.procs import LOOPBACK, Finished, PeerError, PeerProcess, free_port, require

SERVICE = "sip"
READY = rf"Service \[{SERVICE}\] \(FD=\d+\) bound to"
BIND_RETRIES = 5
_runs = itertools.count(1)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The PEM files of one side of a mutual-TLS link."""

    cert: Path
    """Certificate chain to present (leaf first)."""
    key: Path
    """Its private key."""
    ca: Path
    """The trust anchor that the other side's chain must lead to."""


class Stunnel:
    """A running stunnel with one service: `host:port` is where it accepts."""

    def __init__(self, peer: PeerProcess, host: str, port: int, config: Path) -> None:
        self.peer = peer
        self.host = host
        self.port = port
        self.config = config

    def log(self) -> str:
        """stunnel's log so far (connections, certificate checks, errors)."""
        return self.peer.stderr()

    def stop(self) -> Finished:
        return self.peer.stop()


def _which() -> str:
    try:
        return require("stunnel4")
    except PeerError:
        return require("stunnel")


def _config(
    *,
    client: bool,
    accept: tuple[str, int],
    connect: tuple[str, int],
    tls: TlsFiles | None,
    ca: Path,
    check_host: str | None,
) -> str:
    lines = [
        "foreground = yes",
        "pid =",
        "syslog = no",
        # info: one line per connection and certificate check, enough to explain a failure.
        "debug = info",
        f"[{SERVICE}]",
        f"client = {'yes' if client else 'no'}",
        f"accept = {accept[0]}:{accept[1]}",
        f"connect = {connect[0]}:{connect[1]}",
        f"CAfile = {ca}",
        "verifyChain = yes",
        "sslVersionMin = TLSv1.2",
    ]
    if tls is not None:
        lines += [f"cert = {tls.cert}", f"key = {tls.key}"]
    if client:
        if check_host is not None:
            lines += [f"checkHost = {check_host}", f"sni = {check_host}"]
    else:
        lines.append("requireCert = yes")
    return "\n".join(lines) + "\n"


@contextmanager
def _run(
    base: Path,
    *,
    client: bool,
    connect: tuple[str, int],
    tls: TlsFiles | None,
    ca: Path,
    check_host: str | None,
    host: str,
    port: int | None,
    ready_timeout: float,
) -> Iterator[Stunnel]:
    last: Finished | None = None
    for _attempt in range(BIND_RETRIES):
        workdir = base / f"stunnel-{'client' if client else 'server'}-{next(_runs)}"
        workdir.mkdir(parents=True)
        accept_port = port or free_port(host=host)
        conf = workdir / "stunnel.conf"
        conf.write_text(
            _config(
                client=client,
                accept=(host, accept_port),
                connect=connect,
                tls=tls,
                ca=ca,
                check_host=check_host,
            )
        )
        peer = PeerProcess([_which(), str(conf)], cwd=workdir, name="stunnel")
        try:
            peer.wait_for_line(READY, ready_timeout)
        except PeerError:
            last = peer.stop()
            # Another suite took the port between picking and binding: pick again.
            if port is None and "Error binding service" in last.stderr:
                continue
            raise
        try:
            yield Stunnel(peer, host, accept_port, conf)
        finally:
            peer.stop()
        return
    raise PeerError("stunnel could not bind:\n" + (last.describe() if last else ""))


@contextmanager
def stunnel_client(
    base: Path,
    *,
    connect: tuple[str, int],
    ca: Path,
    check_host: str | None,
    tls: TlsFiles | None = None,
    host: str = LOOPBACK,
    port: int | None = None,
    ready_timeout: float = 10.0,
) -> Iterator[Stunnel]:
    """Plain TCP in on `host:port`, TLS out to `connect` (server checked against `ca`)."""
    with _run(
        base,
        client=True,
        connect=connect,
        tls=tls,
        ca=ca,
        check_host=check_host,
        host=host,
        port=port,
        ready_timeout=ready_timeout,
    ) as tunnel:
        yield tunnel


@contextmanager
def stunnel_server(
    base: Path,
    *,
    connect: tuple[str, int],
    tls: TlsFiles,
    host: str = LOOPBACK,
    port: int | None = None,
    ready_timeout: float = 10.0,
) -> Iterator[Stunnel]:
    """TLS in on `host:port` (client cert required, checked against `tls.ca`), TCP out."""
    with _run(
        base,
        client=False,
        connect=connect,
        tls=tls,
        ca=tls.ca,
        check_host=None,
        host=host,
        port=port,
        ready_timeout=ready_timeout,
    ) as tunnel:
        yield tunnel
