"""Lab simulators: Lync FE / Edge / clients, Unified CM, SIP endpoints, the one-process lab."""
