"""Multitask sparse parity (paper Section 3): data.py (spec, sampler) · model.py (the batched width grid) · train.py (training shards) · analysis.py (tables, exponents) · report.py."""
