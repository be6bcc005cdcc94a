"""The one output policy of every command: what cloudkd may write, replace or delete.

- **Ownership.** Every folder cloudkd creates for its output carries :data:`MARK` (``.cloudkd.json``: writer
  "cloudkd", the command, a content kind, time, pid, host). A file cloudkd writes is either inside such a folder or
  listed, with its size and modification time, in the :data:`MANIFEST` (``.cloudkd-files.json``) of its folder.
  Folders cloudkd wrote before the marker existed are known by their own stamp (:data:`STAMPS`: a generated
  dataset's ``synth.json``, a Landsat import's ``landsat_import.json``, an export's ``export.json`` ...).
  ``--force`` replaces only what cloudkd wrote, and only of the same kind; anything else is refused even with
  ``--force``: "... was not written by cloudkd; remove it yourself". An empty folder holds nothing to lose and is
  taken as it is.
- **No overlap.** :func:`outputs_apart` refuses an output equal to, inside, or containing an input (symlinks and
  relative paths resolved), whether or not the input is a dataset.
- **Files.** :func:`check_file` refuses an existing file without ``--force``, and with it one cloudkd did not
  write; the write itself is atomic (:func:`cloudkd.common.io.atomic_write`) and :func:`record_file` then lists it.
- **Replacement on success.** :func:`replace_on_success` builds the new content of a folder beside it and swaps
  it in when the work succeeds (one atomic exchange where the system has one), so a killed or failed replacement
  leaves the old content as it was.
- **Masks folders.** :func:`masks_output` claims a folder for one model's masks (:func:`claim_masks_folder`),
  locks it while they are written, and removes what a failed prediction wrote (another model's masks that
  ``--force`` replaces are swapped out on success only).
- **Locks.** :func:`folder_lock` holds a pid file beside a folder being written: a second writer is refused, a
  lock whose process is gone (same host) is stale and taken over (:func:`running_elsewhere`, the rule synth's
  ``generation.unfinished`` marker uses too).

Every refusal is a :class:`~cloudkd.common.errors.DataError`: one line, exit code 2, nothing changed on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterable, Iterator, Optional, Sequence

from .errors import DataError
from .io import MASKS_RECORD, atomic_write

#: the marker file in every folder cloudkd creates for an output
MARK = ".cloudkd.json"
#: the list of files cloudkd wrote into a folder it did not create (name -> size, mtime, command, kind)
MANIFEST = ".cloudkd-files.json"
#: the marker of a dataset generation that is running or was interrupted (the generators write it first)
UNFINISHED = "generation.unfinished"
#: the stamps of generated datasets (written last by the Sentinel-2 and Landsat generators)
DATASET_STAMP = "synth.json"
LANDSAT_DATASET_STAMP = "synth38.json"
#: the stamp of a Landsat import (written last, in the import's own folder)
IMPORT_STAMP = "landsat_import.json"
#: the report an ONNX export writes last
EXPORT_REPORT = "export.json"
#: what a finished student run (``cloudkd student train/distill``) writes last
STUDENT_RUN_STAMP = "student.json"

#: a folder's own stamp -> the kind of content it shows cloudkd wrote (folders from before the marker existed)
STAMPS: Dict[str, str] = {
    DATASET_STAMP: "dataset",
    LANDSAT_DATASET_STAMP: "landsat-dataset",
    UNFINISHED: "unfinished-dataset",  # a generation running or interrupted: everything in it is the generator's
    IMPORT_STAMP: "landsat-import",
    MASKS_RECORD: "masks",
    EXPORT_REPORT: "onnx-export",
    STUDENT_RUN_STAMP: "student-run",
}

#: what :func:`output_problem` says of an existing path of the wrong kind (also :func:`check_file`'s and
#: :func:`check_folder`'s words)
IS_A_FOLDER = "is a folder; give a file name"
IS_A_FILE = "is a file, not a folder"

#: a lock file younger than this whose content cannot be read yet is its writer's, not stale
_LOCK_GRACE_S = 10.0


def current_command() -> str:
    """The command being run ("cloudkd submission runtime-test"), or "cloudkd (library)" outside the CLI."""
    ctx = None
    try:  # typer 0.2x carries its own click (typer._click): its context is the one the CLI runs in
        from typer._click.globals import get_current_context

        ctx = get_current_context(silent=True)
    except ImportError:  # pragma: no cover - an older typer, which runs on click itself
        pass
    if ctx is None:
        try:
            import click

            ctx = click.get_current_context(silent=True)
        except ImportError:
            pass
    return ctx.command_path if ctx is not None else "cloudkd (library)"


def _note(kind: str, command: Optional[str] = None) -> dict:
    return {"writer": "cloudkd", "command": command or current_command(), "kind": kind,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "pid": os.getpid(), "host": socket.gethostname()}


def _name(path, option: Optional[str]) -> str:
    return f"{option} {path}" if option else str(path)


# ---------------------------------------------------------------------------------------------------------------
# Ownership of folders
# ---------------------------------------------------------------------------------------------------------------
def mark_folder(folder: os.PathLike | str, kind: str, command: Optional[str] = None) -> Path:
    """Write ``folder``'s :data:`MARK` (cloudkd wrote it, which command, what ``kind`` of content)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / MARK, lambda t: Path(t).write_text(json.dumps(_note(kind, command), indent=2) + "\n"))
    return folder


