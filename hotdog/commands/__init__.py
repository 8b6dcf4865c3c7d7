"""Sub-commands of ``python -m hotdog``; one module per area, each with ``register(sub)``."""
