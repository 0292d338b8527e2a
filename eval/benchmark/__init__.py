"""Speed of the foveated VLM (one token per frame) against the dense baseline (64 tokens per frame), side by side.

Both models come from the same configuration class (``foveation_mode="foveated"`` / ``"dense"``), with random
weights of the real shapes (throughput does not depend on weight values), and are measured in one run:

1. the query pass through cached patch K/V against re-encoding the frame, per frame, over 256 frames
   (:mod:`.query`);
2. training throughput (T = 16 frames, ~48 text tokens, encoder trainable, LLM fully fine-tuned): frames/s, MFU
   and peak GPU memory, ours against dense, with every lever measured on and off (:mod:`.training`: the
   trainer's own :class:`~foveated_vlm.training.step.TrainStep`, each lever one of its options);
3. streaming latency, batch 1: encoder + two query passes + two LLM steps + head, per frame (the library's
   eager ``FoveatedStream.step``, and its fast path ``model.stream(..., max_frames=...)``: static KV caches, one
   CUDA graph per frame, with and without fused passes and ``torch.compile``) (:mod:`.streaming`);
4. captioning a 3,600-frame video (1 h at 1 fps) with 64 new tokens, end to end from decoded frames (the dense
   baseline's 8,192-token context cannot hold it: the report says how many frames fit) (:mod:`.long_video`);
5. how many frames/s the data loader (procedural clips + collator, workers, pinned memory) can feed
   (:mod:`.loader`);
6. ``train_accelerate.py`` itself, end to end at the same batch and frames with the fastest levers the trainer
   supports, its steady-state frames/s read from its own log beside the step's (:mod:`.trainer`).

Usage::

    python -m eval.benchmark --device cuda --output BENCHMARKS.md --json OUT/benchmark.json
    python -m eval.benchmark --tiny --device cpu     # tiny config on the CPU in seconds (tests run this)

GPU times are CUDA-event times after warm-up, medians of many repeats; CPU times use ``perf_counter``.
``torch.compile`` and CUDA graphs are GPU levers: on the CPU only the eager paths run (the fast streaming step
runs its graphed function eagerly there, so its logic is still checked against ``FoveatedStream.step``).
The Markdown report is rendered by :mod:`.report`, the command line is :mod:`.cli`.
"""
