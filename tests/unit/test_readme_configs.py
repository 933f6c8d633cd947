"""README's Dovecot configurations are what the test nodes run: each is the text that
`operator_example()` renders for its version with the functions every node's dovecot.conf is
made of, so a change to the configuration writer must update README (the failure shows the
new text)."""

from __future__ import annotations

from pathlib import Path

import pytest

from replicator.dovecot.instance_conf import operator_example
from replicator.dovecot.version import parse

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize("version", ["2.3.19", "2.4.1"])
def test_readme_shows_the_rendered_configuration(version: str) -> None:
    rendered = operator_example(parse(version))
    assert f"```\n{rendered}```" in README.read_text(), f"README should show:\n{rendered}"


def test_the_two_versions_differ_where_2_4_changed_the_language() -> None:
    old, new = operator_example(parse("2.3.19")), operator_example(parse("2.4.1"))
    assert "mail_location = maildir:" in old and "plugin {" in old
    assert new.startswith("dovecot_config_version = 2.4.1\n")
    assert "mail_location" not in new and "plugin {" not in new and "%u" not in new
