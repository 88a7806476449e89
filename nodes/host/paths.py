"""Safe resolution of a file name inside a set of model folders.

Refuses what ComfyUI's ``folder_paths`` refuses: absolute names, ``..`` that
leaves the folder, and symbolic links that lead out of it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from ...unet_core.errors import HostError, InputError


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def resolve_inside(roots: Iterable[Path], name: str, folder: str) -> Path:
    """Resolve ``name`` against the first root that holds it, refusing escapes."""
    roots = list(roots)
    if not name or "\x00" in name:
        raise HostError(f"{folder}: empty or invalid file name {name!r}")
    candidate = Path(name)
    if candidate.is_absolute() or candidate.drive:
        raise HostError(f"{folder}: {name!r} is an absolute path; give a name inside the {folder} folder")
    for root in roots:
        real_root = root.resolve()
        target = (root / candidate).resolve()
        if not _inside(target, real_root):
            raise HostError(f"{folder}: {name!r} leads outside the {folder} folder ({root})")
        if target.is_file():
            return target
    searched = ", ".join(str(r) for r in roots) or "(no folder configured)"
    raise HostError(f"{folder}: no file {name!r} in {searched}")


def list_model_files(roots: Iterable[Path], extensions: tuple[str, ...]) -> list[str]:
    """Relative names (posix separators) of files under ``roots`` ending in ``extensions``.

    Files reached through a symbolic link that leaves its root are not listed.
    """
    names: set[str] = set()
    for root in roots:
        if not root.is_dir():
            continue
        real_root = root.resolve()
        for path in root.rglob("*"):
            if not path.is_file() or not path.name.lower().endswith(extensions):
                continue
            if not _inside(path.resolve(), real_root):
                continue
            names.add(path.relative_to(root).as_posix())
    return sorted(names, key=str.lower)


def check_prefix(root: Path, prefix: str, node: str) -> Path:
    """``root/prefix`` for a new file, refusing prefixes that leave ``root``; creates nothing.

    A prefix is a relative name such as ``unet_lab/name`` (no ``..``, not absolute); a sub-folder
    that is a symbolic link leading out of ``root`` is refused too. Nodes call it from
    ``VALIDATE_INPUTS`` and before heavy work, so a bad name stops the run before anything is
    computed.
    """
    cleaned = (prefix or "").strip().replace("\\", "/")
    rel = PurePosixPath(cleaned)
    if not cleaned or rel.is_absolute() or any(part in ("..", "") for part in cleaned.split("/")):
        raise InputError(f"{node}: filename_prefix {prefix!r} must be a relative name such as 'unet_lab/name' "
                         "(no '..', no absolute path)")
    target = root.joinpath(*rel.parts)
    if not _inside(target.parent.resolve(), root.resolve()):
        raise InputError(f"{node}: filename_prefix {prefix!r} leads outside the folder {root}")
    return target


def save_target(root: Path, prefix: str, node: str) -> Path:
    """``check_prefix``, then the target's folder is created. The caller adds the numbering and
    suffix (``writer.next_free_path``)."""
    target = check_prefix(root, prefix, node)
    target.parent.mkdir(parents=True, exist_ok=True)
    return target
