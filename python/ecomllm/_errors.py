"""Error helpers shared by the loaders."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator


@contextlib.contextmanager
def naming_file(path: str | os.PathLike) -> Iterator[None]:
    """Re-raises a ValueError whose message does not mention ``path`` with ``"{path}: "`` in front,
    as the same type where it takes a single message (else ValueError): the core's checks of a
    file's contents (shapes, config values) know the tensor or field, not the file it came from."""
    try:
        yield
    except ValueError as e:
        shown = os.fspath(path)
        if shown in str(e):
            raise
        message = f"{shown}: {e}"
        try:
            renamed = type(e)(message)
        except TypeError:
            renamed = ValueError(message)
        raise renamed from None
