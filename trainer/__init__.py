"""The training machinery both stages use (pretraining, finetuning): DeepSpeed engine and LR schedule
(engine.py), sharded checkpoints with their complete marker (checkpoint.py), the run log and TensorBoard
(runlog.py) and the step loop with its log and checkpoint cadence (loop.py), configured by one small
TrainSettings (settings.py) that each stage's config maps to. It knows nothing of videos, shards, heads or Ray:
a stage hands the loop a model and a Task (what one micro-batch is, what a checkpoint keeps besides weights)."""
