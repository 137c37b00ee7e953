"""Small helpers shared by the roles."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def unwrap_group() -> Iterator[None]:
    """Re-raise a task group's lone error as itself, not inside an ExceptionGroup.

    Users of ``Gateway``/``Client`` should be able to ``except AccessDenied``.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        found = errors_in(group)
        if len(found) == 1:
            raise found[0] from group
        raise


def errors_in(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(errors_in(exc))
        else:
            out.append(exc)
    return out
