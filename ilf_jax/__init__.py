"""ilf_jax: Imitation learning from Language Feedback for code generation, in JAX/Flax."""

__version__ = "0.1.0"
