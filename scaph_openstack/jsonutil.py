"""Compact JSON for documents made of a header and one long list.

The ledger and the snapshot hold one entry per instance. Encoded in one
``json.dumps`` call, CPython's C encoder keeps every small fragment it
produces until the end: about 4 MB at the peak for 1000 instances, which
is most of a publishing tick's peak RSS (doc/performance.md). Encoding
the list a batch at a time gives exactly the same bytes with a peak of a
few hundred kB, and no more CPU.
"""

import itertools
import json

# json.dumps(..., separators=(',', ':')) builds an encoder on every call.
ENCODER = json.JSONEncoder(separators=(',', ':'))
BATCH = 64


def dumps_with_list(header, key, items, batch=BATCH):
    """``json.dumps({**header, key: list(items)}, separators=(',', ':'))``
    as UTF-8 bytes (ASCII, as json.dumps escapes), ``key`` last.

    ``items`` may be a generator: only ``batch`` of them exist at once.
    """
    if key in header:
        raise ValueError('%r must not be in the header: it comes last'
                         % key)
    head = ENCODER.encode(dict(header, **{key: []}))
    # Bytes from the start: the whole document exists twice at the end
    # (the parts and their join), not three times (str parts, str, bytes).
    parts = [(head[:-len('[]}')] + '[').encode()]
    items = iter(items)
    separator = ''
    while True:
        chunk = list(itertools.islice(items, batch))
        if not chunk:
            break
        parts.append((separator + ENCODER.encode(chunk)[1:-1]).encode())
        separator = ','
    parts.append(b']}')
    return b''.join(parts)
