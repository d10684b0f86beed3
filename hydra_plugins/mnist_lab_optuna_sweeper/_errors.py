"""The sweeper's one error type: a mistake in the sweeper config or search space, or a sweep that
cannot go on, printed by Hydra as its message alone (one line), exit status 1."""

from __future__ import annotations

from hydra.errors import CompactHydraException


class SweeperError(CompactHydraException):
    """Printed by Hydra as its message alone (one line), exit status 1."""
