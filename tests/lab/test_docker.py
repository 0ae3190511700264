"""The Docker lab on a real Docker engine: build offline, `compose up`, every service healthy
(the external client included), the demo matrix passing between the containers (media both
ways, david's pair through a relay), calls working again seconds after `restart cucm`, then
`down -v` and everything it made removed.

The engine: the one at ``DOCKER_HOST`` (or the default socket) when it answers, else a
``dockerd`` of our own (data root, exec root, socket and pid file in a temporary directory,
no default bridge), stopped by its pid at the end, with any iptables rule left naming a
bridge that no longer exists removed (such rules rewrite other labs' loopback traffic).
No registry is reachable here: the base image is Debian bookworm with python3 made by
``mmdebstrap`` (its tarball cached under ~/.cache/gateway-emulator keyed by the recipe) and
``docker import``ed; the image is built from wheels downloaded on the host (PIP_WHEELS).
Skips only when no engine can be started. Durations of each phase are recorded as test
properties (and logged).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lab.demo import MATRIX
from tests.peers.procs import random_free_port

pytestmark = [pytest.mark.slow, pytest.mark.peer, pytest.mark.timeout(900)]

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gateway-emulator"
BASE_RECIPE = {
    "suite": "bookworm",
    "variant": "minbase",
    "include": ["python3", "python3-venv", "ca-certificates"],
    "mirror": "http://deb.debian.org/debian",
}
"""What the local base image is made of (its cache key is this recipe's hash)."""
ENGINE_START = 60.0
OTHER_LAB_WITHIN = 480.0
"""Seconds to wait for another Docker lab's dockerd on this machine to stop before ours."""
HEALTHY_WITHIN = 240.0
"""Seconds from `up` until every service is healthy (health checks run every 10 s)."""
RECOVERY_WITHIN = 30.0
"""Seconds from `restart cucm` until an endpoint is registered again."""
COMMAND_TIMEOUT = 600.0
CLIENT_ALICE = ("gateway", "lync-client", "--config", "lab/configs/docker/lync-client-alice.toml")


def run(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = COMMAND_TIMEOUT,
        check: bool = True, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True,
                            timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}\n"
                             f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}")
    return result


