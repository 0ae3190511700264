"""The lab PKI: a CA and server/client certificates for every lab host (keys are generated, never committed)."""
