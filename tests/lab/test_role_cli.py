"""lab.role_cli: the pieces every lab role's command line shares."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest

from lab.role_cli import add_config_options, add_verbose_option, announce, run, setup_logging
from sip.transport import Transport, TransportAddress


def test_config_options_parse_into_the_named_dest() -> None:
    p = argparse.ArgumentParser()
    add_config_options(p, config_help="c", set_help="s", config_default=Path("x.toml"),
                       set_dest="overrides")
    add_verbose_option(p)
    args = p.parse_args(["--set", "a=1", "--set", "b=2", "--check-config", "y.toml", "-v"])
    assert args.config == Path("x.toml")
    assert args.overrides == ["a=1", "b=2"]
    assert args.check_config == Path("y.toml")
    assert args.verbose is True


def test_announce_brackets_ipv6_and_ends_with_ready(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("lab.test_role_cli")
    with caplog.at_level(logging.INFO, logger=logger.name):
        announce(logger, [TransportAddress(Transport.TLS, "::1", 5061),
                          ("udp", "127.0.0.1", 3478)], "thing ready")
    assert [r.getMessage() for r in caplog.records] == [
        "listening on tls:[::1]:5061",
        "listening on udp:127.0.0.1:3478",
        "thing ready",
    ]


def test_setup_logging_quiets_named_loggers_unless_verbose() -> None:
    name = "lab.test_role_cli.quiet"
    logging.getLogger(name).setLevel(logging.NOTSET)
    setup_logging(True, quiet={name: logging.ERROR})
    assert logging.getLogger(name).level == logging.NOTSET
    setup_logging(False, quiet={name: logging.ERROR})
    assert logging.getLogger(name).level == logging.ERROR
    logging.getLogger(name).setLevel(logging.NOTSET)


def test_run_maps_oserror_to_1_with_the_program_named(capsys: pytest.CaptureFixture[str]) -> None:
    async def bind() -> int:
        raise OSError(98, "Address already in use")

    async def ok() -> int:
        return 7

    assert run(ok(), "thing") == 7
    assert run(bind(), "thing") == 1
    assert capsys.readouterr().err == "gateway thing: [Errno 98] Address already in use\n"
