"""One of H jax processes standing in for H hosts (run by tests/test_data_parallel_multihost.py).

``python tests/multihost_linen_step.py PROCESS_ID NUM_PROCESSES PORT DATA.npz OUT.npz``

Each process gets 2 simulated CPU devices, joins the others with ``jax.distributed.initialize``
(coordinator on 127.0.0.1:PORT, CPU collectives over gloo), builds one ``("data",)`` mesh over all
``2 * H`` devices, and trains the Linen model K steps with ``flax_impl.data_parallel.linen_step``
(the single-device step, unchanged) on global batches it supplies only its own rows of
(``jax.make_array_from_process_local_data``), the state replicated
(``jax.make_array_from_callback``). ``DATA.npz``: ``x`` ``(K, B, H, W, C)`` channels-last, ``y``,
the initial ``params/...`` and ``batch_stats/...``. Process 0 writes ``OUT.npz`` (records keyed
like ``flax_impl.data_parallel.run_single``'s, under ``multihost/``) atomically.
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np


def replicate(a: np.ndarray, sharding) -> jax.Array:
    """``a`` (the same on every process) as one global array replicated over ``sharding``."""
    return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])


def main(pid: int, processes: int, port: int, data_path: str, out_path: str) -> None:
    jax.config.update("jax_num_cpu_devices", 2)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=processes, process_id=pid)
    from flax.traverse_util import flatten_dict, unflatten_dict
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from flax_impl import data_parallel as flax_dp
    from flax_impl import linen_models, linen_train

    mesh = Mesh(np.array(jax.devices()), ("data",))
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    with np.load(data_path) as d:
        data = dict(d)
    variables = unflatten_dict(
        {k: v for k, v in data.items() if k.startswith(("params/", "batch_stats/"))}, sep="/"
    )
    spec = flax_dp.RunSpec()
    module = linen_models.build_model(spec.model, **spec.config)
    state = linen_train.create_train_state(module, variables, linen_train.make_optimizer(spec.lr))
    state = jax.tree.map(lambda a: replicate(np.asarray(a), replicated), state)
    x, y = data["x"], data["y"]
    rows = x.shape[1] // processes
    mine = slice(pid * rows, (pid + 1) * rows)
    out = {"devices": np.asarray(len(jax.devices())), "processes": np.asarray(jax.process_count())}
    for k in range(len(x)):
        xk = jax.make_array_from_process_local_data(sharded, x[k, mine])
        yk = jax.make_array_from_process_local_data(sharded, y[k, mine])
        state, metrics = flax_dp.linen_step(state, xk, yk)
        metrics = multihost_utils.process_allgather(metrics, tiled=True)
        out[f"multihost/{k}/logits"] = np.asarray(metrics["logits"])
        for kind in ("grads", "stats"):
            for path, v in flatten_dict(metrics[kind], sep="/").items():
                out[f"multihost/{k}/{kind[:4]}/{path}"] = np.asarray(v)
    if pid == 0:
        np.savez(out_path + ".tmp.npz", **out)
        os.replace(out_path + ".tmp.npz", out_path)
    jax.distributed.shutdown()


if __name__ == "__main__":
    a = sys.argv[1:]
    main(int(a[0]), int(a[1]), int(a[2]), a[3], a[4])
