"""The rejects table (``{root}/{run}/rejects/``): one row per item a stage set aside.

REJECT_SCHEMA
    item: string (a shape id or file) · stage: string · reason: string
"""

from __future__ import annotations

import pyarrow as pa

REJECT_SCHEMA = pa.schema([("item", pa.string()), ("stage", pa.string()), ("reason", pa.string())])
