"""A run folder's life: one owner at a time, taken over whole, checkpoints while rendering, the
final write (a write that fails fails the run), resuming a stopped run.

Every command that writes into a run folder holds it for as long as it writes:

    with runs.locked(folder):       # refuses at once (UserError, exit 2) if another holds it
        runs.claim(folder, force)   # a new run: an empty folder, or --force over a run folder
        ...                         # render and write

`fvis render` (new runs and `--resume`) and `fvis attribute` do; `fvis sweep` holds its sweep
folder with `locked` alone (a sweep adds to the folder it finds).
"""

from __future__ import annotations

import fcntl
import io
import json
import math
import os
import pickle
import re
import shlex
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fvis.config import Config
from fvis.errors import UserError
from fvis.io import write_atomic
from fvis.render import Plan, Progress, Renderer, Result
from fvis.writers import write_metadata, write_run

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
"""The version of a checkpoint's layout (its "format" entry); another one is refused."""
CHECKPOINT_KEYS = frozenset(
    {"format", "config", "step", "param", "adam", "streams", "trace", "seconds", "snapshots"}
)
LOCK = ".fvis.lock"
"""The lock file inside a run folder: flock'ed by its holder, holding its pid, host and command."""
TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")
"""The temporaries of `fvis.io.write_atomic` (tempfile.mkstemp's 8 random characters)."""
OUTPUTS = re.compile(
    r"grid\.png|curves\.png|(image|transparency)_\d+\.png|cppn\.safetensors|config\.yaml"
    r"|checkpoint\.pt"
    r"|run\.json|attributions\.safetensors|attribution\.json"
    r"|control\.json|control/[^/.][^/]*"
)
"""The files fvis writes in a run folder (render and attribute, and a prior's control render in
control/): the only ones --force removes."""
MARKERS = ("run.json", "attribution.json")
"""A folder holding one of these is a run folder, which --force may clear."""


@dataclass(frozen=True)
class Kind:
    """A kind of folder a command writes whole, and `claim` with --force clears: its name in
    messages, the files that mark one (the first named in messages), the files it writes (a
    pattern on paths relative to it, at most one sub-folder deep) and its checkpoint."""

    noun: str
    markers: tuple[str, ...]
    outputs: re.Pattern[str]
    checkpoint: str


RUN = Kind("run folder", MARKERS, OUTPUTS, CHECKPOINT)
EXAMPLES = Kind(
    "examples folder",
    ("examples.json", ".examples.partial.safetensors"),
    re.compile(
        r"examples\.json|examples\.safetensors|\.examples\.partial\.safetensors"
        r"|[^/]+/unit_\d+\.png"
    ),
    ".examples.partial.safetensors",
)
"""`fvis examples`' folder: its index, tensors, checkpoint, and a sheet folder per layer."""
FVIS_FILES = (*MARKERS, CHECKPOINT, "sweep.json", *EXAMPLES.markers)
"""A folder holding one of these is one fvis wrote: a run folder, or a sweep's (sweep.INDEX)."""
UNCOMPARED = (("name",), ("output", "dir"), ("output", "cell"))
"""Config paths a resume may change: where the outputs go and the grid's cell size change no
pixel of the images, and a grid too large for memory can be made smaller on resuming."""
WRITE_ERRORS = (UserError, OSError, MemoryError)
"""What writing a run's files can raise: `write_atomic`'s UserError (a full disk, no permission),
an OSError, no memory to encode a file."""


