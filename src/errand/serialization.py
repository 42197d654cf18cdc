"""JSON for job arguments and results, with the few extra types users pass every day.

`datetime`, `date`, `Decimal`, `UUID`, `bytes` and `tuple` are stored as tagged objects
(`{"__errand__": "decimal", "v": "1.10"}`) so they come back exactly as they went in. Anything
else is refused before a row is written, with the path of the offending value in the message.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from errand.errors import SerializationError

TAG = "__errand__"

_Tagged = dict[str, Any]
_MAX_INT_BITS = 14_000  # about Python's 4,300-digit limit for turning an int into text


def _tag(kind: str, value: Any) -> _Tagged:
    return {TAG: kind, "v": value}


def to_jsonable(value: Any, where: str) -> Any:
    """Turn `value` into plain JSON types, tagging the extra types; `where` names it in errors."""
    kind = type(value)
    if value is None or kind is str or kind is bool:
        return value
    if kind is int:
        if value.bit_length() > _MAX_INT_BITS:
            raise SerializationError(f"{where} is an int too large to store as JSON")
        return value
    if kind is float:
        if not math.isfinite(value):
            raise SerializationError(f"{where} is {value!r}: NaN and infinity are not JSON")
        return value
    if kind is list:
        return [to_jsonable(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if kind is dict:
        return _dict_to_jsonable(value, where)
    if kind is tuple:
        return _tag("tuple", [to_jsonable(item, f"{where}[{i}]") for i, item in enumerate(value)])
    if isinstance(value, datetime):
        return _tag("datetime", value.isoformat())
    if isinstance(value, date):
        return _tag("date", value.isoformat())
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise SerializationError(f"{where} is {value!r}: only finite decimals are stored")
        return _tag("decimal", str(value))
    if isinstance(value, UUID):
        return _tag("uuid", str(value))
    if isinstance(value, bytes | bytearray | memoryview):
        return _tag("bytes", base64.b64encode(bytes(value)).decode("ascii"))
    raise SerializationError(
        f"{where} is a {kind.__module__}.{kind.__qualname__}, which cannot be stored as JSON "
        "(use JSON types, datetime, date, Decimal, UUID, bytes or tuple)")


def _dict_to_jsonable(value: dict[Any, Any], where: str) -> Any:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if type(key) is not str:
            raise SerializationError(
                f"{where} has the key {key!r}: dictionary keys must be strings to round-trip")
        out[key] = to_jsonable(item, f"{where}[{key!r}]")
    if TAG in out:  # a user dict that uses our tag key: stored as pairs, so never mistaken
        return _tag("dict", [[key, item] for key, item in out.items()])
    return out


def _untag(obj: dict[str, Any]) -> Any:
    kind = obj.get(TAG)
    if kind is None:
        return obj
    try:
        return _decode_tagged(kind, obj["v"])
    except (KeyError, TypeError, ArithmeticError, binascii.Error) as exc:
        raise ValueError(f"malformed tagged {kind!r} value: {obj!r}") from exc


_DECODER = json.JSONDecoder(object_hook=_untag)


def _decode_tagged(kind: str, value: Any) -> Any:
    if kind in ("tuple", "dict") and not isinstance(value, list):
        raise TypeError(f"a tagged {kind} holds a list")
    if kind == "tuple":
        return tuple(value)
    if kind == "datetime":
        return datetime.fromisoformat(value)
    if kind == "date":
        return date.fromisoformat(value)
    if kind == "decimal":
        return Decimal(value)
    if kind == "uuid":
        return UUID(value)
    if kind == "bytes":
        return base64.b64decode(value, validate=True)
    if kind == "dict":
        return {key: item for key, item in value}
    raise ValueError(f"unknown tagged type {kind!r}")


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
"""One encoder for every dump, one decoder for every load: `json.dumps` and `json.loads`
with options build a new one per call, which cost more than the work itself (a bulk
enqueue encodes, a job process decodes three documents per job)."""


def dumps(value: Any, where: str = "value") -> str:
    return _ENCODER.encode(to_jsonable(value, where))


def loads(text: str) -> Any:
    """Decode stored JSON; raises ValueError on text that is not errand's JSON."""
    if text == "{}":  # most kwargs and contexts: 30x cheaper than decoding
        return {}
    return _DECODER.decode(text)


def encode_call(args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[str, str]:
    """Encode a call's arguments, naming the offending one (`args[1]`, `kwargs['to']`)."""
    encoded_args = [to_jsonable(item, f"args[{i}]") for i, item in enumerate(args)]
    if not kwargs:
        return _ENCODER.encode(encoded_args), "{}"
    encoded_kwargs: dict[str, Any] = {}
    for key, item in kwargs.items():
        encoded_kwargs[key] = to_jsonable(item, f"kwargs[{key!r}]")
    return _ENCODER.encode(encoded_args), _ENCODER.encode(encoded_kwargs)


def decode_call(args: str, kwargs: str) -> tuple[list[Any], dict[str, Any]]:
    """Decode stored arguments; ValueError names what is wrong with a malformed row."""
    decoded_args = loads(args)
    decoded_kwargs = loads(kwargs)
    if not isinstance(decoded_args, list):
        raise ValueError(f"stored args must be a JSON array, got {type(decoded_args).__name__}")
    if not isinstance(decoded_kwargs, dict):
        raise ValueError(
            f"stored kwargs must be a JSON object, got {type(decoded_kwargs).__name__}")
    return decoded_args, decoded_kwargs
