"""Job arguments and results: JSON plus the extra types that must come back exactly (SPEC 1)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from errand.errors import ErrandError, SerializationError
from errand.serialization import TAG, decode_call, dumps, encode_call, loads


def assert_identical(got: Any, expected: Any, path: str = "value") -> None:
    """Equal *and* of the same types all the way down (1 == 1.0 == True, 1.1 == 1.10)."""
    assert type(got) is type(expected), f"{path}: got {type(got)}, expected {type(expected)}"
    if isinstance(expected, dict):
        assert list(got) == list(expected), f"{path}: keys {list(got)} != {list(expected)}"
        for key in expected:
            assert_identical(got[key], expected[key], f"{path}[{key!r}]")
    elif isinstance(expected, list | tuple):
        assert len(got) == len(expected), f"{path}: length {len(got)} != {len(expected)}"
        for index, (a, b) in enumerate(zip(got, expected, strict=True)):
            assert_identical(a, b, f"{path}[{index}]")
    elif isinstance(expected, Decimal):
        assert got.as_tuple() == expected.as_tuple(), f"{path}: {got!r} != {expected!r}"
    elif isinstance(expected, datetime):
        assert got == expected, f"{path}: {got!r} != {expected!r}"
        assert (got.tzinfo is None) == (expected.tzinfo is None), f"{path}: awareness changed"
        assert got.utcoffset() == expected.utcoffset(), f"{path}: offset changed"
    elif isinstance(expected, float):
        assert repr(got) == repr(expected), f"{path}: {got!r} != {expected!r}"
    else:
        assert got == expected, f"{path}: {got!r} != {expected!r}"


ROUND_TRIPS = {
    "aware datetime in UTC": datetime(2024, 5, 17, 13, 45, 12, 345678, tzinfo=UTC),
    "aware datetime with an odd offset": datetime(
        2024, 5, 17, 8, 15, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
    "naive datetime": datetime(2024, 5, 17, 13, 45, 12, 345678),
    "date": date(2024, 2, 29),
    "decimal with trailing zeros": Decimal("1.10"),
    "decimal with many trailing zeros": Decimal("100.000"),
    "negative zero decimal": Decimal("-0.00"),
    "decimal in exponent form": Decimal("1E+3"),
    "long decimal": Decimal("123456789012345678901234567890.123456789"),
    "uuid": UUID("12345678-1234-5678-1234-567812345678"),
    "bytes": b"\x00\xff\x10 binary\n",
    "empty bytes": b"",
    "tuple": (1, "a", None),
    "empty tuple": (),
    "nested tuples in a list": [(1, (2, (3,))), [()], ("x",)],
    "tuples in a dict": {"point": (1.5, -2), "pairs": [(1, 2), (3, 4)]},
    "dict with the tag key": {TAG: "decimal", "v": "1.10"},
    "dict with only the tag key": {TAG: None},
    "tag-key dict nested in a tuple": ({"a": {TAG: "tuple", "v": (1, 2)}},),
    "unicode": "héllo ✓ 日本語 \U0001f600 \u2028 \x00 \"quotes\" \\",
    "big ints": [2**64, -(10**100), 2**1000],
    "plain JSON": {"a": [1, 2.5, True, False, None, "s"], "b": {}, "c": []},
    "floats": [0.1, -0.0, 1e308, 5e-324, -1.5],
    "mixed": [date(2000, 1, 1), Decimal("0.5"), b"x", (UUID(int=1),), {"k": [None]}],
}


@pytest.mark.parametrize("value", ROUND_TRIPS.values(), ids=ROUND_TRIPS.keys())
def test_value_round_trips_exactly(value: Any) -> None:
    assert_identical(loads(dumps(value)), value)


@pytest.mark.parametrize("value", ROUND_TRIPS.values(), ids=ROUND_TRIPS.keys())
def test_call_round_trips_exactly(value: Any) -> None:
    args, kwargs = decode_call(*encode_call((value, 1), {"x": value}))
    assert_identical(args, [value, 1])
    assert_identical(kwargs, {"x": value})


def test_bytearray_and_memoryview_come_back_as_bytes() -> None:
    for value in (bytearray(b"\x01ab"), memoryview(b"\x01ab")):
        got = loads(dumps(value))
        assert type(got) is bytes
        assert got == b"\x01ab"


def test_plain_json_is_stored_untagged() -> None:
    """Rows stay readable from SQL and other languages when no extra type is used."""
    value = {"to": "a@example.com", "n": [1, 2.5, None, True], "nested": {"k": "v"}}
    assert json.loads(dumps(value)) == value
    assert TAG not in dumps(value)


def test_extra_types_are_stored_as_tagged_objects() -> None:
    assert json.loads(dumps(Decimal("1.10"))) == {TAG: "decimal", "v": "1.10"}
    assert json.loads(dumps((1, 2))) == {TAG: "tuple", "v": [1, 2]}


def test_a_user_dict_with_the_tag_key_is_not_mistaken_for_a_tagged_value() -> None:
    lookalike = {TAG: "uuid", "v": "12345678-1234-5678-1234-567812345678"}
    got = loads(dumps(lookalike))
    assert_identical(got, lookalike)


def test_non_ascii_text_is_stored_as_is() -> None:
    assert "日本語" in dumps("日本語")
    assert "日本語" in encode_call(["日本語"], {})[0]


def test_encode_call_accepts_a_tuple_of_args_and_decodes_a_list() -> None:
    args, kwargs = decode_call(*encode_call((1, "two"), {"three": 3}))
    assert args == [1, "two"]
    assert kwargs == {"three": 3}


# -- refusals -------------------------------------------------------------------------

REFUSED_ARGS = [
    pytest.param([1, object()], {}, "args[1]", "builtins.object", id="object"),
    pytest.param([], {"to": {"a", "b"}}, "kwargs['to']", "set", id="set-in-kwargs"),
    pytest.param([frozenset()], {}, "args[0]", "frozenset", id="frozenset"),
    pytest.param([float("nan")], {}, "args[0]", "nan", id="float-nan"),
    pytest.param([], {"x": float("inf")}, "kwargs['x']", "inf", id="float-inf"),
    pytest.param([float("-inf")], {}, "args[0]", "inf", id="float-minus-inf"),
    pytest.param([Decimal("NaN")], {}, "args[0]", "NaN", id="decimal-nan"),
    pytest.param([Decimal("sNaN")], {}, "args[0]", "sNaN", id="decimal-snan"),
    pytest.param([Decimal("-Infinity")], {}, "args[0]", "Infinity", id="decimal-infinity"),
    pytest.param([{1: "a"}], {}, "args[0]", "key 1", id="int-key"),
    pytest.param([{"ok": {(1, 2): "a"}}], {}, "args[0]['ok']", "key (1, 2)", id="tuple-key"),
    pytest.param([{"items": [1, 2, float("nan")]}], {}, "args[0]['items'][2]", "nan",
                 id="nested-path"),
    pytest.param([(1, (2, object()))], {}, "args[0][1][1]", "object", id="inside-tuples"),
    pytest.param([], {"cfg": {"a": [{"b": {1, 2}}]}}, "kwargs['cfg']['a'][0]['b']", "set",
                 id="deep-kwargs"),
    pytest.param([{TAG: "x", "bad": object()}], {}, "args[0]['bad']", "object",
                 id="tag-key-dict-checks-its-values"),
    pytest.param([1j], {}, "args[0]", "complex", id="complex"),
]


@pytest.mark.parametrize(("args", "kwargs", "where", "what"), REFUSED_ARGS)
def test_unsupported_value_is_refused_naming_where_it_sits(
        args: list[Any], kwargs: dict[str, Any], where: str, what: str) -> None:
    with pytest.raises(SerializationError) as caught:
        encode_call(args, kwargs)
    message = str(caught.value)
    assert message.startswith(where + " "), message
    assert what in message


def test_refusal_with_a_caller_chosen_name() -> None:
    with pytest.raises(SerializationError, match=r"^result is a builtins\.object"):
        dumps(object(), "result")
    with pytest.raises(SerializationError, match=r"^value is a builtins\.set"):
        dumps({1})


def test_refusal_lists_the_supported_types() -> None:
    with pytest.raises(SerializationError) as caught:
        dumps(object())
    for name in ("datetime", "date", "Decimal", "UUID", "bytes", "tuple"):
        assert name in str(caught.value)


def test_serialization_error_is_an_errand_error_and_a_type_error() -> None:
    with pytest.raises(SerializationError) as caught:
        dumps(object())
    assert isinstance(caught.value, ErrandError)
    assert isinstance(caught.value, TypeError)


def test_int_too_long_for_json_is_refused_naming_the_argument() -> None:
    with pytest.raises(SerializationError, match=r"^args\[0\]"):
        encode_call([10**5000], {})


# -- decoding malformed rows -----------------------------------------------------------

def test_decode_call_refuses_text_that_is_not_json() -> None:
    with pytest.raises(ValueError):
        decode_call("[1,", "{}")
    with pytest.raises(ValueError):
        decode_call("[]", "{'a': 1}")


@pytest.mark.parametrize(("args", "kind"), [
    ('{"a": 1}', "dict"), ('"text"', "str"), ("3", "int"), ("null", "NoneType"),
    ('{"__errand__": "tuple", "v": [1]}', "tuple"),
])
def test_decode_call_refuses_args_that_are_not_a_list(args: str, kind: str) -> None:
    with pytest.raises(ValueError, match=f"stored args must be a JSON array, got {kind}"):
        decode_call(args, "{}")


@pytest.mark.parametrize(("kwargs", "kind"),
                         [("[1]", "list"), ('"x"', "str"), ("null", "NoneType")])
def test_decode_call_refuses_kwargs_that_are_not_a_dict(kwargs: str, kind: str) -> None:
    with pytest.raises(ValueError, match=f"stored kwargs must be a JSON object, got {kind}"):
        decode_call("[]", kwargs)


def test_decode_call_refuses_an_unknown_tag() -> None:
    with pytest.raises(ValueError, match="unknown tagged type 'pickle'"):
        decode_call('[{"__errand__": "pickle", "v": "gASV"}]', "{}")


@pytest.mark.parametrize("stored", [
    '[{"__errand__": "tuple"}]',                     # KeyError: 'v'
    '[{"__errand__": "decimal", "v": "abc"}]',       # decimal.InvalidOperation
    '[{"__errand__": "date", "v": 5}]',              # TypeError
    '[{"__errand__": "dict", "v": [1]}]',            # TypeError
    '[{"__errand__": "bytes", "v": "!!"}]',          # silently decodes to b""
    '[{"__errand__": "tuple", "v": "abc"}]',         # silently ("a", "b", "c")
])
def test_decode_call_refuses_a_malformed_tagged_value_with_value_error(stored: str) -> None:
    with pytest.raises(ValueError):
        decode_call(stored, "{}")


# -- property: any nested value built from the supported types round-trips -------------

fixed_offsets = st.builds(
    timezone, st.timedeltas(min_value=timedelta(hours=-23, minutes=-59),
                            max_value=timedelta(hours=23, minutes=59)))
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(),
    st.floats(allow_nan=False, allow_infinity=False), st.text(),
    st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31),
                 timezones=st.none() | fixed_offsets),
    st.dates(), st.decimals(allow_nan=False, allow_infinity=False), st.uuids(), st.binary(),
)
keys = st.one_of(st.just(TAG), st.just("v"), st.text(max_size=8))
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(keys, children, max_size=4),
    ),
    max_leaves=20,
)


@settings(database=None, deadline=None, max_examples=200)
@given(values)
def test_property_any_supported_value_round_trips(value: Any) -> None:
    assert_identical(loads(dumps(value)), value)


@settings(database=None, deadline=None, max_examples=100)
@given(st.lists(values, max_size=3), st.dictionaries(st.text(max_size=8), values, max_size=3))
def test_property_any_supported_call_round_trips(args: list[Any],
                                                 kwargs: dict[str, Any]) -> None:
    got_args, got_kwargs = decode_call(*encode_call(args, kwargs))
    assert_identical(got_args, args)
    assert_identical(got_kwargs, kwargs)
