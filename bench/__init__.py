"""Bastion benchmarks (not tests): ``python -m bench [--quick]``.

Every figure is measured against a bare Falcon app served the same way
(:mod:`bench.ceiling`), in the same run. See docs/benchmarks.md.
"""