def folder_mark(folder: os.PathLike | str) -> Optional[dict]:
    """What cloudkd recorded of ``folder`` (its :data:`MARK`, else one of its :data:`STAMPS`), or None when
    nothing says cloudkd wrote it."""
    folder = Path(folder)
    try:
        note = json.loads((folder / MARK).read_text())
        if isinstance(note, dict) and note.get("writer") == "cloudkd" and note.get("kind"):
            return note
    except (OSError, ValueError):
        pass
    for name, kind in STAMPS.items():
        if (folder / name).is_file():
            return {"writer": "cloudkd", "kind": kind, "command": f"the writer of its {name}", "stamp": name}
    return None


def _describe(note: dict) -> str:
    when = f" on {note['time']}" if note.get("time") else ""
    return f"{note['kind']} written by {note.get('command')}{when}"


def check_folder(folder: os.PathLike | str, kind: str, force: bool = False, option: Optional[str] = None,
                 also: Sequence[str] = ()) -> str:
    """Whether ``folder`` may receive an output of ``kind``: "new" (absent), "empty" (an empty folder) or
    "replace" (cloudkd's own ``kind``, or one of ``also``, and ``force``). Anything else raises DataError: a file,
    a folder cloudkd did not write (even with ``force``), cloudkd's folder of another kind, or its own kind
    without ``force``. Nothing is changed."""
    folder = Path(folder)
    name = _name(folder, option)
    if not folder.exists() and not folder.is_symlink():
        return "new"
    if not folder.is_dir():
        raise DataError(f"{name}: {IS_A_FILE}")
    note = folder_mark(folder)
    if note is None:
        if not any(folder.iterdir()):
            return "empty"
        raise DataError(f"{name} was not written by cloudkd; remove it yourself (or choose another folder)")
    if note["kind"] not in (kind, *also):
        raise DataError(f"{name}: holds cloudkd's {_describe(note)}, not a {kind}; choose another folder")
    if not force:
        raise DataError(f"{name}: holds a {_describe(note)}; choose another folder, or --force to replace it")
    return "replace"


def remove_tree(path: os.PathLike | str) -> None:
    """Delete ``path`` (a file, a link or a folder, read-only parts included), never following a link."""
    path = Path(path)

    def writable_then_retry(func, p, _exc):
        for q in (Path(p).parent, Path(p)):
            try:
                if not q.is_symlink():
                    q.chmod(q.stat().st_mode | stat.S_IWUSR | stat.S_IXUSR | stat.S_IRUSR)
            except OSError:
                pass
        func(p)

    if path.is_symlink() or not path.is_dir():
        if path.exists() or path.is_symlink():
            try:
                path.unlink()
            except PermissionError:
                writable_then_retry(os.unlink, path, None)
        return
    try:
        path.chmod(path.stat().st_mode | stat.S_IWUSR | stat.S_IXUSR | stat.S_IRUSR)
    except OSError:
        pass
    shutil.rmtree(path, onerror=writable_then_retry)


