"""The native batched UDP path (``_fastpath.c``, built by setup.py); ``turn.fastpath`` holds
its interface and pure-Python twin, and picks it where it was built."""
