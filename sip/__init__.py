"""SIP (RFC 3261): sans-IO message, transaction and dialog layers; asyncio transports."""
