"""The gateway B2BUA: zones, search rules, call control, status, and the `gateway` CLI."""
