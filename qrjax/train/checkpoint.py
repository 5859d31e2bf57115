"""A thin wrapper over orbax's v0 CheckpointManager: save a state pytree plus JSON metadata, restore the latest.

Saves are asynchronous (training continues while the checkpoint is written) and atomic: a run killed mid-save keeps
its previous checkpoint. Restore places every leaf with the sharding of the template state it is given.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: str | Path, max_to_keep: int = 2, asynchronous: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=asynchronous,
                                               create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    @property
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state, meta: dict | None = None, force: bool = False) -> bool:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta or {}))
        return self._manager.save(int(step), args=args, force=force)

    def restore(self, template, step: int | None = None):
        """(state, meta) at `step` (default: latest), shaped and sharded like `template`."""
        step = self.latest_step if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {self.directory}")
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), template)
        out = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                  meta=ocp.args.JsonRestore()))
        return out.state, out.meta

    def wait(self):
        self._manager.wait_until_finished()

    def close(self):
        self._manager.close()
