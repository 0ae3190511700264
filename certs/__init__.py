"""The lab PKI: a CA and server/client certificates for every lab host.

Keys are generated on the machine that uses them and never committed.
"""
