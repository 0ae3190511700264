"""Harness for real external peers (SIPp, stunnel): processes, ports, results."""