def claim_folder(folder: os.PathLike | str, kind: str, force: bool = False, option: Optional[str] = None,
                 command: Optional[str] = None, also: Sequence[str] = ()) -> Path:
    """Make ``folder`` ready for an output of ``kind`` (:func:`check_folder` decides): created, or emptied when it
    is cloudkd's own and ``force``, then marked. Returns ``folder``."""
    folder = Path(folder)
    if check_folder(folder, kind, force, option, also) == "replace":
        for sub in folder.iterdir():
            remove_tree(sub)
    return mark_folder(folder, kind, command)


# ---------------------------------------------------------------------------------------------------------------
# Replacement on success
# ---------------------------------------------------------------------------------------------------------------
def build_path(folder: os.PathLike | str) -> Path:
    """Where the new content of ``folder`` is built before :func:`swap_in` (a hidden sibling)."""
    folder = Path(folder).absolute()
    return folder.parent / f".{folder.name}.cloudkd-new"


def _exchange(a: Path, b: Path) -> bool:
    """Swap the two existing paths ``a`` and ``b`` in one step (Linux renameat2 RENAME_EXCHANGE); False where the
    system cannot."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # pragma: no cover - not Linux / old libc
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def swap_in(new: os.PathLike | str, folder: os.PathLike | str) -> Path:
    """Put the folder ``new`` (built beside ``folder``, on the same file system) in the place of ``folder``, then
    delete the old content. Returns ``folder``."""
    new, folder = Path(new), Path(folder)
    if not folder.exists() and not folder.is_symlink():
        os.replace(new, folder)
        return folder
    if _exchange(new, folder):
        remove_tree(new)  # now the old content
        return folder
    old = folder.parent / f".{folder.name}.cloudkd-old"  # pragma: no cover - systems without an exchange
    remove_tree(old)
    os.replace(folder, old)
    os.replace(new, folder)
    remove_tree(old)
    return folder


@contextmanager
def replace_on_success(folder: os.PathLike | str, build: Optional[os.PathLike | str] = None) -> Iterator[Path]:
    """Build the new content of ``folder`` in ``build`` (default :func:`build_path`) and :func:`swap_in` it when
    the block succeeds; when it fails the build is removed and ``folder`` is as it was (a killed process leaves
    only the build, which the next replacement removes first). Hold ``folder``'s :func:`folder_lock` around it."""
    folder = Path(folder)
    build = Path(build) if build is not None else build_path(folder)
    remove_tree(build)  # left by a replacement that was killed (under the lock, nobody else's)
    build.mkdir(parents=True)
    try:
        yield build
    except BaseException:
        remove_tree(build)
        raise
    swap_in(build, folder)


@contextmanager
def folder_output(folder: os.PathLike | str, kind: str, force: bool = False, option: Optional[str] = None,
                  also: Sequence[str] = ()) -> Iterator[Path]:
    """The whole policy for a folder a command writes: :func:`check_folder` (new, empty, or cloudkd's own ``kind``
    with ``force``), its :func:`folder_lock`, and :func:`replace_on_success`: the block writes into the yielded
    build folder (marked ``kind``), which takes the place of ``folder`` when the block succeeds; when it fails,
    ``folder`` is as it was. Call :func:`check_folder` before the work too, so that a refusal costs nothing."""
    folder = Path(folder)
    check_folder(folder, kind, force, option, also)
    with folder_lock(folder):
        check_folder(folder, kind, force, option, also)  # again, under the lock
        with replace_on_success(folder) as build:
            mark_folder(build, kind)
            yield build


# ---------------------------------------------------------------------------------------------------------------
# Ownership of files
# ---------------------------------------------------------------------------------------------------------------
def _manifest(folder: Path) -> dict:
    try:
        m = json.loads((folder / MANIFEST).read_text())
        return m.get("files", {}) if isinstance(m, dict) and m.get("writer") == "cloudkd" else {}
    except (OSError, ValueError, AttributeError):
        return {}


