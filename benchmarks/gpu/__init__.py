"""The GPU check (docs/gpu_check.md) and the scripts that deploy it on a bare GPU machine."""
