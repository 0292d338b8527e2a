"""Studies of the foveated VLM: sweeps, reader comparisons, their arms files, reports and results pages.

Nothing in the model's files (the root ``*_foveated.py``) or in ``eval/`` imports this package.
"""
