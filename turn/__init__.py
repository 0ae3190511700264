"""TURN relay (RFC 8656) and STUN (RFC 8489): sans-IO allocation core, asyncio listeners."""
