"""pidgin with pidgin-sipe, headless, as a real Microsoft-protocol client for the tests.

:class:`Pidgin` runs Xvfb (display from ``-displayfd``), a private D-Bus session bus (on a
socket path, which network namespaces do not separate), and ``pidgin -c CONFIGDIR -d -f -l``
with one prpl-sipe account written to ``accounts.xml`` (server, user, password: sipe's
defaults for everything else), the FE's certificate pinned as the user would at the prompt,
and the test plugin (``pidgin_plugin/autoanswer.c``, built here against libpurple-dev) that
accepts incoming calls, hangs up on command and logs sign-on, connection errors and media
states. pidgin's debug log (every SIP message sipe sends and receives, libnice's lines) is
kept in memory, waited on line by line, and written to ``pidgin.log`` in the work directory.

libpurple is driven over D-Bus with ``dbus-send`` (no D-Bus library needed in the venv).
No sound card: ``GST_PLUGIN_FEATURE_RANK`` ranks the sound-card elements out and
audiotestsrc (a sine) in, so pidgin's default source and sink are a test tone and a fake
sink. ``sax1_compat`` preloads ``pidgin_plugin/sax1_compat.c`` (why: see that file).
Every process is stopped on :meth:`Pidgin.close` (also after a failed start): pidgin quits
through libpurple first, then SIGTERM/SIGKILL; then the bus and Xvfb.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import pytest

from lab.netns import NetnsError, VethHost
from lab.netns import unavailable as netns_unavailable
from tests.peers.procs import PeerError, PeerProcess, require

PLUGIN_SOURCE = Path(__file__).with_name("pidgin_plugin") / "autoanswer.c"
SAX1_SHIM_SOURCE = Path(__file__).with_name("pidgin_plugin") / "sax1_compat.c"
SERVICE = "im.pidgin.purple.PurpleService"
OBJECT = "/im/pidgin/purple/PurpleObject"
INTERFACE = "im.pidgin.purple.PurpleInterface"
NO_SOUND_CARD = ("openalsrc:NONE,openalsink:NONE,pulsesrc:NONE,pulsesink:NONE,"
                 "alsasrc:NONE,alsasink:NONE,audiotestsrc:PRIMARY")
"""GStreamer ranks: no sound card elements, so pidgin's default sink (autoaudiosink) falls
back to a fake sink; audiotestsrc (a 440 Hz sine) ranked up so that autoaudiosrc picks it:
its own fallback would be audiotestsrc playing silence, which sipe's codecs send as sparse
comfort noise (a packet every second or two)."""
HANGUP_COMMAND = "autoanswer:hangup"
"""An IM the plugin swallows and answers by hanging up the account's calls."""
MEDIA_AUDIO = 3
"""PurpleMediaSessionType: PURPLE_MEDIA_AUDIO (receive | send)."""
DBUS_TIMEOUT = 10.0
START_TIMEOUT = 30.0
QUIT_TIMEOUT = 5.0
DBUS_VALUE = re.compile(r"^\s*(?:int32|uint32|boolean|string)\s+\"?(.*?)\"?$", re.M)
SIP_START = re.compile(r"^MESSAGE START ([<>])")
RESPONSE_HANDLED = r"sipe: process_input_message: removing CSeq "
"""What sipe logs once the callback of a response it received has returned (sipe 1.25,
sip-transport.c process_input_message): the end of that response's handling."""


