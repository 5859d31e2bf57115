"""SuperGen in JAX: a flow-matching DiT, training-free tiled ultra-high-resolution generation with a region-aware
per-tile cache, and tile parallelism over devices."""
