"""The test suite; its folders mirror the packages (tests/minigpt2/ for minigpt2/, ...), plus contract/ and
system/ for the promises that span packages."""

from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent  # the repository
FIXTURES = TESTS / "fixtures"
