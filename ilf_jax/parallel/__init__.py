"""Device meshes, logical-axis rules and sharding helpers."""

from ilf_jax.parallel.mesh import AXES, make_mesh
from ilf_jax.parallel.sharding import (
    DEFAULT_RULES,
    assert_sharded,
    batch_sharding,
    constrainer,
    logical_sharding,
    param_shardings,
    replicated,
)

__all__ = [
    "AXES",
    "DEFAULT_RULES",
    "assert_sharded",
    "batch_sharding",
    "constrainer",
    "logical_sharding",
    "make_mesh",
    "param_shardings",
    "replicated",
]
