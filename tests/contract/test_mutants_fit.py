"""The hand mutants of tools/mutate.py still fit the code: a refactor that moves a mutant's snippet fails here, in
the default suite, instead of leaving a mutant that `tools/mutate.py` reports as stale only when someone runs it."""

from __future__ import annotations

import importlib.util
import sys

from tests import ROOT


def _mutate_module():
    spec = importlib.util.spec_from_file_location("mutate", ROOT / "tools" / "mutate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("mutate", module)  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_every_hand_mutant_names_a_snippet_found_once_and_test_files_that_exist():
    mutate = _mutate_module()
    assert len(mutate.MUTANTS) >= 90
    names = [m.name for m in mutate.MUTANTS]
    assert len(set(names)) == len(names), "two mutants share a name"
    stale = {m.name: (ROOT / m.file).read_text(encoding="utf-8").count(m.original) for m in mutate.MUTANTS}
    assert {name: n for name, n in stale.items() if n != 1} == {}
    assert all(m.original != m.replacement for m in mutate.MUTANTS)
    missing = [(m.name, t) for m in mutate.MUTANTS for t in m.tests if not (ROOT / t).is_file()]
    assert missing == []
