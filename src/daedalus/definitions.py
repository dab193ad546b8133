"""The code location `daedalus`: the one module `dagster dev -w workspace.yaml`, `dg dev`,
`dg check defs` and `dg list defs` load (workspace.yaml and `[tool.dg.project]` both name it).

`defs` is built lazily, when a Dagster tool asks for it, not at import. Its paths resolve
against the working directory, like the `daeda` CLI: run the tools from the project root.
"""

import dagster as dg

from daedalus.defs import build_defs


@dg.definitions
def defs() -> dg.Definitions:
    return build_defs()
