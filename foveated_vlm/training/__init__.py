"""Training of the foveated VLM: config, data loading and sharding, the accelerate loop, checkpoints, the Hub.

Entry point: ``accelerate launch train_accelerate.py --config configs/demo.yaml`` (see ``train_accelerate.py``).
Modules: :mod:`.config` (YAML sections and ``--set`` overrides), :mod:`.data` (data sets, target cache, loaders; the
sharding is :mod:`foveated_vlm.data.sampler`'s), :mod:`.modeling` (model building, LoRA, parameter groups),
:mod:`.trainer` (the loop, validation, logging), :mod:`.checkpoint` and :mod:`.hub` (model card, push). The CPU
demo's held-out report is ``eval.demo_report`` (evaluation imports training, never the reverse).
"""
