"""Speed and memory benchmarks: each prints one JSON object comparing against a baseline measured in the same run."""
