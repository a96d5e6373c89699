"""The benchmarks package, for the benchmark tests."""
import importlib


def load_benchmark(name):
    """``benchmarks.<name>`` (imported as a module of the package, the way ``python -m`` runs it)."""
    return importlib.import_module("benchmarks." + name)
