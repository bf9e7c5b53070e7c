"""Several processes: ranks, data-parallel and sharded training helpers."""
