"""Released STVG annotations -> the files the evaluator and the finetune adapters read (TubeDETR's layout).

`python -m grounding.convert vidstg|hcstvg ...` (docs/real_data.md). It lives in grounding/ beside the readers of
both layouts: its output is what `grounding.evaluate vidstg|hcstvg` scores against and what finetune/'s adapters
read, and it needs nothing of a later stage. Written from the formats' documentation (VidSTG-Dataset, VidOR,
HC-STVG READMEs and TubeDETR's published file layout), not from anyone's code.
"""
