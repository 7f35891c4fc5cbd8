"""Runnable studies and benchmarks of activeft_jax (a checkout of the repository, not the library).

Run from the repository root: ``python -m experiments.study_a`` (or the `make` targets
the README lists). Everything here uses only the public API of `activeft_jax`;
`experiments.common` holds what the studies share.
"""
