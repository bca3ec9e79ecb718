""".env.example documents exactly the variables config.py reads, with their true defaults."""

import io
import re
from collections import Counter

from dotenv import dotenv_values

import config
from tests.conftest import REPO

EXAMPLE = REPO / ".env.example"
# A documented variable is a commented-out assignment: `# NAME=DEFAULT`.
ASSIGNMENT = re.compile(r"# ([A-Z][A-Z0-9_]*)=(.*)")


class RecordingEnvironment(dict):
    """An environment mapping that records the name of every variable looked up in it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.looked_up: set[str] = set()

    def get(self, name, default=None):
        self.looked_up.add(name)
        return super().get(name, default)

    def __getitem__(self, name):
        self.looked_up.add(name)
        return super().__getitem__(name)

    def __contains__(self, name):
        self.looked_up.add(name)
        return super().__contains__(name)


def example_lines() -> list[str]:
    return EXAMPLE.read_text(encoding="utf-8").splitlines()


def documented_names() -> list[str]:
    return [match.group(1) for line in example_lines() if (match := ASSIGNMENT.fullmatch(line))]


def example_values() -> dict[str, str]:
    """Return the example's variables as a `.env` with every line uncommented would set them."""
    assignments = "\n".join(line.removeprefix("# ") for line in example_lines() if ASSIGNMENT.fullmatch(line))
    return {name: value or "" for name, value in dotenv_values(stream=io.StringIO(assignments)).items()}


def test_config_lists_every_variable_it_reads():
    environment = RecordingEnvironment()
    config.load_settings(environment)
    assert environment.looked_up == set(config.ENVIRONMENT_VARIABLES)


def test_example_documents_every_variable():
    documented = documented_names()
    assert [name for name, count in Counter(documented).items() if count > 1] == []
    assert sorted(set(config.ENVIRONMENT_VARIABLES) - set(documented)) == [], "missing from .env.example"
    assert sorted(set(documented) - set(config.ENVIRONMENT_VARIABLES)) == [], "not read by config.py"


def test_example_variables_follow_config_order():
    assert documented_names() == list(config.ENVIRONMENT_VARIABLES)


def test_example_values_are_the_defaults():
    assert config.load_settings(example_values()) == config.load_settings({})


def test_example_explains_each_variable():
    lines = example_lines()
    for number, line in enumerate(lines):
        if not ASSIGNMENT.fullmatch(line):
            continue
        # Related variables may share one explanation: skip the assignments right above.
        above = number - 1
        while above >= 0 and ASSIGNMENT.fullmatch(lines[above]):
            above -= 1
        assert above >= 0, f"no explanation above {line!r}"
        assert lines[above].startswith("# "), f"no explanation above {line!r}"
        assert len(lines[above]) > 2, f"an empty comment above {line!r}"
