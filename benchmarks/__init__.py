"""The benchmarks: each module measures one thing and writes its report (JSON + Markdown + PNG).

Run them from the repository root as modules, e.g. ``python -m benchmarks.latency``; shared helpers live
beside them (``benchmarks.report``, ``benchmarks.fleet.proc_stat``). Not part of the installed package.
"""
