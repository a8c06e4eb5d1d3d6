"""Can a local path be a store root? The checks `Store.check_root` runs before any work, so that a store path that can
never hold a store (a symlink loop, a dangling symlink, a path past the filesystem's limits, a place where nothing can
be created such as /proc) is one line naming it, not a traceback at the first write after work began."""
from __future__ import annotations

import errno
import os
import stat
import tempfile

from schemas import StoreError

# the longest path the store adds under its root: `_tmp/<32 hex>~<host>~<pid>.zarr/<array>/c/<i>/<j>` and
# `_lineage/<64 hex>.json.<32 hex>~<host>~<pid>.tmp`, with room for a long host name
STORE_SUFFIX_BYTES = 256


def _limits(path: str) -> tuple[int, int]:
    """(PATH_MAX, NAME_MAX) of the filesystem holding `path` (4096, 255 where pathconf cannot say)."""
    probe = path
    while probe and not os.path.isdir(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    try:
        return os.pathconf(probe or "/", "PC_PATH_MAX"), os.pathconf(probe or "/", "PC_NAME_MAX")
    except (OSError, ValueError):
        return 4096, 255


def _fail(root: str, problem: str) -> StoreError:
    shown = root if len(root) <= 120 else f"{root[:60]}...{root[-40:]}"
    return StoreError(f"store {shown} {problem}; check --store or $QUANTA_STORE")


def _check_links(root: str) -> str:
    """The nearest existing directory at or above `root`, after refusing a symlink loop or a dangling symlink on the
    way (ELOOP / ENOENT through a link)."""
    path = root
    while True:
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):  # a file on the way: Store.check_root names it
            parent = os.path.dirname(path)
            if parent == path:
                return path
            path = parent
            continue
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise _fail(root, f"cannot be reached: a symlink loop on its path ({path})") from None
            raise _fail(root, f"cannot be reached: {path}: {e.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            try:
                os.stat(path)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise _fail(root, f"is a symlink loop ({path} -> {os.readlink(path)})") from None
                raise _fail(root, f"is a dangling symlink ({path} -> {os.readlink(path)}, which does not "
                                  "exist)") from None
        return path


def local_root_problem(root: str, *, writing: bool = True) -> None:
    """StoreError (one line naming the path) when the local directory `root` cannot be a store root; with `writing`,
    also when no directory can be created where it is (or, if it exists, in it)."""
    path_max, name_max = _limits(root)
    size = len(os.fsencode(root))
    if size + STORE_SUFFIX_BYTES > path_max:
        raise _fail(root, f"is a {size:,}-byte path: with the store's own names under it ({STORE_SUFFIX_BYTES} "
                          f"bytes) it passes this system's limit of {path_max:,} bytes per path; use a shorter one")
    longest = max((len(os.fsencode(part)) for part in root.split(os.sep)), default=0)
    if longest > name_max:
        raise _fail(root, f"has a {longest:,}-byte name in it; this filesystem allows {name_max} per name")
    base = _check_links(root)
    if not os.path.isdir(base):
        return  # a file on the way: Store.check_root says which
    if writing:
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".quanta-probe-", dir=base))
        except OSError as e:
            where = "in it" if base == root else f"in {base}, the nearest existing directory above it"
            raise _fail(root, f"cannot hold a store: no directory can be created {where} ({e.strerror})") from None
