"""Experiments that reproduce a table or figure (the papers' or docs/results/'), one JSON object each."""