@dataclass(frozen=True, slots=True)
class SipLogEntry:
    """One SIP message in sipe's log."""

    sent: bool
    """True: sipe sent it; False: sipe received it."""
    text: str

    @property
    def start_line(self) -> str:
        return self.text.split("\n", 1)[0]

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive; no compact forms)."""
        match = re.search(rf"(?im)^{re.escape(name)}\s*:\s*(.*?)\s*$", self.text)
        return match.group(1) if match else None


def unavailable() -> str | None:
    """Why pidgin-sipe cannot run here (None when everything is installed)."""
    for program in ("pidgin", "Xvfb", "dbus-daemon", "dbus-send", "gcc", "pkg-config"):
        if shutil.which(program) is None:
            return f"{program} is not installed (run scripts/install-peers.sh)"
    if not Path("/usr/lib/purple-2/libsipe.so").exists() and not any(
            Path("/usr/lib").glob("*/purple-2/libsipe.so")):
        return "pidgin-sipe is not installed (run scripts/install-peers.sh)"
    for package, deb in (("purple", "libpurple-dev"), ("libxml-2.0", "libxml2-dev")):
        if subprocess.run(["pkg-config", "--exists", package], check=False).returncode != 0:
            return f"{deb} is not installed (run scripts/install-peers.sh)"
    return None


@contextmanager
def pidgin_namespace(
    what: str, routes: Callable[[VethHost], Sequence[Sequence[str]]] | None = None
) -> Iterator[VethHost]:
    """A namespace on a veth for pidgin (libnice ignores loopback), always removed after;
    skips ``what``, saying why, where pidgin or namespaces cannot be had. ``routes`` gives
    further ``ip route`` argument lists to run inside it once it exists."""
    for reason in (unavailable(), netns_unavailable()):
        if reason is not None:
            pytest.skip(f"{what} skipped: {reason}")
    host = VethHost.unique()
    try:
        host.create()
        for route in routes(host) if routes is not None else ():
            subprocess.run(["ip", "-n", host.namespace, "route", *route], check=True,
                           capture_output=True, timeout=10)
    except (NetnsError, subprocess.CalledProcessError) as error:
        host.destroy()
        pytest.skip(f"{what} skipped: cannot make a network namespace: {error}")
    try:
        yield host
    finally:
        host.destroy()
        assert not host.exists(), f"namespace {host.namespace} left behind"


@dataclass(frozen=True, slots=True)
class SipeAccount:
    """One prpl-sipe account, as a user types it: everything else is sipe's default."""

    user: str
    """SIP address without "sip:" ("alice.parkes@example.com")."""
    password: str
    server: str
    """Host (or address) of the FE, also the name the certificate is pinned under."""
    port: int
    login: str = ""
    """Login name when it differs from the SIP address ("EXAMPLE\\\\alice")."""
    transport: str = "tls"
    authentication: str = "ntlm"

    @property
    def name(self) -> str:
        """libpurple's account name: ``user,login``."""
        return f"{self.user},{self.login}" if self.login else self.user


def _compile(source: Path, target: Path, packages: Sequence[str], *extra: str) -> Path:
    """``source`` built as a shared object ``target``; PeerError naming what is missing."""
    target.parent.mkdir(parents=True, exist_ok=True)
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", *packages],
                           capture_output=True, text=True, check=False)
    if flags.returncode != 0:
        raise PeerError(f"pkg-config {' '.join(packages)}: {flags.stderr.strip()} "
                        "(run scripts/install-peers.sh)")
    built = subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", str(target), str(source),
                            *flags.stdout.split(), *extra],
                           capture_output=True, text=True, check=False, timeout=60)
    if built.returncode != 0:
        raise PeerError(f"building {source.name} failed:\n{built.stderr}")
    return target


def build_plugin(directory: Path) -> Path:
    """Compile the test plugin into ``directory`` (autoanswer.so)."""
    return _compile(PLUGIN_SOURCE, directory / "autoanswer.so",
                    ("purple", "gobject-2.0", "gmodule-2.0"))


def build_sax1_shim(directory: Path) -> Path:
    """Compile the libxml2 SAX1 compatibility shim (see pidgin_plugin/sax1_compat.c)."""
    return _compile(SAX1_SHIM_SOURCE, directory / "sax1_compat.so", ("libxml-2.0",), "-ldl")


def accounts_xml(account: SipeAccount) -> str:
    """accounts.xml with ``account`` enabled (auto-login) and available."""
    settings = {"server": f"{account.server}:{account.port}", "transport": account.transport,
                "authentication": account.authentication}
    lines = "".join(f"   <setting name='{k}' type='string'>{escape(v)}</setting>\n"
                    for k, v in settings.items())
    return (
        "<?xml version='1.0' encoding='UTF-8' ?>\n<account version='1.0'>\n <account>\n"
        "  <protocol>prpl-sipe</protocol>\n"
        f"  <name>{escape(account.name)}</name>\n"
        f"  <password>{escape(account.password)}</password>\n"
        "  <statuses><status type='available' name='Available' active='true'>"
        "<attributes/></status></statuses>\n"
        f"  <settings>\n{lines}  </settings>\n"
        "  <settings ui='gtk-gaim'>\n"
        "   <setting name='auto-login' type='bool'>1</setting>\n"
        "  </settings>\n </account>\n</account>\n")


def prefs_xml(plugins: Sequence[Path]) -> str:
    """prefs.xml loading ``plugins``; no sounds, no idle-away."""
    items = "".join(f"<item value='{escape(str(p))}'/>" for p in plugins)
    return (
        "<?xml version='1.0' encoding='UTF-8' ?>\n<pref version='1' name='/'>\n"
        " <pref name='purple'><pref name='away'>"
        "<pref name='idle_reporting' type='string' value='none'/></pref></pref>\n"
        " <pref name='pidgin'>\n"
        f"  <pref name='plugins'><pref name='loaded' type='pathlist'>{items}</pref></pref>\n"
        "  <pref name='sound'><pref name='method' type='string' value='none'/></pref>\n"
        " </pref>\n</pref>\n")


