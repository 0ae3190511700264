"""Messages per second for parse + serialise of a Lync INVITE with a multipart SDP body.

Run: .venv/bin/python bench/sip_parse.py [--seconds N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sip.message import make_response, parse_message
from sip.multipart import parse_multipart

SAMPLE = Path(__file__).resolve().parent.parent / "tests" / "data" / "sip" / "lync_invite.sip"


def rate(label: str, fn: object, seconds: float) -> float:
    assert callable(fn)
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(100):
            fn()
        n += 100
        now = time.perf_counter()
        if now >= deadline:
            break
    per_s = n / (now - start)
    print(f"{label:<48} {per_s:>10,.0f} msg/s  {1e6 / per_s:8.1f} us/msg")  # noqa: T201
    return per_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args()
    data = SAMPLE.read_bytes()
    message = parse_message(data)
    print(f"sample: {SAMPLE.name}, {len(data)} bytes, {len(message.headers)} headers, "  # noqa: T201
          f"{len(message.body)} byte multipart body")

    def parse_only() -> None:
        parse_message(data)

    def parse_encode() -> None:
        parse_message(data).encode()

    def b2bua_touch() -> None:
        # What a B2BUA leg does with an INVITE: read the dialog headers and the SDP parts,
        # answer 100 Trying, and forward a copy with its own Via on top.
        m = parse_message(data)
        m.via, m.from_, m.to, m.call_id, m.cseq, m.contact, m.record_route  # noqa: B018
        parse_multipart(m.content_type or "", m.body)
        make_response(m, 100).encode()  # type: ignore[arg-type]
        m.headers.prepend("Via", "SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKbench")
        m.encode()

    rate("parse", parse_only, args.seconds)
    rate("parse + serialise", parse_encode, args.seconds)
    rate("parse + headers + multipart + 100 + forward", b2bua_touch, args.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