# ----------------------------------------------------------------------------- the folder


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold `folder` (created if missing) for the block, exclusively: a second fvis command on
    it, in this process or another, is refused at once with a UserError naming the holder.

    The lock is flock(2) on `folder/.fvis.lock`, so the kernel releases it when its holder
    exits in any way, SIGKILL included: a crashed run never leaves its folder locked. Taking the
    folder removes the temporaries that a killed writer left there (`.NAME.XXXXXXXX.tmp`, see
    `_remove_temporaries`): no live process can be writing them, since it would hold the lock.
    Leaving it removes the lock file, and the folder again if this call created it and the block
    left it empty (a command refused after taking it leaves nothing behind).
    """
    made = _make_folder(folder)
    try:
        fd = _lock(folder)
    except BaseException:
        _remove_made(folder, made)
        raise
    try:
        _remove_temporaries(folder)
        yield
    finally:
        _unlock(folder, fd)
        _remove_made(folder, made)


def _remove_made(folder: Path, made: Path | None) -> None:
    """Remove `folder` and its parents up to `made` (those `_make_folder` created), innermost
    first, as long as they are empty."""
    while made is not None:
        try:
            folder.rmdir()
        except OSError:
            return
        if folder == made:
            return
        folder = folder.parent


def _remove_temporaries(folder: Path) -> None:
    """Remove what writes killed midway left in `folder`: only in a folder fvis wrote (it holds
    one of FVIS_FILES) or one that holds nothing else, never in a folder of the user's that a
    command is about to refuse."""
    entries = [path for path in folder.iterdir() if path.name != LOCK]
    stale = [p for p in entries if TEMPORARY.fullmatch(p.name) and (p.is_file() or p.is_symlink())]
    if len(stale) == len(entries) or any((folder / name).is_file() for name in FVIS_FILES):
        for path in stale:
            with suppress(OSError):
                path.unlink(missing_ok=True)


def claim_pass(folder: Path, force: bool, resume: bool, kind: Kind) -> None:
    """Make a folder held with `locked` ready for a command that passes over data (examples,
    groups, atlas): with `resume`, as it is (the pass checks its checkpoint); otherwise as
    `claim` does, but a folder whose pass was interrupted (a checkpoint and no index, its first
    marker) is kept for --resume unless `force`."""
    if resume:
        if force:
            raise UserError("--resume goes on from a checkpoint, --force starts again: choose one")
        return
    interrupted = (folder / kind.checkpoint).is_file() and not (folder / kind.markers[0]).is_file()
    if interrupted and not force:
        what = kind.noun.removesuffix(" folder")
        raise UserError(
            f"{folder}: holds an interrupted {what} pass; pass --resume to go on from it, or "
            "--force to start again"
        )
    claim(folder, force, kind)


def claim(folder: Path, force: bool, kind: Kind | None = None) -> None:
    """Make a folder held with `locked` ready for a new run: it must be empty (but for the
    lock), or, with `force`, a folder of that `kind` (default: a run folder, holding run.json or
    attribution.json), from which every file fvis writes (its outputs) is removed, checkpoint
    first and markers last, then the sub-folders they leave empty; anything else in it is left
    alone, and nothing outside it is touched."""
    kind = kind or RUN
    entries = [path for path in folder.iterdir() if path.name != LOCK]
    if not entries:
        return
    if not any((folder / marker).is_file() for marker in kind.markers):
        article = "an" if kind.noun[0] in "aeiou" else "a"
        raise UserError(
            f"{folder}: not empty and not {article} {kind.noun} (no {kind.markers[0]}); choose a "
            "new or empty folder with --out DIR"
        )
    if not force:
        raise UserError(f"{folder}: {kind.noun} exists; pass --force to overwrite it or --out DIR")
    ours = [p for p in _files(entries) if kind.outputs.fullmatch(p.relative_to(folder).as_posix())]
    top = set(kind.markers)
    for path in sorted(ours, key=lambda p: (p.name in top, p.name != kind.checkpoint)):
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise UserError(
                f"{path}: cannot remove it to replace the run ({exc.strerror})"
            ) from None
    for sub in {path.parent for path in ours} - {folder}:
        with suppress(OSError):
            sub.rmdir()


def _files(entries: list[Path]) -> Iterator[Path]:
    """The files (and links) among `entries`, and those in the sub-folders among them (links to
    folders are not followed)."""
    for path in entries:
        if path.is_file() or path.is_symlink():
            yield path
        elif path.is_dir():
            with suppress(OSError):
                yield from (p for p in path.iterdir() if p.is_file() or p.is_symlink())


def _make_folder(folder: Path) -> Path | None:
    """Create `folder` and its missing parents; the outermost one created, if any."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: exists and is not a folder")
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{folder}: cannot create the run folder ({exc.strerror})") from None
    return missing[-1] if missing else None


