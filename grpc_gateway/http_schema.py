"""Pydantic models of the API's messages, built from jobs.proto's descriptors.

FastAPI checks HTTP bodies and query parameters with them and writes the OpenAPI document from them, so the
HTTP API cannot drift from the proto. They describe the proto3 JSON mapping with the proto's field names (as
grpcurl prints them): enums as their names, int64 as a decimal string, Timestamp as an RFC 3339 string,
Duration as seconds with an s ("3600s"), Struct as an object. Parsing into the message is left to `google.protobuf.json_format`, which checks what a JSON schema
cannot (a Timestamp's range, say).
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from pydantic import BaseModel, ConfigDict, Field, create_model

INT32 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
INT64 = Annotated[str, Field(pattern=r"^-?[0-9]{1,19}$", description="a 64-bit integer, as a decimal string")]
SCALARS: dict[int, Any] = {
    FieldDescriptor.TYPE_STRING: str,
    FieldDescriptor.TYPE_BOOL: bool,
    FieldDescriptor.TYPE_INT32: INT32,
    FieldDescriptor.TYPE_INT64: INT64,
}
WELL_KNOWN: dict[str, Any] = {
    "google.protobuf.Timestamp": Annotated[
        str, Field(json_schema_extra={"format": "date-time"}, examples=["2026-12-01T09:00:00Z"])
    ],
    "google.protobuf.Duration": Annotated[
        str,
        Field(
            pattern=r"^-?[0-9]{1,12}(\.[0-9]{1,9})?s$",
            description="seconds with an s, e.g. 3600s",
            examples=["3600s"],
        ),
    ],
    "google.protobuf.Struct": dict[str, Any],
    "google.protobuf.Value": Any,
}


class Message(BaseModel):
    """Unknown fields are refused, as `json_format.Parse` would refuse them."""

    model_config = ConfigDict(extra="forbid")


@functools.cache
def model_of(descriptor: Descriptor) -> type[Message]:
    """The model of a message: every field optional, as in proto3."""
    fields: dict[str, Any] = {}
    for field in descriptor.fields:
        fields[field.name] = (_type_of(field), None)
    return create_model(descriptor.name, __base__=Message, **fields)


def _type_of(field: FieldDescriptor) -> Any:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value = field.message_type.fields_by_name["value"]
        return dict[str, _single_type_of(value)]  # type: ignore[misc]
    single = _single_type_of(field)
    if field.is_repeated:
        return list[single]  # type: ignore[valid-type]
    return single


def _single_type_of(field: FieldDescriptor) -> Any:
    if field.enum_type is not None:
        return Literal[tuple(value.name for value in field.enum_type.values)]
    if field.message_type is not None:
        known = WELL_KNOWN.get(field.message_type.full_name)
        return known if known is not None else model_of(field.message_type)
    if field.type not in SCALARS:
        raise TypeError(f"{field.full_name}: no JSON schema for protobuf type {field.type}")
    return SCALARS[field.type]
