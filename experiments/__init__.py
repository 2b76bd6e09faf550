"""The study's experiments: named sweeps of `minigpt2.finetune` runs, resumable, reported as CSV, markdown tables,
PNG plots and one HTML page with 95% intervals. `python -m experiments --help`; each module's docstring says
what it holds (the sweeps themselves: sweeps.py)."""