def file_mark(path: os.PathLike | str) -> Optional[dict]:
    """What cloudkd recorded of the file ``path``: its folder's mark (a folder cloudkd wrote), or its entry in the
    folder's :data:`MANIFEST` while the file still has the size and modification time cloudkd left; else None."""
    path = Path(path)
    note = folder_mark(path.parent)
    if note is not None:
        return note
    entry = _manifest(path.parent).get(path.name)
    try:
        st = path.stat()
    except OSError:
        return None
    if isinstance(entry, dict) and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        return entry
    return None


def check_file(path: os.PathLike | str, force: bool = False, option: Optional[str] = None) -> None:
    """Refuse (DataError) to write the file ``path`` over a folder, over an existing file without ``force``, or
    over a file cloudkd did not write (even with ``force``)."""
    path = Path(path)
    name = _name(path, option)
    if path.is_dir():
        raise DataError(f"{name}: {IS_A_FOLDER}")
    if not path.exists() and not path.is_symlink():
        return
    if not force:
        raise DataError(f"{name}: exists; --force replaces it")
    if path.is_symlink() or file_mark(path) is None:
        raise DataError(f"{name} was not written by cloudkd; remove it yourself (or choose another name)")


def record_file(path: os.PathLike | str, kind: str, command: Optional[str] = None) -> None:
    """List the file cloudkd just wrote at ``path`` in its folder's :data:`MANIFEST` (not needed, and not done,
    in a folder cloudkd wrote)."""
    path = Path(path)
    if not path.is_file() or folder_mark(path.parent) is not None:
        return
    files = _manifest(path.parent)
    st = path.stat()
    files[path.name] = {**_note(kind, command), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    atomic_write(path.parent / MANIFEST, lambda t: Path(t).write_text(
        json.dumps({"writer": "cloudkd", "files": files}, indent=2) + "\n"))


@contextmanager
def file_outputs(outputs: Dict[str, Optional[os.PathLike | str]], kind: str, force: bool = False,
                 inputs: Iterable[Optional[os.PathLike | str]] = ()) -> Iterator[None]:
    """Around the work of a command that writes files: ``outputs`` (option name -> path or None) are checked
    before (:func:`outputs_apart` against ``inputs``, :func:`check_file`), and the ones written are recorded
    (:func:`record_file`) after it succeeds."""
    given = {o: Path(p) for o, p in outputs.items() if p is not None}
    outputs_apart(given.values(), inputs)
    for option, p in given.items():
        check_file(p, force, option)
    yield
    for p in given.values():
        record_file(p, kind)


# ---------------------------------------------------------------------------------------------------------------
# No overlap
# ---------------------------------------------------------------------------------------------------------------
def _real(p: os.PathLike | str) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.fspath(p))))


def outputs_apart(outputs: Iterable[Optional[os.PathLike | str]],
                  inputs: Iterable[Optional[os.PathLike | str]]) -> None:
    """Refuse (DataError naming both paths) an output that is an input, lies inside one or contains one, with
    relative paths and symlinks resolved (None entries are skipped)."""
    ins = [(i, _real(i)) for i in inputs if i is not None]
    for o in outputs:
        if o is None:
            continue
        ro = _real(o)
        for i, ri in ins:
            if ro == ri:
                how = "is"
            elif ri in ro.parents:
                how = "lies inside"
            elif ro in ri.parents:
                how = "contains"
            else:
                continue
            raise DataError(f"{o}: this output {how} the input {i}; write outputs elsewhere")


