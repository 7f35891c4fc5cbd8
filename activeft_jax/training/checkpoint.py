"""Atomic checkpoints of a pytree plus JSON metadata (orbax `CheckpointManager`).

Each step is written into a temporary directory
(``<step>.orbax-checkpoint-tmp-<time>``) and becomes visible only when orbax
renames it to ``<step>`` after every file is written (the rename is atomic on
a local file system; on object stores orbax writes a ``commit_success.txt``
last instead). Listing and restoring consider finalized steps only, and the
temporary directories a killed process leaves behind are deleted when the next
`Checkpointer` opens the directory, so a partially written step is never
restored. `save` blocks until the step is committed (no background thread
that a crash could cut short).

A committed step can still be damaged afterwards (a truncated, emptied or
overwritten file, a deleted data chunk): `restore` then raises
`CheckpointError`, one line naming the step and the cause, instead of orbax's
or tensorstore's internals, and `restore_newest` falls back to the newest step
that restores cleanly.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import orbax.checkpoint as ocp

__all__ = ["CheckpointError", "Checkpointer"]

_ITEMS = ("pytree", "metadata")
_log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A committed checkpoint step cannot be restored (damaged or missing files)."""


def _one_line(e: BaseException, limit: int = 160) -> str:
    text = " ".join(str(e).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _drop_closed_loop_reports() -> None:
    """Silences the reports of tensorstore reads that finish after orbax gave up.

    When one read of a damaged step fails, orbax's restore raises and closes its
    event loop while the step's other reads are still in flight; as each of them
    completes, its callback finds the loop closed and Python reports an unraisable
    ``RuntimeError: Event loop is closed`` (tens of tracebacks on stderr). This hook
    drops exactly those reports and passes every other one on.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_drops_closed_loop", False):
        return

    def hook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return
        previous(unraisable)

    hook._drops_closed_loop = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


class Checkpointer:
    """Saves and restores ``(pytree, metadata)`` by integer step.

    Example:
      >>> ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=2)
      >>> ckpt.save(3, {"params": params, "opt_state": opt_state}, {"round": 3})
      >>> tree, meta = ckpt.restore(ckpt.latest_step(), target=like)

    Args:
      directory: where the step directories live (created if missing).
      max_to_keep: keep the newest this many steps (None: keep all). Older
        steps are deleted only after a newer one is committed.
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: Optional[int] = 2):
        if max_to_keep is not None and (
            isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1
        ):
            raise ValueError(f"`max_to_keep` must be None or an int >= 1; got {max_to_keep!r}.")
        self._directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            cleanup_tmp_directories=True,
            enable_async_checkpointing=False,
        )
        self._manager = ocp.CheckpointManager(self._directory, options=options, item_names=_ITEMS)
        # Orbax removes leftover temporary directories in a background thread (and waits
        # for it before the next save); wait now, so the directory is clean once we return.
        await_cleanup = getattr(self._manager, "_maybe_await_cleanup_tmp_directory", None)
        if callable(await_cleanup):
            await_cleanup()

    @property
    def directory(self) -> str:
        """Absolute path of the checkpoint directory."""
        return self._directory

    def all_steps(self) -> Sequence[int]:
        """The committed steps, ascending."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> Optional[int]:
        """The newest committed step, or None if there is none."""
        return self._manager.latest_step()

    def save(self, step: int, pytree: Any, metadata: Optional[Mapping[str, Any]] = None) -> None:
        """Writes `pytree` (arrays, None, empty containers) and JSON `metadata` as `step`.

        Returns once the step is committed. Raises ValueError if `step`
        already exists (steps are never overwritten).
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"`step` must be an int >= 0; got {step!r}.")
        if step in self._manager.all_steps():
            raise ValueError(f"step {step} already exists in {self._directory}.")
        args = ocp.args.Composite(
            pytree=ocp.args.StandardSave(pytree),
            metadata=ocp.args.JsonSave(dict(metadata or {})),
        )
        self._manager.save(step, args=args, force=True)
        self._manager.wait_until_finished()

    def restore(self, step: Optional[int] = None, target: Any = None) -> tuple[Any, dict]:
        """Reads a committed step.

        Args:
          step: the step; None for the latest.
          target: a pytree of arrays or `jax.ShapeDtypeStruct`s with the saved
            structure; the result takes its structure (NamedTuples included),
            shapes and dtypes. None returns the tree as stored (dicts).

        Returns:
          ``(pytree, metadata)``.

        Raises:
          FileNotFoundError: no such committed step.
          CheckpointError: the step's files are damaged (one line: the step and the cause).
        """
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no checkpoint in {self._directory}.")
        if step not in self._manager.all_steps():
            raise FileNotFoundError(
                f"no committed step {step} in {self._directory}; steps: {self.all_steps()}."
            )
        if target is None:
            tree_args = ocp.args.StandardRestore()
        else:
            abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
            tree_args = ocp.args.StandardRestore(abstract)
        _drop_closed_loop_reports()
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(pytree=tree_args, metadata=ocp.args.JsonRestore())
            )
            metadata = restored["metadata"]
            if metadata is not None and not isinstance(metadata, Mapping):
                raise ValueError(f"the metadata is a {type(metadata).__name__}, not a JSON object")
        except Exception as e:  # JSONDecodeError, UnicodeDecodeError, FileNotFoundError, ...
            raise CheckpointError(
                f"checkpoint step {step} in {self._directory} cannot be restored: {_one_line(e)}"
            ) from e
        return restored["pytree"], dict(metadata or {})

    def restore_newest(
        self,
        target: Any = None,
        check: Optional[Callable[[int, Any, dict], None]] = None,
    ) -> Optional[tuple[int, Any, dict]]:
        """The newest step that restores cleanly, falling back past damaged ones.

        Tries the committed steps from the newest down. A step that fails to
        restore, or whose result `check(step, pytree, metadata)` rejects with an
        exception, is damaged; once an older step restores, the damaged newer
        steps are deleted (so that they can be written again) and one warning
        line names them and the cause.

        Returns:
          ``(step, pytree, metadata)``, or None if there is no committed step.

        Raises:
          CheckpointError: no step restores cleanly (one line, every step's
            cause); the directory is left as it is.
        """
        damaged: list[tuple[int, str]] = []
        for step in reversed(self.all_steps()):
            try:
                pytree, metadata = self.restore(step, target)
                if check is not None:
                    check(step, pytree, metadata)
            except Exception as e:
                cause = _one_line(e.__cause__ if isinstance(e, CheckpointError) and e.__cause__
                                  else e)
                damaged.append((step, cause))
                continue
            if damaged:
                for bad, _ in damaged:
                    try:
                        self._manager.delete(bad)
                    except Exception as e:
                        raise CheckpointError(
                            f"checkpoint step {bad} in {self._directory} cannot be restored and "
                            f"cannot be deleted ({_one_line(e)}); delete it to resume from step "
                            f"{step}") from e
                steps = ", ".join(str(s) for s, _ in damaged)
                _log.warning(
                    "checkpoint step%s %s in %s cannot be restored (step %d: %s); deleted it, "
                    "resuming from step %d", "s" if len(damaged) > 1 else "", steps,
                    self._directory, damaged[0][0], damaged[0][1], step)
            return step, pytree, metadata
        if not damaged:
            return None
        causes = "; ".join(f"step {s}: {c}" for s, c in damaged)
        raise CheckpointError(f"no checkpoint in {self._directory} restores cleanly ({causes})")

    def close(self) -> None:
        """Waits for pending work and releases the manager."""
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
