"""Builds the optional native packet paths: the media relay's (media/relay_native/_relay.c
against the system libsrtp2: Debian libsrtp2-dev) and the TURN relay's batched UDP path
(turn/fastpath_native/_fastpath.c, gcc and the Python headers only). Everything else is in
pyproject.toml. Both are optional: where one cannot be built, media.relay falls back to the
pure-Python path (media/relay_py.py) and turn.server to its asyncio transports. What both
share (addresses, the clock, a sendmmsg entry) is in native/udp_common.h."""

import shutil
import subprocess

from setuptools import Extension, setup


def _pkg_config(*args: str) -> list[str]:
    if shutil.which("pkg-config") is None:
        return []
    done = subprocess.run(["pkg-config", *args, "libsrtp2"], capture_output=True, text=True)
    return done.stdout.split() if done.returncode == 0 else []


setup(ext_modules=[Extension(
    "media.relay_native._relay",
    sources=["media/relay_native/_relay.c"],
    include_dirs=["native"],
    depends=["media/relay_native/loadgen.h", "native/udp_common.h"],
    extra_compile_args=["-O2", "-Wall", "-Werror", *_pkg_config("--cflags")],
    extra_link_args=_pkg_config("--libs") or ["-lsrtp2"],
    optional=True,
), Extension(
    "turn.fastpath_native._fastpath",
    sources=["turn/fastpath_native/_fastpath.c"],
    include_dirs=["native"],
    depends=["native/udp_common.h"],
    extra_compile_args=["-O2", "-Wall"],
    optional=True,
)])
