"""Evaluation of the foveated VLM: one command per question, each writing ``OUT/report.md`` + ``report.json``.

* ``python -m eval.intrinsic``  losses of both passes and their ratio (bootstrap CI), next-frame MSE / PSNR /
  SSIM, attention entropy and coverage, query similarity (proposal §13.1).
* ``python -m eval.fovea``      attention mass inside the named / moving object's box vs chance (procedural).
* ``python -m eval.probes``     test-time query probes on the same weights: planned vs static, random, centre,
  time-shuffled, oracle-box and blank-frame readings (accuracy, losses, mass in box; writes ``probes.*``).
* ``python -m eval.captioning`` BLEU, ROUGE-L, CIDEr-D and attribute accuracy on held-out combinations.
* ``python -m eval.build_mcq``  a small multiple-choice video QA set from the procedural data.
* ``python -m eval.mcq``        MVBench / Video-MME style multiple-choice QA by answer log-likelihood.
* ``python -m eval.figures``    loss curves, attention heat maps, predicted vs real next frames (PNG + GIF).
* ``python -m eval.demo_report`` held-out captioning, probes and figures of a trained demo run (``scripts/demo.sh``).
* ``python -m eval.benchmark``  GPU speed of foveated vs dense (the package ``eval/benchmark``; see its docstring).

Run them from the repository root as modules (``python -m eval.NAME``), not as files. Sweeps and comparisons
(arms trained side by side, their reports and results pages) are ``studies/``, which uses ``eval``; ``eval`` never
imports a study.
"""