class Pidgin:
    """pidgin + pidgin-sipe for one test; use as an async context manager (see the module doc).

    ``wrap`` prefixes pidgin's command line (``VethHost.argv`` runs it in a namespace);
    ``cache`` holds what can be shared between runs (the GStreamer registry);
    ``sax1_compat`` preloads pidgin_plugin/sax1_compat.c, without which pidgin-sipe 1.25
    reads no XML at all with Debian 12's current libxml2 (see that file).
    """

    def __init__(self, account: SipeAccount, workdir: Path, *, server_cert_pem: bytes,
                 wrap: Sequence[str] = (), cache: Path | None = None,
                 sax1_compat: bool = False) -> None:
        self.account = account
        self.workdir = workdir
        self.config = workdir / "purple"
        self.server_cert_pem = server_cert_pem
        self.wrap = tuple(wrap)
        self.cache = cache or workdir
        self.log_path = workdir / "pidgin.log"
        self.sax1_compat = sax1_compat
        self.xvfb: PeerProcess | None = None
        self.bus_daemon: PeerProcess | None = None
        self.pidgin: PeerProcess | None = None
        self.bus = ""
        self.display = ""
        self._account_id: int | None = None

    # -- life -------------------------------------------------------------------------------

    async def __aenter__(self) -> Pidgin:
        try:
            await self.start()
        except BaseException:
            await asyncio.to_thread(self.close)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.close)

    async def start(self) -> None:
        """:meth:`start_blocking` without blocking the event loop."""
        await asyncio.to_thread(self.start_blocking)

    def start_blocking(self) -> None:
        """Write the configuration, start Xvfb, the bus and pidgin; returns once the test
        plugin is loaded (the account is then signing in: see :meth:`wait_signed_on`)."""
        self._write_config()
        self.xvfb = PeerProcess([require("Xvfb"), "-displayfd", "1", "-nolisten", "tcp",
                                 "-screen", "0", "800x600x24"], name="Xvfb")
        display = self.xvfb.wait_for_line(r"^(\d+)\s*$", START_TIMEOUT, stream="stdout")
        self.display = f":{display.group(1)}"
        # A socket path (not the abstract socket of the session default) reaches into the
        # namespace; the 108-byte limit on its length is why it is not in workdir.
        self._bus_dir = Path(f"/tmp/pidgin-bus-{os.getpid()}-{id(self):x}")
        self._bus_dir.mkdir(exist_ok=True)
        self.bus_daemon = PeerProcess([require("dbus-daemon"), "--session", "--nofork",
                                 "--print-address=1",
                                 f"--address=unix:path={self._bus_dir}/bus"], name="dbus")
        self.bus = self.bus_daemon.wait_for_line(r"^(unix:\S+)", START_TIMEOUT,
                                           stream="stdout").group(1)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),
            "DISPLAY": self.display,
            "DBUS_SESSION_BUS_ADDRESS": self.bus,
            "GST_PLUGIN_FEATURE_RANK": NO_SOUND_CARD,
            "GST_REGISTRY": str(self.cache / "gst-registry.bin"),
            "NO_AT_BRIDGE": "1",
            # sipe logs whole SIP messages only to an "unsafe" debug log.
            "PURPLE_UNSAFE_DEBUG": "1",
            "PURPLE_VERBOSE_DEBUG": "1",
            "LANG": "C.UTF-8",
            # libnice's own lines (checks, STUN errors, component states) into the log.
            "G_MESSAGES_DEBUG": "libnice,libnice-stun",
        }
        if self.sax1_compat:
            env["LD_PRELOAD"] = str(build_sax1_shim(self.workdir / "shim"))
        self.pidgin = PeerProcess([*self.wrap, require("pidgin"), "-c", str(self.config),
                                   "-d", "-f", "-l"], env=env, name="pidgin")
        self.wait_log(r"autoanswer: loaded", START_TIMEOUT)

    def close(self) -> None:
        """Stop pidgin, the bus and Xvfb (whatever started); keep pidgin's log on disk."""
        if self.pidgin is not None:
            if self.pidgin.poll() is None and self.bus:
                # As a user quits: libpurple's own quit, then SIGTERM if it is still there.
                try:
                    self.dbus_call("PurpleCoreQuit")
                except PeerError:
                    pass  # it quit before answering, or the bus is gone: stop() below
                try:
                    self.pidgin.proc.wait(QUIT_TIMEOUT)
                except subprocess.TimeoutExpired:
                    pass
            self.pidgin.stop()
            self.log_path.write_text(self.log())
        for peer in (self.bus_daemon, self.xvfb):
            if peer is not None:
                peer.stop()
        bus_dir = getattr(self, "_bus_dir", None)
        if bus_dir is not None:
            shutil.rmtree(bus_dir, ignore_errors=True)

    def _write_config(self) -> None:
        plugins = self.config / "plugins"
        plugin = build_plugin(plugins)
        pinned = self.config / "certificates" / "x509" / "tls_peers"
        pinned.mkdir(parents=True, exist_ok=True)
        (pinned / self.account.server).write_bytes(self.server_cert_pem)
        (self.config / "accounts.xml").write_text(accounts_xml(self.account))
        (self.config / "prefs.xml").write_text(prefs_xml([plugin]))
        (self.config / "accounts.xml").chmod(0o600)

    # -- the debug log ------------------------------------------------------------------------

    def log(self) -> str:
        """pidgin's output so far: its debug log (libpurple's, sipe's and, through pidgin's
        GLib log handler, libnice's lines) on stdout, then stderr."""
        assert self.pidgin is not None
        return self.pidgin.stdout() + "\n=== stderr ===\n" + self.pidgin.stderr()

    def lines(self) -> list[str]:
        """pidgin's stdout so far, one entry per line as the reader read it (cut at "\n"
        only): the lines :meth:`mark`, :meth:`wait_log` and :meth:`sip_messages` count
        ``since`` in. ``str.splitlines`` would also cut at a lone "\r", a form feed or
        U+2028 inside a line (a SIP body, an IM's text), and count past lines not yet seen."""
        assert self.pidgin is not None
        lines = self.pidgin.stdout().split("\n")
        if lines[-1] == "":
            lines.pop()
        return lines

    def mark(self) -> int:
        """A position in the log: :meth:`wait_log` ``since`` it sees only later lines."""
        return len(self.lines())

    def wait_log(self, pattern: str, timeout: float, *, since: int = 0,
                 fail: str | None = None) -> re.Match[str]:
        """The first line of pidgin's log after ``since`` matching ``pattern`` (PeerError
        after ``timeout``, or at once when a line matches ``fail``)."""
        return self.wait_log_line(pattern, timeout, since=since, fail=fail)[1]

    def wait_log_line(self, pattern: str, timeout: float, *, since: int = 0,
                      fail: str | None = None) -> tuple[int, re.Match[str]]:
        """:meth:`wait_log`, with the line's index in the log."""
        assert self.pidgin is not None
        wanted, failed = re.compile(pattern), re.compile(fail) if fail else None
        seen = [since]

        def check(lines: list[str]) -> tuple[int, re.Match[str]] | None:
            for index in range(seen[0], len(lines)):
                if failed is not None and failed.search(lines[index]):
                    raise PeerError(f"pidgin logged {lines[index].strip()!r} while waiting "
                                    f"for /{pattern}/ (log: {self.log_path})")
                match = wanted.search(lines[index])
                if match is not None:
                    return index, match
            seen[0] = len(lines)
            return None

        try:
            return self.pidgin.wait_for_output(check, timeout, f"/{pattern}/", stream="stdout")
        finally:
            if self.pidgin.poll() is not None:
                self.log_path.write_text(self.log())

    def wait_response_handled(self, pattern: str, timeout: float, *, since: int = 0
                              ) -> str:
        """The log sipe wrote while handling a response it received, from the first line
        after ``since`` matching ``pattern`` (logged during that handling) to the end of
        the handling (:data:`RESPONSE_HANDLED`). pidgin writes each debug line on its own
        and the log is read as it comes: a line logged later in the same handling (what
        sipe made of the response's body) may not have been read yet when ``pattern``'s
        line is seen, but it has been once the end of the handling is (PeerError when
        either does not come within ``timeout``)."""
        start, _ = self.wait_log_line(pattern, timeout, since=since)
        assert self.pidgin is not None
        handled = re.compile(RESPONSE_HANDLED)

        def check(lines: list[str]) -> str | None:
            for index in range(start + 1, len(lines)):
                if handled.search(lines[index]):
                    return "".join(lines[start:index + 1])
            return None

        try:
            return self.pidgin.wait_for_output(check, timeout, f"/{RESPONSE_HANDLED}/",
                                               stream="stdout")
        finally:
            if self.pidgin.poll() is not None:
                self.log_path.write_text(self.log())

    def sip_messages(self, since: int = 0) -> list[SipLogEntry]:
        """The SIP messages sipe logged after line ``since``: it logs each whole message
        between "MESSAGE START >>>>>>>>>>" (sent; "<<<<<<<<<<" received) and "MESSAGE END"."""
        messages: list[SipLogEntry] = []
        current: list[str] | None = None
        sent = False
        for line in self.lines()[since:]:
            start = SIP_START.match(line)
            if start is not None:
                current, sent = [], start.group(1) == ">"
            elif line.startswith("MESSAGE END"):
                if current is not None:
                    messages.append(SipLogEntry(sent, "\n".join(current)))
                current = None
            elif current is not None:
                current.append(line)
        return messages

    # -- D-Bus ---------------------------------------------------------------------------------

    def dbus_call(self, method: str, *args: str) -> list[str]:
        """``PurpleInterface.method(args)`` (each ``type:value`` as dbus-send takes it);
        the reply's values as text."""
        argv = [require("dbus-send"), f"--bus={self.bus}", "--print-reply",
                f"--reply-timeout={int(DBUS_TIMEOUT * 1000)}", f"--dest={SERVICE}", OBJECT,
                f"{INTERFACE}.{method}", *args]
        done = subprocess.run(argv, capture_output=True, text=True, check=False,
                              timeout=DBUS_TIMEOUT + 5)
        if done.returncode != 0:
            raise PeerError(f"D-Bus {method}{args}: {done.stderr.strip()}")
        return DBUS_VALUE.findall(done.stdout)

    @property
    def account_id(self) -> int:
        """libpurple's id of the sipe account."""
        if self._account_id is None:
            found = self.dbus_call("PurpleAccountsFind", f"string:{self.account.name}",
                                   "string:prpl-sipe")
            if not found or int(found[0]) == 0:
                raise PeerError(f"pidgin has no account {self.account.name}")
            self._account_id = int(found[0])
        return self._account_id

    # -- what the user does (async: the lab answers on the test's event loop meanwhile) ------

    async def until(self, pattern: str, timeout: float, *, since: int = 0,
                    fail: str | None = None) -> re.Match[str]:
        """:meth:`wait_log` without blocking the event loop."""
        return await asyncio.to_thread(self.wait_log, pattern, timeout, since=since, fail=fail)

    async def until_response_handled(self, pattern: str, timeout: float, *,
                                     since: int = 0) -> str:
        """:meth:`wait_response_handled` without blocking the event loop."""
        return await asyncio.to_thread(self.wait_response_handled, pattern, timeout,
                                       since=since)

    async def dbus(self, method: str, *args: str) -> list[str]:
        """:meth:`dbus_call` without blocking the event loop."""
        return await asyncio.to_thread(self.dbus_call, method, *args)

    async def is_connected(self) -> bool:
        return await self.dbus("PurpleAccountIsConnected", f"int32:{self.account_id}") == ["1"]

    async def wait_signed_on(self, timeout: float = 20.0) -> None:
        """Until libpurple signs the account on (PeerError with libpurple's reason if the
        connection fails first)."""
        await self.until(r"autoanswer: signed on", timeout,
                         fail=r"autoanswer: (connection error|signed off)")
        if not await self.is_connected():
            raise PeerError("signed on, but PurpleAccountIsConnected says no")

    async def send_im(self, who: str, text: str) -> None:
        """Open an IM conversation with ``who`` (a SIP URI) and send ``text``."""
        conv = await self.dbus("PurpleConversationNew", "int32:1", f"int32:{self.account_id}",
                               f"string:{who}")
        im = await self.dbus("PurpleConvIm", f"int32:{conv[0]}")
        await self.dbus("PurpleConvImSend", f"int32:{im[0]}", f"string:{text}")

    async def call(self, who: str) -> None:
        """Start an audio call to ``who`` (a SIP URI), as the call button does."""
        done = await self.dbus("PurplePrplInitiateMedia", f"int32:{self.account_id}",
                               f"string:{who}", f"int32:{MEDIA_AUDIO}")
        if done not in (["1"], ["true"]):
            raise PeerError(f"PurplePrplInitiateMedia({who}) answered {done}")

    async def hangup(self, who: str) -> None:
        """Hang up the account's calls (the plugin acts on this IM, which is not sent)."""
        await self.send_im(who, HANGUP_COMMAND)

    async def disconnect(self) -> None:
        await self.dbus("PurpleAccountDisconnect", f"int32:{self.account_id}")
