"""``python -m eval.benchmark``: see :mod:`eval.benchmark.cli`."""

from .cli import main

main()
