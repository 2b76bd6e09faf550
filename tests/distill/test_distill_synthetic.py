"""load_synthetic: the kept sonnets of a generate file, all or only the perfect ones, the first n."""
import json

import pytest

from distill.records import SyntheticFileError
from distill.synthetic import load_synthetic
from minigpt2.errors import UserError
from tests.fakegemini import make_sonnet


@pytest.fixture
def synth(tmp_path):
    rows = [
        {"id": "000000", "status": "kept", "text": make_sonnet(1)},
        {"id": "000001", "status": "rejected", "reason": "leak", "text": make_sonnet(2)},
        {"id": "000002", "status": "kept", "text": make_sonnet(5, perfect=False), "perfect": True},  # stale flag
        {"id": "000003", "status": "kept", "text": make_sonnet(3)},
        {"id": "000004", "status": "rejected", "reason": "empty", "text": ""},
    ]
    path = tmp_path / "synth.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_all_keeps_file_order_and_skips_rejected(synth):
    assert load_synthetic(synth) == [make_sonnet(1), make_sonnet(5, perfect=False), make_sonnet(3)]


def test_perfect_rechecks_the_text(synth):
    assert load_synthetic(synth, filter="perfect") == [make_sonnet(1), make_sonnet(3)]


def test_n_takes_the_first_and_refuses_to_fall_short(synth):
    assert load_synthetic(synth, n=2) == [make_sonnet(1), make_sonnet(5, perfect=False)]
    assert load_synthetic(synth, n=0) == []
    with pytest.raises(ValueError, match=r"synth\.jsonl: asked for 3 synthetic sonnets \(filter=perfect\) but it has "
                                         r"only 2"):
        load_synthetic(synth, n=3, filter="perfect")


def test_bad_input_errors(synth, tmp_path):
    with pytest.raises(UserError, match="filter must be one of"):
        load_synthetic(synth, filter="good")
    with pytest.raises(SyntheticFileError, match="nope.jsonl: no such synthetic sonnet file"):
        load_synthetic(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "text": "x"}\n{"id": 2, "text": 3}\n')
    with pytest.raises(SyntheticFileError, match=r"bad\.jsonl:2: expected a JSON object with 'id', a string field "
                                                 r"'text'"):
        load_synthetic(bad)