def wait_until(what: str, check: Callable[[], bool], timeout: float, every: float = 1.0
               ) -> float:
    """Seconds until ``check()`` held (it is asked again every ``every`` s; the engine has
    no event for these), or AssertionError naming ``what``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)
    return time.monotonic() - start


# -- the engine --------------------------------------------------------------------------------


@dataclass
class Engine:
    env: dict[str, str]
    """Environment for docker and compose (DOCKER_HOST)."""
    own: Path | None = None
    """Our dockerd's directory, when we started one."""
    pid: int | None = None
    host_state: dict[str, str] = field(default_factory=dict)
    """What dockerd changes on the host (FORWARD policy, ip_forward), restored at the end."""

    def docker(self, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return run(["docker", *args], env=self.env, **kw)  # type: ignore[arg-type]


def _answers(env: dict[str, str]) -> bool:
    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
        return run(["docker", "info", "--format", "{{.ServerVersion}}"], env=env, timeout=10,
                   check=False).returncode == 0
    return False


def _stale_bridge_rules() -> list[tuple[str, str]]:
    """(table, rule) of iptables rules naming a Docker bridge that no longer exists."""
    found = []
    for table in ("nat", "filter"):
        listing = run(["iptables", "-t", table, "-S"], check=False, timeout=30).stdout
        for line in listing.splitlines():
            names = re.findall(r"-[io] (docker0|br-[0-9a-f]{12})\b", line)
            if line.startswith("-A ") and any(not Path(f"/sys/class/net/{n}").exists()
                                              for n in names):
                found.append((table, line[3:]))
    return found


def _remove_stale_bridge_rules() -> None:
    if shutil.which("iptables") is None:
        return
    for table, rule in _stale_bridge_rules():
        run(["iptables", "-t", table, "-D", *rule.split()], check=False, timeout=30)


def _other_dockerd_running() -> bool:
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() == "dockerd":
                return True
    return False


def _remove_docker_chains() -> None:
    """The DOCKER* chains (and the jumps to them) our dockerd added, once no dockerd runs."""
    if shutil.which("iptables") is None or _other_dockerd_running():
        return
    for table in ("nat", "filter"):
        listing = run(["iptables", "-t", table, "-S"], check=False, timeout=30).stdout
        for line in listing.splitlines():
            if line.startswith("-A ") and re.search(r"-j DOCKER(-[A-Z0-9-]+)?\b", line) \
                    and not line.startswith("-A DOCKER"):
                run(["iptables", "-t", table, "-D", *line[3:].split()], check=False, timeout=30)
        for chain in re.findall(r"^-N (DOCKER[A-Z0-9-]*)$", listing, flags=re.M):
            run(["iptables", "-t", table, "-F", chain], check=False, timeout=30)
        for chain in re.findall(r"^-N (DOCKER[A-Z0-9-]*)$", listing, flags=re.M):
            run(["iptables", "-t", table, "-X", chain], check=False, timeout=30)


FORWARDING = Path("/proc/sys/net/ipv4/ip_forward")


def _host_state() -> dict[str, str]:
    state = {"ip_forward": FORWARDING.read_text().strip()}
    if shutil.which("iptables") is not None:
        policy = run(["iptables", "-S", "FORWARD"], check=False, timeout=30).stdout.split("\n")[0]
        if policy.startswith("-P FORWARD "):
            state["forward_policy"] = policy.split()[-1]
    return state


def _restore_host_state(state: dict[str, str]) -> None:
    if "forward_policy" in state and not _other_dockerd_running():
        run(["iptables", "-P", "FORWARD", state["forward_policy"]], check=False, timeout=30)
    if "ip_forward" in state:
        with contextlib.suppress(OSError):
            FORWARDING.write_text(state["ip_forward"])


def _start_dockerd(directory: Path) -> Engine:
    socket_path = directory / "docker.sock"
    host_state = _host_state()
    env = {**os.environ, "DOCKER_HOST": f"unix://{socket_path}"}
    log = (directory / "dockerd.log").open("wb")
    process = subprocess.Popen(
        ["dockerd", "--data-root", str(directory / "data"), "--exec-root",
         str(directory / "exec"), "--pidfile", str(directory / "dockerd.pid"),
         "-H", f"unix://{socket_path}", "--bridge=none"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()  # the child has its own descriptor
    engine = Engine(env, directory, process.pid, host_state)
    try:
        wait_until("dockerd answering", lambda: process.poll() is None and _answers(env),
                   ENGINE_START, every=0.5)
    except AssertionError:
        _stop_dockerd(engine)
        tail = (directory / "dockerd.log").read_text(errors="replace")[-1500:]
        pytest.skip(f"no Docker engine could be started (dockerd: {tail.strip()})")
    return engine


def _stop_dockerd(engine: Engine) -> None:
    if engine.pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(engine.pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(engine.pid, os.WNOHANG)
        except ChildProcessError:
            break
        if done:
            break
        time.sleep(0.2)  # dockerd stops its containers first: up to its shutdown timeout
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(engine.pid, signal.SIGKILL)
    engine.pid = None
    _remove_stale_bridge_rules()
    _remove_docker_chains()
    _restore_host_state(engine.host_state)
    if engine.own is not None:
        # Mounts under the data root are gone with a clean stop; unmount any left.
        mounts = Path("/proc/mounts").read_text().split("\n")
        for line in reversed(mounts):
            parts = line.split()
            if len(parts) > 1 and parts[1].startswith(str(engine.own)):
                run(["umount", "-l", parts[1]], check=False, timeout=30)
        shutil.rmtree(engine.own, ignore_errors=True)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    if shutil.which("docker") is None:
        pytest.skip("no docker client (scripts/install-peers.sh installs docker.io)")
    env = dict(os.environ)
    if _answers(env):
        yield Engine(env)
        return
    if shutil.which("dockerd") is None or os.geteuid() != 0:
        pytest.skip("no Docker engine running, and dockerd cannot be started here "
                    "(needs root and docker.io)")
    # Two labs at once share the fixed subnets and the host's DOCKER iptables chains (a
    # dockerd starting rewrites them): calls then cross networks through the host (david's
    # pair host/prflx, "172.28.1.1 is not a trusted host"). One at a time, then.
    try:
        wait_until("another dockerd (another Docker lab) stopped",
                   lambda: not _other_dockerd_running(), OTHER_LAB_WITHIN, every=2.0)
    except AssertionError as error:
        pytest.fail(f"{error}: the Docker labs of this machine run one at a time")
    directory = Path(tempfile.mkdtemp(prefix="gwd-", dir="/tmp"))  # short: socket paths
    engine = _start_dockerd(directory)
    try:
        yield engine
    finally:
        _stop_dockerd(engine)


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return ["docker", "compose"]


# -- what the build needs, made on the host -------------------------------------------------------


def base_image(engine: Engine, timings: dict[str, float]) -> str:
    """A local Python 3.11 base image (mmdebstrap'd Debian), imported when missing."""
    key = hashlib.sha256(json.dumps(BASE_RECIPE, sort_keys=True).encode()).hexdigest()[:12]
    tag = f"gateway-emulator-base:{key}"
    if engine.docker("image", "inspect", tag, check=False).returncode == 0:
        return tag
    tarball = CACHE / "docker-base" / f"{key}.tar"
    if not tarball.exists():
        if shutil.which("mmdebstrap") is None:
            raise AssertionError("no base image can be pulled and mmdebstrap is missing "
                                 "(scripts/install-peers.sh installs it)")
        started = time.monotonic()
        tarball.parent.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(f".{uuid.uuid4().hex[:6]}.part")
        try:
            run(["mmdebstrap", f"--variant={BASE_RECIPE['variant']}",
                 f"--include={','.join(BASE_RECIPE['include'])}",
                 "--aptopt=APT::Install-Recommends \"false\"",
                 "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*",
                 "--format=tar", str(BASE_RECIPE["suite"]), str(partial),
                 str(BASE_RECIPE["mirror"])], timeout=900)
            partial.rename(tarball)
        finally:
            partial.unlink(missing_ok=True)
        timings["base_mmdebstrap_s"] = time.monotonic() - started
    started = time.monotonic()
    engine.docker("import", str(tarball), tag)
    timings["base_import_s"] = time.monotonic() - started
    return tag


def wheels(target: Path, timings: dict[str, float]) -> None:
    """Every pinned dependency as a wheel for the image's Python (3.11, this machine's
    architecture), cached under ~/.cache keyed by constraints.txt, copied to ``target``."""
    constraints = (ROOT / "constraints.txt").read_bytes()
    cached = CACHE / "wheels" / hashlib.sha256(constraints).hexdigest()[:12]
    if not (cached / ".complete").exists():
        started = time.monotonic()
        machine = platform.machine()
        platforms = [f"--platform=manylinux_2_{n}_{machine}" for n in (17, 26, 28)]
        run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(cached),
             "--only-binary=:all:", "--python-version=3.11", "--implementation=cp",
             "--abi=cp311", f"--platform=manylinux2014_{machine}", *platforms,
             "--requirement", str(ROOT / "constraints.txt")], timeout=900)
        (cached / ".complete").touch()
        timings["wheels_download_s"] = time.monotonic() - started
    shutil.copytree(cached, target)


# -- the lab -------------------------------------------------------------------------------------


@dataclass
class ComposeLab:
    engine: Engine
    env: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)

    def compose(self, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return run([*compose_command(), *args], env=self.env, **kw)  # type: ignore[arg-type]

    def up(self, attempts: int = 3) -> None:
        """`up -d` with the status page on a free host port; another port when someone
        took it between the pick and Docker's bind (other suites run alongside)."""
        for attempt in range(attempts):
            self.env["GATEWAY_STATUS_PORT"] = str(
                random_free_port("127.0.0.1", socket.SOCK_STREAM))
            result = self.compose("up", "-d", check=False)
            if result.returncode == 0:
                return
            if "address already in use" not in result.stderr or attempt == attempts - 1:
                raise AssertionError(f"compose up exited {result.returncode}:\n"
                                     f"{result.stderr[-4000:]}")

    def containers(self) -> dict[str, str]:
        """Service -> container id of the running project."""
        ids = self.compose("ps", "-q").stdout.split()
        found = {}
        for cid in ids:
            labels = self.engine.docker(
                "inspect", "--format",
                '{{index .Config.Labels "com.docker.compose.service"}}', cid).stdout.strip()
            found[labels] = cid
        return found

    def health(self) -> dict[str, str]:
        """Service -> health status of every long-running service."""
        states = {}
        for service, cid in self.containers().items():
            if service in ("certs", "demo"):
                continue
            states[service] = self.engine.docker(
                "inspect", "--format", "{{if .State.Health}}{{.State.Health.Status}}"
                "{{else}}{{.State.Status}}{{end}}", cid).stdout.strip()
        return states

    def describe_unhealthy(self) -> str:
        lines = []
        for service, cid in self.containers().items():
            inspect = self.engine.docker("inspect", "--format", "{{json .State}}", cid,
                                         check=False).stdout
            logs = self.engine.docker("logs", "--tail", "15", cid, check=False)
            lines.append(f"== {service}: {inspect[:600]}\n{logs.stdout[-1500:]}"
                         f"{logs.stderr[-1500:]}")
        return "\n".join(lines)


@pytest.fixture(scope="module")
def lab(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeLab]:
    timings: dict[str, float] = {}
    project = f"gwt{uuid.uuid4().hex[:8]}"
    context_wheels = ROOT / "build" / f"docker-wheels-{project}"
    env = {**engine.env, "COMPOSE_PROJECT_NAME": project,
           "PIP_WHEELS": str(context_wheels.relative_to(ROOT))}
    lab = ComposeLab(engine, env, timings)
    try:
        started = time.monotonic()
        env["BASE_IMAGE"] = base_image(engine, timings)
        timings["base_s"] = time.monotonic() - started
        started = time.monotonic()
        wheels(context_wheels, timings)
        timings["wheels_s"] = time.monotonic() - started
        started = time.monotonic()
        lab.compose("build")
        timings["build_s"] = time.monotonic() - started
        shutil.rmtree(context_wheels, ignore_errors=True)
        started = time.monotonic()
        lab.up()
        try:
            wait_until("every service healthy",
                       lambda: (h := lab.health()) != {} and all(
                           s == "healthy" for s in h.values()), HEALTHY_WITHIN)
        except AssertionError as error:
            raise AssertionError(f"{error}: {lab.health()}\n{lab.describe_unhealthy()}"
                                 ) from None
        timings["up_until_healthy_s"] = time.monotonic() - started
        yield lab
    finally:
        shutil.rmtree(context_wheels, ignore_errors=True)
        lab.compose("--profile", "demo", "down", "-v", "--rmi", "all", "--remove-orphans",
                    check=False)
        if engine.own is None and "BASE_IMAGE" in env:
            engine.docker("rmi", env["BASE_IMAGE"], check=False)
        logger.info("docker lab timings: %s", json.dumps(timings))


def test_every_service_is_healthy_and_the_status_page_answers(lab: ComposeLab) -> None:
    health = lab.health()
    assert set(health) >= {"gateway", "turn", "lync-fe", "lync-edge", "cucm", "imp",
                           "endpoint-3001", "endpoint-3002", "lync-client-alice",
                           "lync-client-david"}, health
    assert all(state == "healthy" for state in health.values()), health
    port = lab.env["GATEWAY_STATUS_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as answer:
        assert answer.status == 200
        assert b"CUCM Neighbor" in answer.read()
    # The health probes complete their TLS handshakes: no warning in the servers' logs.
    containers = lab.containers()
    for service in ("lync-fe", "imp", "lync-edge", "cucm", "turn"):
        logs = lab.engine.docker("logs", containers[service])
        warnings = [line for line in (logs.stdout + logs.stderr).splitlines()
                    if " WARNING " in line or " ERROR " in line]
        assert not warnings, f"{service}: {warnings}"


def test_demo_matrix_passes_between_the_containers(lab: ComposeLab,
                                                   record_property: Callable[..., None]
                                                   ) -> None:
    started = time.monotonic()
    result = lab.compose("--profile", "demo", "run", "--rm", "demo", "--json", check=False)
    lab.timings["demo_s"] = time.monotonic() - started
    record_property("timings", json.dumps(lab.timings))
    document = json.loads(result.stdout[result.stdout.index("{"):])
    calls = document["calls"]
    # Every row of `make lab`'s matrix, then the IM row.
    assert document["failed"] == 0 and len(calls) == len(MATRIX) + 1, result.stdout + result.stderr
    for row in calls:
        assert row["result"] == "passed", row
        if row["ice_pair"] is not None:  # a media row: RTP both ways
            assert row["packets"]["to_callee"] >= 10 and row["packets"]["to_caller"] >= 10, row
    (external,) = [row for row in calls if row["caller"].startswith("david")]
    assert "relay" in external["ice_pair"].split("/"), external
    assert result.returncode == 0


# Run in the demo container: endpoint 3001 calls david (through CUCM, the gateway, the FE and
# the Edge, media through the relays), then hangs up from the video side.
INTO_DAVID = """
import asyncio, json
from lab.control import RemoteParty
async def main():
    endpoint, david = RemoteParty("172.28.3.21", 7000), RemoteParty("172.28.5.31", 7000)
    offered = (await david.status())["incoming"]
    call = await endpoint.call("david.jones@example.com")
    await call.wait_connected(15)
    answered = david.offered_after(offered)
    await answered.wait_media(both_ways=True, min_packets=10, timeout=15)
    await call.wait_media(both_ways=True, min_packets=10, timeout=15)
    pair = answered.media().ice_pair  # before the hangup closes ICE
    await call.hangup()
    for _ in range(50):  # until the BYE reached david (his side ends), 5 s at most
        if await answered.refresh() == "ended":
            break
        await asyncio.sleep(0.1)
    print(json.dumps({"david": answered.state, "pair": pair}))
asyncio.run(main())
"""


def test_the_video_side_calls_david_and_hangs_up(lab: ComposeLab) -> None:
    """In-dialog requests from the inside (ACK, BYE) reach the external client: the Edge
    Record-Routes its internal leg toward the FE, which cannot reach the external network."""
    result = lab.compose("--profile", "demo", "run", "--rm", "--entrypoint", "python", "demo",
                         "-c", INTO_DAVID, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["david"] == "ended" and "relay" in report["pair"].split("/"), report


def test_calls_work_again_seconds_after_cucm_restarts(lab: ComposeLab,
                                                      record_property: Callable[..., None]
                                                      ) -> None:
    started = time.monotonic()
    lab.compose("restart", "cucm")
    restarted = time.monotonic()

    def registered() -> bool:
        return all(lab.compose("exec", "-T", service, "gateway", "probe",
                               f"control:{address}:7000", check=False).returncode == 0
                   for service, address in (("endpoint-3001", "172.28.3.21"),
                                            ("endpoint-3002", "172.28.3.22")))

    wait_until("endpoints registered again", registered, RECOVERY_WITHIN, every=0.5)
    call = lab.compose("exec", "-T", "lync-client-alice", *CLIENT_ALICE,
                       "--call", "3002@video.example.com", "--duration", "1", check=False)
    lab.timings["cucm_restart_s"] = restarted - started
    lab.timings["restart_until_call_s"] = time.monotonic() - restarted
    record_property("timings", json.dumps(lab.timings))
    report = json.loads(call.stdout.strip().splitlines()[-1])
    assert call.returncode == 0 and report["result"] == "passed", call.stdout + call.stderr
    assert report["packets"]["sent"] >= 10 and report["packets"]["received"] >= 10, report
    assert lab.timings["restart_until_call_s"] < RECOVERY_WITHIN
