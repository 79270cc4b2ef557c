"""Path containment: the one check that a path stays inside a set of allowed folders.

    resolve_inside(roots, candidate, what="path", hint="") -> Path

`roots` is one folder or several. A relative `candidate` is joined to the first root
where it exists (else to the first root); an absolute one is taken as given. Either
way the result is fully resolved (`..` collapsed, every symlink followed) and must lie
inside one of the resolved roots, or `PathOutsideRoots` (a ValueError) is raised naming
`what`, the value seen, where it resolves and the allowed roots, followed by `hint`.

Used by the ComfyUI nodes to confine their file inputs to ComfyUI's registered folders,
and by the dataset-folder module to keep files listed in a dataset inside its root.
Callers should read and write through the returned path, never through `candidate`, so
a symlink swapped after the check cannot lead elsewhere. Nothing here touches the disk
beyond `os.path.realpath` and existence checks; a missing path is fine as long as it
would lie inside.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["PathOutsideRoots", "resolve_inside"]

PathLike = str | os.PathLike


class PathOutsideRoots(ValueError):
    """A path that resolves outside every allowed root."""

    def __init__(self, message: str, candidate: PathLike, resolved: Path, roots: tuple[Path, ...]):
        super().__init__(message)
        self.candidate = candidate
        self.resolved = resolved
        self.roots = roots


def _roots(roots: PathLike | Iterable[PathLike]) -> tuple[Path, ...]:
    if isinstance(roots, (str, os.PathLike)):
        roots = (roots,)
    return tuple(Path(root).expanduser() for root in roots)


def resolve_inside(roots: PathLike | Iterable[PathLike], candidate: PathLike, what: str = "path",
                   hint: str = "") -> Path:
    """`candidate` resolved (symlinks followed) if it lies inside one of `roots`, else PathOutsideRoots.

    `what` names the value in the message (e.g. "folder" or "metadata.jsonl line 3 file_name");
    `hint` is appended to it (e.g. how to add a root).
    """
    allowed = _roots(roots)
    if not allowed:
        raise ValueError(f"{what}: no allowed folders were given to check {str(candidate)!r} against")
    path = Path(candidate)
    if not path.is_absolute():
        base = next((root for root in allowed if os.path.lexists(root / path)), allowed[0])
        path = base / path
    resolved = Path(os.path.realpath(path))
    real_roots = tuple(Path(os.path.realpath(root)) for root in allowed)
    if any(resolved == root or resolved.is_relative_to(root) for root in real_roots):
        return resolved
    listed = ", ".join(str(root) for root in real_roots)
    message = f"{what} {str(candidate)!r} resolves to {resolved}, which is outside the allowed folders ({listed})"
    raise PathOutsideRoots(message + (f". {hint}" if hint else ""), candidate, resolved, real_roots)
