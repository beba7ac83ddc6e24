"""Diagnostics: probes that explain a figure (what a model or its input can hold), one JSON object each."""
