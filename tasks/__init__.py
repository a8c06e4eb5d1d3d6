"""The computations: one package per study (sparse_parity, lm, qdg), one module per stage; `stats` holds the pure
statistics. Plain functions hold the logic; thin Prefect tasks (`tasks.caching.quanta_task`) call them."""