def _lock(folder: Path) -> int:
    """The descriptor of `folder`'s lock file, locked and holding this process's description."""
    path = folder / LOCK
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except FileNotFoundError:  # a holder leaving removed the folder it had created
            _make_folder(folder)
            continue
        except OSError as exc:
            raise UserError(f"{folder}: cannot write in the run folder ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise UserError(
                f"{folder}: in use by {holder}; wait for it to end, or use another folder"
            ) from None
        except OSError as exc:  # ENOLCK: a network file system without a lock service
            _unlock(folder, fd)
            raise UserError(
                f"{folder}: cannot lock the run folder ({exc.strerror}): its file system has no "
                "locks; use a folder on a local disk"
            ) from None
        if _same_file(fd, path):
            break
        os.close(fd)  # its holder removed that lock file as it left: lock the new one
    else:
        raise UserError(f"{folder}: cannot lock the run folder (its lock file keeps changing)")
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": shlex.join(["fvis", *sys.argv[1:]]),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(me).encode())
    except OSError as exc:
        _unlock(folder, fd)
        raise UserError(f"{folder}: cannot write in the run folder ({exc.strerror})") from None
    return fd


def _unlock(folder: Path, fd: int) -> None:
    """Remove the lock file (if still ours), then release the lock."""
    try:
        if _same_file(fd, folder / LOCK):
            (folder / LOCK).unlink()
    except OSError:
        pass
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` is still the file open as `fd`."""
    try:
        here, there = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _holder(fd: int) -> str:
    """Who holds a lock, as its lock file says (empty for the instant after it was taken)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0))
        about = f"pid {info['pid']} on {info['host']}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another fvis command"
    return f"another fvis command ({' '.join(about.split())})"


# ----------------------------------------------------------------------------- a run


class WriteFailed(Exception):
    """A run's files could not be written while it ran: the run fails (exit 1)."""


def render_run(
    run_dir: Path,
    config: Config,
    plan: Plan,
    renderer: Renderer,
    progress: Progress | None = None,
    *,
    fresh: bool = True,
) -> Result:
    """Run `renderer` in `run_dir` (held with `locked`), checkpointing at each snapshot, and
    write its final outputs.

    A file that cannot be written (a full disk, no permission, no memory for the grid), during
    the run or after it, fails the run: run.json says "failed" and why wherever it can still be
    written, the last checkpoint is kept for `--resume`, and a new run (`fresh`) that could not
    write its run.json removes what it wrote, leaving nothing half-written.
    """

    def checkpoint(r: Renderer) -> None:
        try:
            save_progress(run_dir, config, plan, r)
        except WRITE_ERRORS as exc:
            raise WriteFailed(_why(exc, run_dir)) from None

    try:
        renderer.run(progress, checkpoint)
    except WriteFailed as exc:
        return _failed(run_dir, config, plan, renderer.result, str(exc), fresh)
    try:
        return finish(run_dir, config, plan, renderer)
    except WRITE_ERRORS as exc:
        return _failed(run_dir, config, plan, renderer.result, _why(exc, run_dir), fresh)


def save_progress(run_dir: Path, config: Config, plan: Plan, renderer: Renderer) -> None:
    """The outputs so far (status 'running') and a checkpoint to resume from, holding the
    config it belongs to."""
    write_run(run_dir, config, plan, renderer.result)
    buffer = io.BytesIO()
    state = {"format": CHECKPOINT_FORMAT, "config": _compared(config), **renderer.state()}
    torch.save(state, buffer)
    write_atomic(run_dir / CHECKPOINT, buffer.getvalue())


def finish(run_dir: Path, config: Config, plan: Plan, renderer: Renderer) -> Result:
    """The final outputs; the checkpoint is kept only while the run can still be resumed."""
    result = renderer.result
    if result.status == "complete":
        write_run(run_dir, config, plan, result)
        with suppress(OSError):  # run.json says complete: a resume is refused all the same
            (run_dir / CHECKPOINT).unlink(missing_ok=True)
    else:
        save_progress(run_dir, config, plan, renderer)
    return result


def _failed(
    run_dir: Path, config: Config, plan: Plan, result: Result, reason: str, fresh: bool
) -> Result:
    """Record a failure to write as the run's failure, in run.json if it can be written at all
    (all outputs, or else run.json alone); then say what is left of the run."""
    what = f"{reason} at step {result.steps_done}"
    result.failure = f"{result.failure}; then {what}" if result.failure else what
    result.stopped_by = None
    try:
        write_run(run_dir, config, plan, result)
    except WRITE_ERRORS:
        present = [p.name for p in _outputs(run_dir) if p.name not in (*MARKERS, CHECKPOINT)]
        with suppress(*WRITE_ERRORS):
            write_metadata(run_dir, config, plan, result, sorted(present))
    if (run_dir / CHECKPOINT).is_file():
        result.failure += f"; resume from the last checkpoint with: fvis render --resume {run_dir}"
    elif (run_dir / "run.json").is_file():
        result.failure += "; no checkpoint was written: render it again with --force"
    elif fresh:  # files no run.json describes: this run's, in the folder `claim` emptied
        for path in _outputs(run_dir):
            with suppress(OSError):
                path.unlink(missing_ok=True)
        result.failure += "; nothing was kept"
    return result


def _outputs(run_dir: Path) -> list[Path]:
    """The files fvis writes (OUTPUTS) that `run_dir` holds."""
    try:
        return [p for p in run_dir.iterdir() if OUTPUTS.fullmatch(p.name) and not p.is_dir()]
    except OSError:
        return []


def _why(exc: BaseException, run_dir: Path) -> str:
    """One line for an exception raised by writing a run's files."""
    if isinstance(exc, MemoryError):
        return f"{run_dir}: out of memory writing the run's files"
    if isinstance(exc, OSError):
        return f"{exc.filename or run_dir}: cannot write ({exc.strerror or exc})"
    return str(exc)


# ----------------------------------------------------------------------------- resuming


def resume_source(run_dir: Path) -> tuple[Path, Path]:
    """The config a run was made from (its resolved copy) and the folder its paths are from."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise UserError(f"{run_dir}: not a run folder (no config.yaml)")
    try:
        base = Path(json.loads((run_dir / "run.json").read_text())["config_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        base = run_dir
    return config, base


def restore(renderer: Renderer, run_dir: Path, config: Config) -> None:
    """Continue `renderer` from its run's checkpoint, once the checkpoint is known to be one of
    this run: its layout, the config it was made with (all of it but UNCOMPARED), and the type,
    shape and dtype of every entry as this renderer has them."""
    path = run_dir / CHECKPOINT
    state = load_checkpoint(run_dir)
    problem = _layout_problem(state)
    if problem:
        raise UserError(f"{path}: not a checkpoint of this run ({problem})")
    differences = _differences(_compared(config), state["config"])
    if differences:
        more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
        raise UserError(
            f"{path}: does not fit this config: {'; '.join(differences[:3])}{more} (resume "
            "with the config the run was made with, or render it again with --force)"
        )
    problem = _state_problem(state, renderer)
    if problem:
        raise UserError(f"{path}: not a checkpoint of this run ({problem})")
    try:
        renderer.restore(state)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise UserError(f"{path}: not a checkpoint of this run ({_first_line(exc)})") from None


def load_checkpoint(run_dir: Path) -> Any:
    """A run's checkpoint, loaded without running any code (weights_only). Where there is
    none, why, as the run's run.json tells it: complete, or failed before its first one."""
    path = run_dir / CHECKPOINT
    status, error = _recorded(run_dir)
    if status == "complete":
        raise UserError(f"{run_dir}: nothing to resume (the run is complete)")
    if not path.is_file():
        if status == "failed":
            raise UserError(
                f"{run_dir}: nothing to resume (the run failed before writing a checkpoint: "
                f"{error}); render it again with --force"
            )
        raise UserError(f"{run_dir}: nothing to resume (no checkpoint there)")
    try:
        with warnings.catch_warnings():  # torch's, about pickle protocols, are not printed
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's message advises unpickling: never shown
        text = str(exc)
        refused = re.search(r"GLOBAL ([\w.]+)", text)
        if refused:
            raise UserError(
                f"{path}: not a checkpoint of this run (it holds a Python object, "
                f"{refused.group(1)}, which is never loaded: it could run code)"
            ) from None
        detail = _first_line(text.partition("WeightsUnpickler error:")[2]) or "not tensors"
    except Exception as exc:  # an untrusted file: whatever the loader raises, it is unreadable
        detail = _first_line(exc)
    raise UserError(f"{path}: not a readable checkpoint ({detail})")


def _recorded(run_dir: Path) -> tuple[str | None, str | None]:
    """A run's status and error as its run.json says (None where it says nothing)."""
    try:
        run = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return None, None
    if not isinstance(run, dict):
        return None, None
    status, error = run.get("status"), run.get("error")
    return (
        status if isinstance(status, str) else None,
        " ".join(error.split()) if isinstance(error, str) else None,
    )


def _first_line(exc: BaseException | str) -> str:
    """An error's first sentence, never torch's advice to unpickle untrusted data (empty for a
    string without one, the exception's type for an exception without one)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines or "weights_only" in lines[0]:
        return "" if isinstance(exc, str) else type(exc).__name__
    return lines[0].partition(". ")[0][:200]


def _compared(config: Config) -> dict[str, Any]:
    """The resolved config as a checkpoint holds it: all but UNCOMPARED."""
    data = config.model_dump(mode="json")
    for *parents, key in UNCOMPARED:
        node = data
        for parent in parents:
            node = node.get(parent, {})
        node.pop(key, None)
    return data


# ----------------------------------------------------------------------------- checking


def _layout_problem(state: object) -> str | None:
    """What makes `state` no fvis checkpoint at all, if anything."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a checkpoint's entries"
    missing = sorted(CHECKPOINT_KEYS - state.keys())
    if missing:
        return f"no {', '.join(missing)}"
    unknown = [_name(k) for k in state if k not in CHECKPOINT_KEYS]
    if unknown:
        return f"unknown entries: {', '.join(sorted(unknown)[:5])}"
    if not _same(state["format"], CHECKPOINT_FORMAT):
        return f"format {_show(state['format'])}, not {CHECKPOINT_FORMAT}"
    if not isinstance(state["config"], dict):
        return f"config is a {type(state['config']).__name__}"
    return None


def _state_problem(state: dict[Any, Any], renderer: Renderer) -> str | None:
    """What in `state` does not fit `renderer` (type, shape, dtype, length, keys), if anything:
    checked before any of it is used."""
    plan, schedule = renderer.plan, renderer.plan.schedule
    step = state["step"]
    if type(step) is not int or not 0 <= step <= schedule.steps:
        return f"step {_show(step)}, not a step of this run (0 to {schedule.steps})"
    seconds = state["seconds"]
    if type(seconds) not in (int, float) or not (math.isfinite(seconds) and seconds >= 0):
        return f"seconds {_show(seconds)}, not a duration"
    problem = _tensors_problem("param", state["param"], plan.param.state_dict())
    problem = problem or _tensor_problem("trace", state["trace"], renderer.trace)
    streams = [g.get_state() for g in plan.streams]
    problem = problem or _list_problem("streams", state["streams"], len(streams))
    if not problem:
        for i, (saved, like) in enumerate(zip(state["streams"], streams, strict=True)):
            problem = problem or _tensor_problem(f"streams[{i}]", saved, like)
    return (
        problem
        or _adam_problem(state["adam"], renderer)
        or _snapshots_problem(state["snapshots"], step, renderer)
    )


def _settings(groups: object) -> object:
    """Adam's param groups with the learning rate reduced to whether it is one (a float): the
    schedule sets the rate at each step (`Schedule.lr_at`), so a checkpoint's is its last
    step's, not the first's, and only its kind can be checked."""
    if not isinstance(groups, list):
        return groups
    return [
        {k: isinstance(v, float) if k == "lr" else v for k, v in g.items()}
        if isinstance(g, dict)
        else g
        for g in groups
    ]


def _adam_problem(adam: object, renderer: Renderer) -> str | None:
    """What in a saved Adam state does not fit the renderer's optimizer."""
    template = renderer.adam.state_dict()
    params = [p for group in renderer.adam.param_groups for p in group["params"]]
    if not isinstance(adam, dict) or set(adam) != {"state", "param_groups"}:
        return "adam is not an optimizer's state (state, param_groups)"
    if not _same(_settings(adam["param_groups"]), _settings(template["param_groups"])):
        return "adam.param_groups differ from this run's optimizer"
    moments = adam["state"]
    if not isinstance(moments, dict) or set(moments) != set(range(len(params))):
        return f"adam.state does not hold one entry for each of the {len(params)} parameters"
    for i, param in enumerate(params):
        entry = moments[i]
        where = f"adam.state[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"step", "exp_avg", "exp_avg_sq"}:
            return f"{where} is not Adam's (step, exp_avg, exp_avg_sq)"
        count = entry["step"]
        if not (
            isinstance(count, torch.Tensor) and count.shape == () and count.is_floating_point()
        ):
            return f"{where}.step is not a scalar tensor"
        for key in ("exp_avg", "exp_avg_sq"):
            problem = _tensor_problem(f"{where}.{key}", entry[key], param)
            if problem:
                return problem
    return None


def _snapshots_problem(snapshots: object, step: int, renderer: Renderer) -> str | None:
    """What in the saved snapshots does not fit the run: one at step 0 and at each of the
    schedule's snapshot steps up to `step`, each with this run's images, objective and terms."""
    expected = [0, *(s for s in renderer.plan.schedule.snapshot_steps if s <= step)]
    problem = _list_problem("snapshots", snapshots, len(expected))
    if problem:
        return problem
    assert isinstance(snapshots, list)
    param, batch = renderer.plan.param, renderer.batch
    images = torch.empty(batch, param.depth, *param.size)
    for i, (snapshot, at) in enumerate(zip(snapshots, expected, strict=True)):
        where = f"snapshots[{i}]"
        if not isinstance(snapshot, dict) or set(snapshot) != {
            "step",
            "images",
            "objective",
            "terms",
        }:
            return f"{where} is not a snapshot (step, images, objective, terms)"
        if not _same(snapshot["step"], at):
            return f"{where}.step is {_show(snapshot['step'])}, not {at}"
        problem = _tensor_problem(f"{where}.images", snapshot["images"], images)
        problem = problem or _numbers_problem(f"{where}.objective", snapshot["objective"], batch)
        if problem:
            return problem
        terms = snapshot["terms"]
        if not isinstance(terms, dict) or set(terms) != set(renderer.names):
            return f"{where}.terms are not this objective's terms"
        for name in renderer.names:
            problem = _numbers_problem(f"{where}.terms[{name!r}]", terms[name], batch)
            if problem:
                return problem
    return None


def _tensors_problem(where: str, saved: object, like: dict[str, torch.Tensor]) -> str | None:
    """What in a saved dict of tensors does not match `like` (keys, shapes, dtypes)."""
    if not isinstance(saved, dict) or set(saved) != set(like):
        return f"{where} does not hold this run's entries ({', '.join(like)})"
    for key, tensor in like.items():
        problem = _tensor_problem(f"{where}.{key}", saved[key], tensor)
        if problem:
            return problem
    return None


def _tensor_problem(where: str, saved: object, like: torch.Tensor) -> str | None:
    """What makes `saved` not a plain tensor of `like`'s shape and dtype."""
    if not isinstance(saved, torch.Tensor):
        return f"{where} is a {type(saved).__name__}, not a tensor"
    if saved.layout != torch.strided or saved.device.type != "cpu" or saved.requires_grad:
        return f"{where} is not a plain tensor"
    if saved.shape != like.shape or saved.dtype != like.dtype:
        return (
            f"{where} is {str(saved.dtype).removeprefix('torch.')} {list(saved.shape)}, this "
            f"run's is {str(like.dtype).removeprefix('torch.')} {list(like.shape)}"
        )
    return None


def _list_problem(where: str, saved: object, length: int) -> str | None:
    """What makes `saved` not a list of `length` entries."""
    if not isinstance(saved, list):
        return f"{where} is a {type(saved).__name__}, not a list"
    if len(saved) != length:
        return f"{where} has {len(saved)} entries, this run's {length}"
    return None


def _numbers_problem(where: str, saved: object, length: int) -> str | None:
    """What makes `saved` not a list of `length` numbers."""
    problem = _list_problem(where, saved, length)
    if problem:
        return problem
    assert isinstance(saved, list)
    if not all(type(x) in (int, float) for x in saved):
        return f"{where} holds something other than numbers"
    return None


def _differences(here: Any, there: Any, path: tuple[Any, ...] = ()) -> list[str]:
    """Where a saved config differs from this one: 'dotted.path is X here, Y in the
    checkpoint', in this config's order. It recurses only where this config does, so a deeply
    nested saved value costs no deeper recursion than the config's own."""
    if isinstance(here, dict) and isinstance(there, dict):
        found: list[str] = []
        for key in here:
            value = there.get(key, _MISSING)
            found += _differences(here[key], value, (*path, key))
        for key in there:
            if key not in here:
                found.append(f"{_dotted((*path, key))} is not in this config")
        return found
    nested = isinstance(here, list) and any(isinstance(x, dict | list) for x in here)
    if nested and isinstance(there, list) and len(here) == len(there):
        found = []
        for i, (a, b) in enumerate(zip(here, there, strict=True)):
            found += _differences(a, b, (*path, i))
        return found
    if _same(here, there):
        return []
    saved = "missing" if there is _MISSING else _show(there)
    return [f"{_dotted(path)} is {_show(here)} here, {saved} in the checkpoint"]


_MISSING = object()


def _same(a: Any, b: Any) -> bool:
    """Equal as plain data, types included (1, 1.0 and True differ), never comparing tensors
    elementwise; recursing only as deep as `a`."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, str | int | float | bool) or a is None:
        return bool(a == b)
    return False


def _show(value: Any) -> str:
    """A saved value in a few characters, on one line: scalars and short lists of them as
    JSON, anything else by its type."""
    scalar = (str, int, float, bool, type(None))
    short = isinstance(value, list | tuple) and len(value) <= 16
    if isinstance(value, scalar) or (short and all(isinstance(x, scalar) for x in value)):
        text = json.dumps(value)
        return text if len(text) <= 40 else text[:37] + "..."
    if isinstance(value, list | tuple | dict):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def _name(key: Any) -> str:
    """A key as a path part: plain names as they are, anything else shown."""
    if isinstance(key, str) and re.fullmatch(r"[A-Za-z0-9_-]+", key):
        return key
    return str(key) if type(key) is int else _show(key)


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(_name(part) for part in path) or "the config"
