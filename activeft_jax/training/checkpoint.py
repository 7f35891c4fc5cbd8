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
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence

import jax
import orbax.checkpoint as ocp

__all__ = ["Checkpointer"]

_ITEMS = ("pytree", "metadata")


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
        restored = self._manager.restore(
            step, args=ocp.args.Composite(pytree=tree_args, metadata=ocp.args.JsonRestore())
        )
        return restored["pytree"], dict(restored["metadata"] or {})

    def close(self) -> None:
        """Waits for pending work and releases the manager."""
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
