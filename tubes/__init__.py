"""Proposals, region features and tubes for spatio-temporal video grounding (docs/stvg.md).

Module map: proposals (the proposal sources and the detections-file format), regions (RoI-Align features over the
pretrained patch grid, their cache, class-agnostic model proposals), linking (VCMA Eq. 4 link scores, Viterbi,
M tubes per video).
"""
