"""A lossless, backend-neutral encoding of payloads: their tensors by path, plus a JSON description of the rest.

:func:`pack` turns a :class:`~lit_fed.client.payloads.Payload` (or any nesting of tensors, scalars, strings,
``None``, lists, tuples, dicts and payloads) into ``(tensors, spec)``: a flat ``{path: tensor}`` mapping and a
JSON-serializable ``spec`` that refers to the tensors by path. :func:`unpack` inverts it exactly (tensor dtypes,
shapes, bytes; float ``nan``/``inf``; tuple vs list; int dict keys). Backends carry the tensors as they carry model
states (Flower: an ``ArrayRecord``) and the spec as text, so a method's task and its answer travel without the
backend knowing the method. :func:`packed_nbytes` is the wire size of the tensors (what is counted as sent).

Rebuilding a payload class from a spec imports its module and accepts only registered
:class:`~lit_fed.client.payloads.Payload` subclasses, so received bytes cannot name arbitrary callables.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from typing import Any

from torch import Tensor

from lit_fed.client.payloads import Payload
from lit_fed.client.serialization import encoded_size


def pack(value: Any) -> tuple[dict[str, Tensor], Any]:
    """``(tensors by path, spec)`` of ``value`` (see the module docstring).

    Raises:
        TypeError: a value of a type the codec does not carry (a function, a module, an unregistered dataclass).
    """
    tensors: dict[str, Tensor] = {}
    spec = _pack(value, "", tensors)
    return tensors, spec


def _child(path: str, name: object) -> str:
    return f"{path}/{name}" if path else str(name)


def _pack(value: Any, path: str, tensors: dict[str, Tensor]) -> Any:
    if isinstance(value, Tensor):
        if path in tensors:
            raise ValueError(f"codec: two tensors share the path '{path}' (a key containing '/'?)")
        tensors[path] = value
        return ["t", path]
    if value is None or isinstance(value, bool | int | float | str):
        return ["s", value]
    if isinstance(value, Payload) and dataclasses.is_dataclass(value):
        fields = [
            [f.name, _pack(getattr(value, f.name), _child(path, f.name), tensors)]
            for f in dataclasses.fields(value)
            if f.init
        ]
        return ["p", type(value).wire_name(), fields]
    if isinstance(value, list | tuple):
        items = [_pack(item, _child(path, index), tensors) for index, item in enumerate(value)]
        return ["l" if isinstance(value, list) else "u", items]
    if isinstance(value, dict):
        entries = []
        for key, item in value.items():
            if not isinstance(key, str | int) or isinstance(key, bool):
                raise TypeError(f"codec: dict key {key!r} at '{path}' must be a str or an int")
            entries.append([key, _pack(item, _child(path, key), tensors)])
        return ["d", entries]
    raise TypeError(
        f"codec: cannot send a {type(value).__name__} at '{path or 'the top'}'; payloads carry tensors, scalars, "
        "strings, None, lists, tuples, dicts and lit_fed.client.payloads.Payload dataclasses"
    )


def unpack(tensors: dict[str, Tensor], spec: Any) -> Any:
    """The value :func:`pack` described.

    Raises:
        ValueError: a malformed spec, or a tensor path missing from ``tensors``.
        TypeError: the spec names a class that is not a registered payload.
    """
    if not isinstance(spec, list) or not spec:
        raise ValueError(f"codec: malformed spec {spec!r}")
    tag = spec[0]
    if tag == "t":
        if spec[1] not in tensors:
            raise ValueError(f"codec: the tensor '{spec[1]}' is missing")
        return tensors[spec[1]]
    if tag == "s":
        return spec[1]
    if tag in ("l", "u"):
        items = [unpack(tensors, item) for item in spec[1]]
        return items if tag == "l" else tuple(items)
    if tag == "d":
        return {key: unpack(tensors, item) for key, item in spec[1]}
    if tag == "p":
        cls = payload_class(spec[1])
        return cls(**{name: unpack(tensors, item) for name, item in spec[2]})
    raise ValueError(f"codec: unknown spec tag {tag!r}")


def payload_class(name: str) -> type[Payload]:
    """The registered payload class ``"<module>:<qualname>"``, importing its module if needed.

    Raises:
        TypeError: ``name`` is malformed, its module does not import, or it names no registered payload class.
    """
    cls = Payload.registered(name)
    if cls is None:
        module, _, qualname = name.partition(":")
        if not module or not qualname:
            raise TypeError(f"codec: '{name}' is not a payload class name ('<module>:<qualname>')")
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise TypeError(f"codec: the payload class '{name}' cannot be imported: {error}") from error
        cls = Payload.registered(name)
    if cls is None:
        raise TypeError(f"codec: '{name}' is not a lit_fed payload class (a registered Payload subclass)")
    return cls


def spec_to_text(spec: Any) -> str:
    """The spec as JSON text (``nan``/``inf`` kept)."""
    return json.dumps(spec, allow_nan=True)


def spec_from_text(text: str) -> Any:
    """Inverse of :func:`spec_to_text`."""
    return json.loads(text)


def packed_nbytes(value: Any) -> int:
    """Bytes the tensors of ``value`` occupy in lit_fed's wire format (the spec is not counted)."""
    tensors, _ = pack(value)
    return encoded_size(tensors)
