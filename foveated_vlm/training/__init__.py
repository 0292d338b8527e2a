"""Training of the foveated VLM: config, data loading and sharding, the accelerate loop, checkpoints, the Hub.

Entry point: ``accelerate launch train_accelerate.py --config configs/demo.yaml`` (see ``train_accelerate.py``).
Modules: :mod:`.config` (YAML sections and ``--set`` overrides), :mod:`.data` (data sets, target cache, loaders; the
sharding is :mod:`foveated_vlm.data.sampler`'s), :mod:`.modeling` (model building, LoRA, parameter groups),
:mod:`.trainer` (the loop, validation, logging), :mod:`.checkpoint`, :mod:`.hub` (model card, push), and
:mod:`.demo_report` (held-out captioning accuracy and figures of the CPU demo).
"""
