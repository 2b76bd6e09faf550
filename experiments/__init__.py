"""The study's experiments: named sweeps of `minigpt2.finetune` runs, resumable, reported as CSV, a markdown
table and PNG plots with bootstrap 95% intervals. `python -m experiments --help`.

    sweeps.py  what each sweep runs (lists of finetune arguments)
    runner.py  runs them into checkpoints/experiments/<sweep>/<run>/, skipping finished ones
    stats.py   bootstrap intervals (chrF over resampled sonnets, accuracy) and mean ± std over seeds
    report.py  results/<sweep>.csv, .md, .png
"""
