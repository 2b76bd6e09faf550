"""`app.synthetic.synthetic_texts`: which synthetic sonnets a fine-tuning run adds for `--synthetic FILE
[--synthetic-n N] [--synthetic-filter all|perfect]`, in which order and layout (docs/testing.md, "Automated
mutants", "The front ends")."""

from __future__ import annotations

import json

import pytest

from app.settings import SyntheticSettings
from app.synthetic import synthetic_texts
from distill.check import check_sonnet
from tests.fakegemini import make_sonnet


def course_layout(text: str) -> str:
    """By hand: the 14 lines without the blank ones, the last two indented by two spaces."""
    lines = [line for line in text.split("\n") if line]
    assert len(lines) == 14
    return "\n".join(lines[:12] + ["  " + lines[12], "  " + lines[13]])


@pytest.fixture
def synth(tmp_path):
    """Ids 000001-000005 written out of order: 2 and 4 break the couplet, 3 was rejected; quatrains apart."""
    texts = {i: make_sonnet(i, perfect=i not in (2, 4)).replace("\n", "\n\n", 1) for i in range(1, 6)}
    rows = [{"id": f"{i:06d}", "status": "rejected" if i == 3 else "kept", "text": texts[i]} for i in (5, 2, 1, 4, 3)]
    path = tmp_path / "synth.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert [check_sonnet(texts[i]).perfect for i in (1, 2, 4, 5)] == [True, False, False, True]
    return path, {i: course_layout(t) for i, t in texts.items()}


def test_none_without_synthetic():
    assert synthetic_texts(None) == []


def test_every_kept_sonnet_in_id_order_in_the_course_layout(synth):
    path, layout = synth
    assert synthetic_texts(SyntheticSettings(str(path))) == [layout[1], layout[2], layout[4], layout[5]]
    assert synthetic_texts(SyntheticSettings(str(path), n=2)) == [layout[1], layout[2]]
    assert synthetic_texts(SyntheticSettings(str(path), n=0)) == []


def test_the_filter_and_n_are_passed_on(synth):
    path, layout = synth
    assert synthetic_texts(SyntheticSettings(str(path), filter="perfect")) == [layout[1], layout[5]]
    assert synthetic_texts(SyntheticSettings(str(path), n=2, filter="perfect")) == [layout[1], layout[5]]
    assert synthetic_texts(SyntheticSettings(str(path), n=1, filter="perfect")) == [layout[1]]
    with pytest.raises(ValueError) as e:
        synthetic_texts(SyntheticSettings(str(path), n=3, filter="perfect"))
    assert str(e.value) == f"{path}: asked for 3 synthetic sonnets (filter=perfect) but it has only 2"
