"""The module-level `defs` that `dagster dev` and `dg` load, as the code location `daedalus`.

Paths resolve against the working directory, like the `daeda` CLI: run it from the project root.
"""

from daedalus.defs import build_defs

defs = build_defs()
