"""Stateful-proxy pieces (RFC 3261 §16) shared by the lab's proxies (CUCM, Lync FE/Edge)."""

from __future__ import annotations

from sip.message import Response
from sip.stack import SipStack
from sip.transaction_server import ServerState, ServerTransaction

__all__ = ["relay_response"]


def relay_response(stack: SipStack, transaction: ServerTransaction, response: Response) -> None:
    """Send a downstream response upstream on ``transaction`` without our Via (§16.7).

    Nothing is sent for a 100 (hop by hop, §16.7 step 5), once the transaction is past
    Trying/Proceeding, or when our Via was the only one; a ``ProtocolError`` from the send
    propagates for the caller to log.
    """
    if response.status == 100:
        return
    if transaction.state not in (ServerState.TRYING, ServerState.PROCEEDING):
        return
    back = response.copy()
    back.headers.pop_first("Via")
    if not back.headers.getlist("Via"):
        return
    stack.send_response(transaction, back)