def output_problem(path, want: Optional[str] = None) -> Optional[str]:
    """None when ``path`` can be written (created if missing), else why not, in one line naming ``path``: it lies
    under a file, its folder is not writable, it is inside a dataset's ``*_labels`` or ``*_features`` folder
    (outputs would mix with, or replace, the data), or it exists as the wrong kind (``want``: "file" refuses a
    folder, "folder" refuses a file; None takes either)."""
    p = Path(path).absolute()
    for part in (p, *p.parents):
        if part.name.endswith(("_labels", "_features")) and (part.parent / f"{part.name.rsplit('_', 1)[0]}"
                                                                            f"_metadata.csv").is_file():
            return f"{path}: inside the dataset folder {part}; write outputs elsewhere"
    if want == "file" and p.is_dir():
        return f"{path}: {IS_A_FOLDER}"
    if want == "folder" and (p.exists() or p.is_symlink()) and not p.is_dir():
        return f"{path}: {IS_A_FILE}"
    probe = p if p.is_dir() else p.parent  # an existing file is replaced in its folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return f"{path}: lies under the file {probe} ({probe.name} is a file, so nothing can be written below it)"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{path}: {probe} is not writable"
    return None


# ---------------------------------------------------------------------------------------------------------------
# Locks
# ---------------------------------------------------------------------------------------------------------------
def running_elsewhere(note_path: os.PathLike | str) -> Optional[int]:
    """The pid of a live process on this host, other than this one, that wrote the JSON note ``note_path`` (a
    lock, or a generator's :data:`UNFINISHED` marker), else None (no note, another host, or its process is gone)."""
    try:
        note = json.loads(Path(note_path).read_text())
        pid = int(note.get("pid", 0))
        same_host = note.get("host") == socket.gethostname()
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if not same_host or pid <= 0 or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    except OSError:
        return None
    return pid


def lock_path(folder: os.PathLike | str) -> Path:
    """The lock file of ``folder``: beside it, so it holds while the folder is built elsewhere and swapped in."""
    folder = Path(folder).absolute()
    return folder.parent / f".{folder.name}.cloudkd-lock"


@contextmanager
def folder_lock(folder: os.PathLike | str, command: Optional[str] = None) -> Iterator[Path]:
    """Hold the lock of ``folder`` while writing it: a second writer is refused (DataError naming its pid); a lock
    left by a process that is gone is taken over. The lock goes when the block ends."""
    lock = lock_path(folder)
    lock.parent.mkdir(parents=True, exist_ok=True)
    note = _note("lock", command)
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid = running_elsewhere(lock)
            if pid is None:
                try:
                    readable = isinstance(json.loads(lock.read_text()), dict)
                    young = False
                except (OSError, ValueError):
                    readable = False
                    young = _age(lock) < _LOCK_GRACE_S  # its writer may still be writing it
                if young and not readable:
                    pid = -1
            if pid is not None:
                who = f"pid {pid}" if pid > 0 else "another process"
                raise DataError(f"{folder}: another cloudkd ({who}) is writing it (lock {lock}); wait until it "
                                f"ends")
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(note, indent=2) + "\n")
        break
    else:  # pragma: no cover - lost three races in a row
        raise DataError(f"{folder}: could not take its lock {lock}")
    try:
        yield lock
    finally:
        try:
            if json.loads(lock.read_text()).get("pid") == os.getpid():
                lock.unlink()
        except (OSError, ValueError, AttributeError):
            pass


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return float("inf")


# ---------------------------------------------------------------------------------------------------------------
# Masks folders (the masks of one model; used by every command that writes {chip_id}.tif masks)
# ---------------------------------------------------------------------------------------------------------------
def model_fingerprint(files: Iterable[os.PathLike | str] = (), network=None) -> str:
    """sha256 of a model's weights: the bytes of its weight ``files`` (in the order given) and/or the tensors of
    ``network``'s state dict (anything with ``state_dict()``). A model retrained in place gets another one, even
    when its files keep their size and time."""
    import hashlib

    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0file\0")
    if network is not None:
        for k, v in sorted(network.state_dict().items()):
            h.update(k.encode() + b"\0")
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _masks_record(record: Path) -> dict:
    try:
        note = json.loads(record.read_text())
        return note if isinstance(note, dict) else {}
    except (ValueError, OSError):
        return {}


