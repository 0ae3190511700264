"""Builds the media relay's optional native packet path (media/relay_native/_relay.c against
the system libsrtp2: Debian libsrtp2-dev). Everything else is in pyproject.toml. The
extension is optional: where it cannot be built, media.relay falls back to the pure-Python
path (media/relay_py.py)."""

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
    depends=["media/relay_native/loadgen.h"],
    extra_compile_args=["-O2", "-Wall", "-Werror", *_pkg_config("--cflags")],
    extra_link_args=_pkg_config("--libs") or ["-lsrtp2"],
    optional=True,
)])
