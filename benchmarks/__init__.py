"""The project's measurements, each a module run from the checkout's root (`python -m benchmarks.speed.sinkhorn`)
that prints one JSON object; none edits the import path, none is imported by the library or the tests.

- speed/        speed and memory against a baseline measured in the same run (ratios): sinkhorn, index_search,
                shard_throughput, train_step, fsm_throughput.
- experiments/  runs that reproduce a table or figure of the papers or of docs/results/: ablations, finetune_wsra,
                stvg_baselines, stvg_heads, vcma_rows, winner_correlation, variants.
- diagnostics/  probes that explain a figure rather than reproduce one (how much a model or its input can hold):
                learning_probe, action_ceiling, temporal_decomposition, pseudo_positive_pairs, stvg_when_probe,
                winner_discrimination, vcma_parser.
- gpu/          the GPU check (docs/gpu_check.md): check.py measures every GPU figure in one short run on a bare
                GPU machine, check.sh and wheels.sh deploy it there; kept together because they share that
                machine's contract (no Ray, DeepSpeed, FAISS or fsspec).
Code that more than one of them, or a test, needs lives in the library.
"""
