"""`spotpool demo`: everything on one machine, and a pool converging, losing instances and healing.

`render` draws the live view (pure functions), `stack` starts and stops what the demo runs,
`scenario` is the command and its story.
"""

from spotpool.demo.scenario import cli

__all__ = ["cli"]
