"""revgw's benchmark: the tunnel against the direct path to the same private server.

``python -m benchmarks`` (``make bench``) runs it; ``--smoke`` runs a few-second
version that ``tests/test_bench_smoke.py`` uses to keep it working. See
``benchmarks/README.md`` for what each figure means.
"""
