"""Small helpers shared by tools: atomic file writes with the user's permissions, file names
fit for text files."""
from __future__ import annotations

import codecs
import contextlib
import json
import os
import tempfile


def _percent_escape(error: UnicodeDecodeError):
    return "".join(f"%{b:02X}" for b in error.object[error.start:error.end]), error.end


codecs.register_error("cellseg_d2.percent", _percent_escape)


def printable(path) -> str:
    """``path`` as text for messages, tables and JSON: a name holding bytes that are not UTF-8
    (copied from an old share, ``caf\\xe9.png``) gets them as %XX (``caf%E9.png``)."""
    return os.fsencode(path).decode("utf-8", "cellseg_d2.percent")


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The permissions open() / mkdir() give a new file / folder under the current umask
    (mkstemp / mkdtemp use 0600 / 0700 whatever the umask is)."""
    return (0o777 if directory else 0o666) & ~current_umask()


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary file name beside ``path`` to write; it is renamed onto ``path`` only if
    the block succeeds, so an error never leaves a half-written output. The file gets the
    umask's permissions."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs):
    """open() through atomic_path: the file appears at ``path`` only once fully written."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def write_json(path: str, obj) -> None:
    with atomic_open(path, "w") as f:
        json.dump(obj, f)


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 2**31 - 1) -> bool:
    """Tell glibc's malloc to keep freed memory for reuse instead of returning it to the OS.

    A CPU training step allocates and frees hundreds of MB of activations and mask targets,
    which glibc would otherwise hand back and page-fault in again the next step (measurements:
    BENCHMARKS.md, training step). Only blocks over ``mmap_threshold`` (32 MB, glibc's
    ceiling) still come from mmap; the heap is trimmed only above ``trim_threshold``
    (mallopt takes a C int: 2 GB at most). Returns False where this is not glibc (macOS,
    musl) or the environment sets CELLSEG_KEEP_FREED_MEMORY=0.
    """
    if os.environ.get("CELLSEG_KEEP_FREED_MEMORY", "1") == "0":
        return False
    import ctypes
    import ctypes.util

    m_trim_threshold, m_mmap_threshold = -1, -3
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018  (glibc only)
    except (OSError, AttributeError):
        return False
    return bool(mallopt(m_mmap_threshold, mmap_threshold)) and bool(
        mallopt(m_trim_threshold, trim_threshold))
