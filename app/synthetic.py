"""Mixing synthetic sonnets into the sonnet task's training set: the application reads the distill file and hands
the texts to the task (`Task.load(..., extra_texts=...)`); the task never knows where they came from."""

from __future__ import annotations

from distill.synthetic import load_synthetic, to_course_layout

from .settings import SyntheticSettings


def synthetic_texts(synthetic: SyntheticSettings | None) -> list[str]:
    """The synthetic sonnets `--synthetic FILE [--synthetic-n N] [--synthetic-filter all|perfect]` adds, in the
    course's layout; none without --synthetic."""
    if synthetic is None:
        return []
    return [to_course_layout(t) for t in load_synthetic(synthetic.path, n=synthetic.n, filter=synthetic.filter)]