def check_masks_folder(folder: os.PathLike | str, producer: Optional[str] = None, force: bool = False,
                       fingerprint: Optional[str] = None) -> list:
    """The rule of :func:`claim_masks_folder` without writing anything: refuse (DataError) a file, a folder that
    holds anything but cloudkd's masks, and (``producer`` given) the masks of another producer without ``force``;
    the same producer with other weights (``fingerprint``, :func:`model_fingerprint`: a run retrained in place)
    is another producer. Returns the masks that claiming the folder for ``producer`` would remove. With
    ``producer`` None (not known yet, e.g. before a model is loaded) only what no producer may write into is
    refused."""
    folder = Path(folder)
    record = folder / MASKS_RECORD
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{folder}: is a file, not a folder")
    masks = sorted(folder.glob("*.tif")) if folder.is_dir() else []
    if record.is_file():
        note = _masks_record(record)
        have, have_fp = note.get("producer"), note.get("fingerprint")
    elif masks:
        raise DataError(f"{folder}: holds masks of an unknown model (*.tif without cloudkd's {MASKS_RECORD}): "
                        f"they were not written by cloudkd; remove them yourself, or write elsewhere")
    elif folder.is_dir() and any(folder.iterdir()):
        raise DataError(f"{folder}: holds files but no masks of cloudkd's ({MASKS_RECORD}): it was not written by "
                        f"cloudkd; write the masks to a new or empty folder")
    else:
        have, have_fp = producer, fingerprint
    if producer is None or (have == producer and have_fp == fingerprint):
        return []
    if not force:
        if have != producer:
            raise DataError(f"{folder}: holds masks of {have}; write elsewhere, or --force to replace them")
        was = f"sha256 {have_fp[:12]}" if have_fp else "not recorded"
        now = f"sha256 {fingerprint[:12]}" if fingerprint else "not known"
        raise DataError(f"{folder}: holds masks of {have} made with other weights ({was}, now {now}: the model "
                        f"was trained again since?); write elsewhere, or --force to replace them")
    return masks


def claim_masks_folder(folder: os.PathLike | str, producer: str, force: bool = False,
                       fingerprint: Optional[str] = None) -> Path:
    """Make ``folder`` ready for the masks of ``producer`` (a model, named by its path and settings, whose weights
    have the ``fingerprint`` of :func:`model_fingerprint`).

    A folder of masks written by another producer is refused unless ``force``, which first removes its masks, so
    the masks of two models never mix. Masks without a record (not written by cloudkd) are never removed, and a
    folder that holds anything but cloudkd's masks is refused (masks would mix with its files):
    :func:`check_masks_folder`. The folder records its producer and fingerprint in
    :data:`~cloudkd.common.io.MASKS_RECORD`: masks of the same model retrained in place are another producer's.
    """
    folder = Path(folder)
    for p in check_masks_folder(folder, producer, force, fingerprint):
        p.unlink()
    note = {"producer": producer, "fingerprint": fingerprint}
    atomic_write(folder / MASKS_RECORD, lambda t: Path(t).write_text(json.dumps(note) + "\n"))
    return folder


@contextmanager
def masks_output(folder: os.PathLike | str, producer: str, force: bool = False,
                 fingerprint: Optional[str] = None) -> Iterator[Path]:
    """The whole policy for a command that writes the masks of ``producer`` (:func:`claim_masks_folder`'s rule)
    into ``folder``: the folder is locked while they are written (:func:`folder_lock`: a second writer is refused),
    and a failure leaves nothing of this run behind. The masks of another producer that ``force`` replaces are
    replaced on success only: the new ones are built beside the folder and swapped in; otherwise the masks are
    written in place, and when the block fails the files it added are removed (the folder too, when this run
    created it). Yields the folder to write the masks into."""
    folder = Path(folder)
    check_masks_folder(folder, producer, force, fingerprint)
    with folder_lock(folder):
        if check_masks_folder(folder, producer, force, fingerprint):  # again, under the lock
            with replace_on_success(folder) as build:
                claim_masks_folder(build, producer, force, fingerprint)
                yield build
            return
        created = not folder.exists()
        before = set(os.listdir(folder)) if folder.is_dir() else set()
        claim_masks_folder(folder, producer, force, fingerprint)
        try:
            yield folder
        except BaseException:
            if created:
                remove_tree(folder)
            else:
                for name in set(os.listdir(folder)) - before:
                    remove_tree(folder / name)
            raise
