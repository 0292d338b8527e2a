"""Studies of the foveated VLM: sweeps and comparisons run on top of the library, beside it, never inside it.

One folder a study, each with its arms file, its runner (or the shared :mod:`studies.runner`), its report code and
a ``RESULTS.md`` (the tables and the commands that regenerate them):

* ``studies/named_object``  does the LLM learn to look where the prompt points (the named-object sweep).
* ``studies/readers``      every frame reader on the named-object task: accuracy, looking and costs.
* ``studies/label_free``   a fovea that looks without box labels.
* ``studies/multi_gpu``    training on 2 GPUs against 1 (DDP, FSDP, throughput).

Studies import the library and ``eval``; the Hub files and ``eval`` never import a study.
"""
