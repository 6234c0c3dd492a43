"""A virtual X screen (Xvfb) for napari where there is no display: napari draws with OpenGL,
which Qt's offscreen platform does not provide."""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import tempfile


def _die_with_parent():
    # Linux: Xvfb gets SIGTERM when this process ends, however it ends.
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def ensure_display(size: str = "1400x900x24") -> str:
    """The DISPLAY to use: the existing one, else a fresh Xvfb's, started once and left
    running while this process lives (Qt keeps its connection until the process exits; closing
    the screen under it is a fatal X error). RuntimeError where there is neither."""
    if os.environ.get("DISPLAY"):
        return os.environ["DISPLAY"]
    if not shutil.which("Xvfb"):
        raise RuntimeError("no DISPLAY and no Xvfb to make one (Debian: apt-get install xvfb)")
    read, write = os.pipe()
    subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", size, "-nolisten", "tcp"],
                     pass_fds=(write,), stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    os.close(write)
    with os.fdopen(read) as f:
        number = f.readline().strip()
    if not number:
        raise RuntimeError("Xvfb did not start")
    if not os.environ.get("XDG_RUNTIME_DIR"):  # Qt wants a private one
        os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="xdg_runtime_")
    os.environ["DISPLAY"] = f":{number}"
    return os.environ["DISPLAY"]
