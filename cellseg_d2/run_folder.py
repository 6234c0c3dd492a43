"""Output folders that never lose a user's file.

A tool writes its run into a folder that is new, empty, or holds this tool's own earlier run.
Each finished run leaves a record in the folder (MANIFEST: every file and folder it wrote,
with each file's size and modification time). Replacing an earlier run (``--overwrite``)
removes exactly the files of that record, and only when none of them was changed since and
nothing else was put into the folder: otherwise the tool refuses, naming one such file.

Two ways of writing:
- ``staged_run``: the run is written to a hidden folder (beside a new output folder, inside an
  existing one) and moved into place only when it is complete, so an interrupted run leaves the
  output folder as it was. An existing folder (an empty one, a symlink, a mount point) is
  written into, never renamed away.
- ``run_in_place``: for long runs whose files name their own paths (configs, dataset roots,
  checkpoints); the earlier run is removed first and the record written at the end, whether
  the run succeeded or not, so a failed run can be replaced like a finished one.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time

from .utils import default_mode, write_json

MANIFEST = ".cellseg_d2_run.json"
STAGE_PREFIX = ".cellseg_d2_partial."


class OutputFolderError(ValueError):
    pass


def _stat_key(path: str) -> list:
    st = os.lstat(path)
    return [st.st_size, st.st_mtime_ns]


def scan(folder: str, skip_stages: bool = True) -> tuple[dict, list]:
    """({relative file path: [size, mtime_ns]}, [relative folder paths]) of everything under
    ``folder`` but the record itself (and, with ``skip_stages``, leftover staging folders)."""
    files, dirs = {}, []
    for root, subdirs, names in os.walk(folder):
        rel_root = os.path.relpath(root, folder)
        if skip_stages and rel_root == ".":
            subdirs[:] = [d for d in subdirs if not d.startswith(STAGE_PREFIX)]
        for d in subdirs:
            path = os.path.join(root, d)
            rel = os.path.normpath(os.path.join(rel_root, d))
            if os.path.islink(path):  # os.walk does not descend into it: list it as a file
                files[rel] = _stat_key(path)
            else:
                dirs.append(rel)
        for n in names:
            rel = os.path.normpath(os.path.join(rel_root, n))
            if rel != MANIFEST:
                files[rel] = _stat_key(os.path.join(root, n))
    return files, sorted(dirs)


def read_record(folder: str):
    """The record of the run in ``folder``, or None where there is none (or it is unreadable)."""
    try:
        with open(os.path.join(folder, MANIFEST)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    ok = isinstance(record, dict) and isinstance(record.get("files"), dict) \
        and isinstance(record.get("dirs", []), list)
    return record if ok else None


def _write_record(folder: str, tool: str, files: dict, dirs: list, complete: bool = True):
    write_json(os.path.join(folder, MANIFEST),
               {"tool": tool, "complete": complete, "written": time.strftime("%Y-%m-%d %H:%M:%S"),
                "files": files, "dirs": dirs})


def _user_entries(folder: str) -> list:
    """Top-level entries other than the record and leftover staging folders of this project."""
    return sorted(e for e in os.listdir(folder)
                  if e != MANIFEST and not e.startswith(STAGE_PREFIX))


def foreign_entry(folder: str, record: dict):
    """The first file or folder under ``folder`` that ``record`` does not list unchanged
    (a phrase naming it), or None."""
    files, dirs = scan(folder)
    listed_dirs = set(record.get("dirs", []))
    for rel, key in sorted(files.items()):
        if rel not in record["files"]:
            return f"{rel!r}, which it did not write"
        if list(record["files"][rel]) != key:
            return f"{rel!r}, which was changed after it wrote it"
    for rel in dirs:
        if rel not in listed_dirs:
            return f"the folder {rel!r}, which it did not make"
    return None


def check_output_dir(folder: str, tool: str, overwrite: bool) -> None:
    """Refuse (OutputFolderError, one line) an output folder this run may not write: anything
    but a new folder, an empty one, or (with ``overwrite``) one holding only this tool's earlier
    run, unchanged."""
    if not os.path.exists(folder):
        if os.path.islink(folder):
            raise OutputFolderError(f"{folder}: output path is a broken symbolic link")
        return
    if not os.path.isdir(folder):
        raise OutputFolderError(f"{folder}: output path exists and is not a folder")
    entries = _user_entries(folder)
    record = read_record(folder)
    if not entries and record is None:
        return
    if record is None:
        raise OutputFolderError(f"{folder}: output folder holds files this tool did not write "
                                f"(e.g. {entries[0]!r}); choose a new or empty folder")
    if record.get("tool") != tool:
        raise OutputFolderError(f"{folder}: output folder holds a run of {record.get('tool')}, "
                                f"not of {tool}; choose another folder")
    if not overwrite:
        raise OutputFolderError(f"{folder}: output folder holds an earlier run of {tool}; pass "
                                f"--overwrite to replace it, or choose another folder")
    foreign = foreign_entry(folder, record)
    if foreign:
        raise OutputFolderError(f"{folder}: --overwrite replaces only the earlier run of {tool}, "
                                f"but the folder also holds {foreign}; move it away or choose "
                                f"another folder")


def remove_run(folder: str) -> None:
    """Delete exactly the files and folders of the run recorded in ``folder`` (check_output_dir
    checked them) and the record itself."""
    record = read_record(folder)
    if record is None:
        return
    for rel in record["files"]:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, rel))
    for rel in sorted(record.get("dirs", []), key=lambda d: -d.count(os.sep)):
        with contextlib.suppress(FileNotFoundError, OSError):
            os.rmdir(os.path.join(folder, rel))  # only if empty
    os.remove(os.path.join(folder, MANIFEST))


def _move(names, src: str, dst: str) -> list:
    """Move the entries ``names`` of ``src`` into ``dst`` (same file system); returns those
    moved, and on an error moves them back before raising."""
    moved = []
    try:
        for e in names:
            os.replace(os.path.join(src, e), os.path.join(dst, e))
            moved.append(e)
    except OSError:
        for e in reversed(moved):
            with contextlib.suppress(OSError):
                os.replace(os.path.join(dst, e), os.path.join(src, e))
        raise
    return moved


@contextlib.contextmanager
def staged_run(folder: str, tool: str):
    """Yield a hidden folder to write the whole run into (see module docstring). On success
    its contents replace the earlier run in ``folder``; on any error it is removed and
    ``folder`` stays as it was. If the last step (moving the finished run into place) fails,
    the earlier run is left as it was, the new one where it was written, and
    OutputFolderError says where."""
    exists = os.path.isdir(folder)
    try:
        if exists:
            stage = tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=folder)
        else:
            parent = os.path.dirname(os.path.abspath(folder))
            os.makedirs(parent, exist_ok=True)
            stage = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(folder))}"
                                     f"{STAGE_PREFIX}", dir=parent)
        os.chmod(stage, default_mode(directory=True))
    except OSError as e:
        raise OutputFolderError(f"{folder}: cannot write there ({e.strerror})") from None
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    files, dirs = scan(stage, skip_stages=False)
    try:
        if not exists:
            _write_record(stage, tool, files, dirs)
            os.rename(stage, folder)  # atomic; fails if the folder appeared meanwhile
            return
        record = read_record(folder)
        foreign = foreign_entry(folder, record) if record else \
            next((repr(e) for e in _user_entries(folder)), None)
        if foreign:  # something was put into the folder while the run was going on
            raise OutputFolderError(f"the folder now also holds {foreign}")
        old = tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}old.", dir=folder)
        moved = _move(_user_entries(folder), folder, old)
        try:
            _move(sorted(os.listdir(stage)), stage, folder)
        except OSError:
            _move(moved, old, folder)
            raise
        _write_record(folder, tool, files, dirs)
        shutil.rmtree(old, ignore_errors=True)
        os.rmdir(stage)
    except (OSError, OutputFolderError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise OutputFolderError(f"{folder}: the run is complete, but it could not be moved into "
                                f"place ({reason}); its outputs are in {stage}") from None


@contextlib.contextmanager
def run_in_place(folder: str, tool: str):
    """Yield ``folder`` (check_output_dir allowed it) to write a run into directly: its earlier
    run is removed first; when the block ends, however it ends, everything then in the folder
    is recorded as this run's (the folder held nothing else when it began). A folder this made
    and that is still empty is removed again."""
    made = not os.path.isdir(folder)
    if made:
        os.makedirs(folder)
    else:
        remove_run(folder)
    complete = False
    try:
        yield folder
        complete = True
    finally:
        files, dirs = scan(folder)
        if made and not files and not dirs:
            os.rmdir(folder)
        elif files or dirs:
            _write_record(folder, tool, files, dirs, complete)
