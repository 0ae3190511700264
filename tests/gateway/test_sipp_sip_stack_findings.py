"""SIP-stack (`sip/`) behaviour found wrong while reviewing call control against SIPp, and
fixed in the stack: each test failed before its fix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from certs.pki import LabPKI
from tests.gateway.conftest import RunningGateway, require_peers, run_gateway
from tests.gateway.test_sipp_call_features import both_succeeded, cucm_call

pytestmark = pytest.mark.peer


@pytest.fixture(scope="module")
def gateway(pki: LabPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    require_peers()
    with run_gateway(pki, tmp_path_factory.mktemp("gateway"),
                     overrides=["b2bua.ice_timeout=120"]) as running:
        yield running


def test_a_second_forks_2xx_is_acked_and_byed(
    gateway: RunningGateway, pki: LabPKI, tmp_path: Path
) -> None:
    """CUCM calls alice; the FE's fork is answered by two of her endpoints (200 with To
    tag "fe" and 200 with To tag "feB"). The gateway must ACK both and BYE the second,
    then carry on in the first (lync_fe_uas_forked.xml fails otherwise)."""
    caller, callee, context = cucm_call(gateway, pki, tmp_path, "cucm_uac.xml",
                                        fe_file="lync_fe_uas_forked.xml")
    both_succeeded(caller, callee, context)
