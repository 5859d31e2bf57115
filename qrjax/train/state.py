"""TrainState: step, parameters, non-trainable collections (BatchNorm statistics) and optimiser state, one pytree."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

    @classmethod
    def create(cls, params, tx: optax.GradientTransformation, batch_stats=None) -> "TrainState":
        return cls(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats if batch_stats is not None
                   else {}, opt_state=tx.init(params), tx=tx)

    def apply_gradients(self, grads, batch_stats=None) -> "TrainState":
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates), opt_state=opt_state,
                            batch_stats=self.batch_stats if batch_stats is None else batch_stats)
