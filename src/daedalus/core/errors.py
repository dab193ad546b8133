"""The one domain error type.

Every mistake a user can make in their input surfaces as a `DaedalusError`
whose message names the file, the field and the fix; the CLI prints it on one
line and exits non-zero, never a traceback from inside a library.
"""

from __future__ import annotations


class DaedalusError(Exception):
    """A user-facing error: one line naming file, field and fix."""

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))


def at(path: object, field: str | None, problem: str, fix: str | None = None) -> DaedalusError:
    """Build the canonical `<file>: <field>: <problem> (fix: <fix>)` error."""
    where = f"{path}: {field}" if field else f"{path}"
    msg = f"{where}: {problem}"
    if fix:
        msg += f" (fix: {fix})"
    return DaedalusError(msg)
