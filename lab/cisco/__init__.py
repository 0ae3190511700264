"""The simulated Cisco video side: Unified CM (trunk, registrar, proxy) and an IM&P node."""
