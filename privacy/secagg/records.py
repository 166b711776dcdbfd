"""A reply's numbers as one vector in Z/2**64, and the summed vector back as a reply.

Every array of every ArrayRecord and every integer in the reply's ``meta``
record is a per-node number, so all of them go into the masked vector:
integers exactly, floats in fixed point. What stays in the clear is text
(the node's name, agreed category labels) and the privacy record (the
mechanism and loss, which say nothing about patients).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from oncofed.privacy.accounting import PRIVACY_RECORD
from oncofed.privacy.secagg.fixedpoint import decode_float, decode_int, encode_float, encode_int
from oncofed.privacy.secagg.prg import U64

META = "meta"
SECAGG_RECORD = "oncofed.secagg"
"""A stage's keys, shares and layout travel in this ConfigRecord of a message."""
MASKED_RECORD = "oncofed.secagg.masked"
"""A node's masked vector travels in this ArrayRecord of its reply."""


def flatten(content: RecordDict, nodes: int) -> tuple[U64, str, RecordDict]:
    """(vector, layout JSON, what stays in the clear) for one node's reply."""
    parts: list[U64] = []
    layout: list[list[Any]] = []
    for record_name in sorted(content.array_records):
        record = content.array_records[record_name]
        for key in sorted(record):
            values = record[key].numpy()
            integer = np.issubdtype(values.dtype, np.integer)
            kind = "int" if integer else "float"
            layout.append([record_name, key, kind, list(values.shape)])
            flat = values.ravel()
            parts.append(encode_int(flat) if integer else encode_float(flat, nodes))
    clear = RecordDict()
    meta = content.config_records.get(META)
    if meta is not None:
        text: dict[str, Any] = {}
        for key in sorted(meta):
            value = meta[key]
            if isinstance(value, int) and not isinstance(value, bool):
                layout.append([META, key, "int", []])
                parts.append(encode_int([value]))
            else:
                text[key] = value
        clear[META] = ConfigRecord(text)
    if PRIVACY_RECORD in content.config_records:
        clear[PRIVACY_RECORD] = content.config_records[PRIVACY_RECORD]
    vector = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
    return vector.astype(np.uint64), json.dumps(layout), clear


def unflatten(total: U64, layout_json: str, clear: RecordDict) -> RecordDict:
    """The summed reply: arrays and meta integers from ``total``, text from ``clear``."""
    content = RecordDict()
    meta: dict[str, Any] = dict(clear.config_records.get(META, ConfigRecord()))
    offset = 0
    for record_name, key, kind, shape in json.loads(layout_json):
        size = int(np.prod(shape)) if shape else 1
        chunk = total[offset : offset + size]
        offset += size
        values = decode_int(chunk) if kind == "int" else decode_float(chunk)
        if record_name == META:
            meta[key] = int(values[0])
            continue
        if record_name not in content.array_records:
            content[record_name] = ArrayRecord()
        content.array_records[record_name][key] = Array(values.reshape(shape))
    if offset != len(total):
        raise ValueError(f"the layout covers {offset} values of {len(total)}")
    content[META] = ConfigRecord(meta)
    for name, record in clear.config_records.items():
        if name != META:
            content[name] = record
    return content


__all__ = ["MASKED_RECORD", "META", "SECAGG_RECORD", "flatten", "unflatten"]
