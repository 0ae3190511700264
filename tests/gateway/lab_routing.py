"""The lab's routing, as TOML, for tests that write their own gateway config.

The same search rules and transform as gateway/default.toml (a test there checks the
shipped file); tests that need more zones or rules add them after these.
"""

LAB_SEARCH_RULES = r"""
[[search_rules]]
name = "To Microsoft environment"
priority = 100
pattern_type = "regex"
pattern = '.+@example\.com'
target = "To Microsoft destination via B2BUA"

[[search_rules]]
name = "Route to CUCM"
priority = 100
pattern_type = "regex"
pattern = '(3\d{3})@video\.example\.com'
target = "CUCM Neighbor"
"""
"""Microsoft users to the Microsoft zone, 3xxx@video.example.com to the CUCM zone."""

LAB_TRANSFORMS = r"""
[[transforms]]
priority = 5
pattern_type = "regex"
pattern = '(.+):.*'
behavior = "replace"
replace = '\1'
"""
"""Strip a port from the alias before the search rules (`3001@video.example.com:5060`)."""
