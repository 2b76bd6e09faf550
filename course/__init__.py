"""The course's data: its file names, converters from public sources, fetching, the file readers and the
course's prediction and reference file formats.

A plug-in-level package: it imports only the `minigpt2` library and itself. Tasks learn from what it reads;
the application writes predictions through its formats.

    python -m course fetch --task all --data-dir data
"""
