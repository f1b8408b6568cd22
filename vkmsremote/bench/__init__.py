"""Benchmark support (scripts/bench_pipeline.py, scripts/bench_peer.py): frame-numbered workloads, a
synthetic page-flipping scanout shared between processes, the measuring C client, statistics and plots.

Nothing here is imported by the server itself.
"""
