"""The channel configuration language (SPEC 5)."""

from __future__ import annotations

import pytest

from errand.channels import ChannelConfig, parse_channels
from errand.errors import ConfigurationError


def test_parses_a_tree_of_channels_in_order() -> None:
    configs = parse_channels("root:4,root.mail:2,root.heavy:1:sequential")
    assert list(configs) == ["root", "root.mail", "root.heavy"]
    assert configs["root"] == ChannelConfig("root", 4, sequential=False)
    assert configs["root.mail"] == ChannelConfig("root.mail", 2, sequential=False)
    assert configs["root.heavy"] == ChannelConfig("root.heavy", 1, sequential=True)


@pytest.mark.parametrize("text", [None, "", "   ", ",", " , ,"])
def test_empty_configuration_means_no_channel_configured(text: str | None) -> None:
    assert parse_channels(text) == {}


def test_whitespace_around_entries_and_a_trailing_comma_are_ignored() -> None:
    configs = parse_channels("  root:4 ,\troot.mail:2 ,\n root.a.b:1:sequential ,")
    assert configs == {
        "root": ChannelConfig("root", 4),
        "root.mail": ChannelConfig("root.mail", 2),
        "root.a.b": ChannelConfig("root.a.b", 1, sequential=True),
    }


def test_channel_without_capacity_has_no_cap_of_its_own() -> None:
    assert parse_channels("root,root.mail") == {
        "root": ChannelConfig("root", None), "root.mail": ChannelConfig("root.mail", None)}


def test_a_subchannel_may_be_configured_without_root() -> None:
    assert parse_channels("root.mail:3") == {"root.mail": ChannelConfig("root.mail", 3)}


@pytest.mark.parametrize(("text", "fragment"), [
    ("mail:2", "the name must be 'root'"),
    ("root..x:1", "the name must be 'root'"),
    ("root.:1", "the name must be 'root'"),
    ("Root:1", "the name must be 'root'"),
    ("rootmail:1", "the name must be 'root'"),
    (":4", "the name must be 'root'"),
    ("root.a b:1", "the name must be 'root'"),
    ("root:0", "capacity must be a whole number >= 1"),
    ("root:-1", "capacity must be a whole number >= 1"),
    ("root:x", "capacity must be a whole number >= 1"),
    ("root:2.5", "capacity must be a whole number >= 1"),
    ("root:", "capacity must be a whole number >= 1"),
    ("root:sequential", "capacity must be a whole number >= 1"),
    ("root:4:fast", "unknown flag 'fast'"),
    ("root:4:", "unknown flag ''"),
    ("root.heavy:2:sequential", "capacity must be 1"),
    ("root:4,root.mail:2,root:2", "'root' is configured twice"),
    ("root.mail:1, root.mail:1", "'root.mail' is configured twice"),
])
def test_bad_configuration_is_refused_clearly(text: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        parse_channels(text)


def test_error_names_the_offending_entry() -> None:
    with pytest.raises(ConfigurationError, match=r"'root\.mail:0'"):
        parse_channels("root:4, root.mail:0")


def test_superscript_digit_capacity_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        parse_channels("root:²")


def test_name_with_a_newline_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        parse_channels("root\n:4")
