"""One storage layer for a local folder or an ``s3://`` URI.

Tables are folders of Parquet *parts*. A part is written whole or not at all (a local
part goes to a hidden temporary name and is renamed; an S3 object only appears once its
upload completes), and it records in its Parquet metadata the ids of the items it
finished, so a stage that is stopped and re-run skips exactly what is done. A part that
cannot be read (a truncated file left by a crash of some other writer) is moved to
``_corrupt/`` and its items are simply done again.

No Ray here: this module is used by single-process jobs and inside Ray tasks alike.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from distill.errors import UserError

log = logging.getLogger(__name__)

DONE_KEY = b"partdistill.done_ids"
SUMMARY_KEY = b"partdistill.summary"
"""A part's footer also holds a small JSON summary (counts per category, the shape part it
belongs to, ...): what a stage's planner needs of the part without reading its rows."""
MANIFEST = "_manifest.json"
"""``{part name: its summary}`` of a table folder, written by the stage's driver: planning
is one small read. The parts stay the truth: a part the manifest lacks is summarised from
its footer, an entry whose part is gone is dropped (with a warning naming it), and the
manifest is rewritten."""


class StorageError(UserError, RuntimeError):
    """Storage that cannot be used; the message names the location and what to do."""

    hint = "check storage.root (a folder, or s3://bucket/prefix) and the storage's credentials"


class PartError(StorageError):
    """A part of a table that is missing or unreadable; the message names it."""


class ReadCounter:
    """Rows read through ``Storage.read_part``/``read_table`` in this process, per table
    folder: the tests' guard that a driver never reads a whole table."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}

    def record(self, table_dir: str, rows: int) -> None:
        self.rows[table_dir] = self.rows.get(table_dir, 0) + rows

    def reset(self) -> None:
        self.rows.clear()


def _s3_options(endpoint_url: str = "", region: str = "") -> dict[str, Any]:
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    client: dict[str, Any] = {}
    if endpoint:
        client["endpoint_url"] = endpoint
    region = region or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region:
        client["region_name"] = region
    return {"client_kwargs": client} if client else {}


PROBE_ATTEMPTS = 2  # tries of the bucket check (the storage's reads and writes keep botocore's)


class Storage:
    """Files and Parquet tables under one root (``runs`` or ``s3://bucket/prefix``).

    Paths given to methods are relative to the root, ``/``-separated.
    """

    def __init__(self, root: str, endpoint_url: str = "", region: str = "") -> None:
        if not root:
            raise StorageError("storage.root is empty — give a folder or an s3:// URI")
        self.root_uri = root.rstrip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        protocol, _, rest = self.root_uri.partition("://")
        if not rest:
            protocol, rest = "file", os.path.abspath(self.root_uri)
        self.protocol = protocol
        if protocol == "s3":
            options = _s3_options(endpoint_url, region)
            self.fs = fsspec.filesystem("s3", **options)
            self._check_bucket(rest.split("/", 1)[0], options)
        elif protocol == "file":
            self.fs = fsspec.filesystem("file", auto_mkdir=True)
            os.makedirs(rest, exist_ok=True)
        else:
            raise StorageError(f"storage.root={root!r}: unsupported scheme {protocol!r} — use a folder or s3://")
        self.base = rest.rstrip("/")
        self.reads = ReadCounter()

    def __getstate__(self) -> dict[str, Any]:
        # Shipped to Ray workers: each process counts its own reads.
        return {**self.__dict__, "reads": ReadCounter()}

    @classmethod
    def from_config(cls, cfg: Any) -> "Storage":
        """From a ``StorageConfig``."""
        return cls(cfg.root, cfg.endpoint_url, cfg.region)

    # -- paths -----------------------------------------------------------------
    def path(self, *parts: str) -> str:
        """Filesystem path (no scheme) of ``parts`` under the root."""
        return posixpath.join(self.base, *[p.strip("/") for p in parts if p])

    def uri(self, *parts: str) -> str:
        """Full URI (with scheme for S3) of ``parts`` under the root."""
        p = self.path(*parts)
        return f"s3://{p}" if self.protocol == "s3" else p

    def pyarrow_filesystem(self) -> Any:
        """A pyarrow filesystem over the same storage (for Ray Data and Ray Train)."""
        from pyarrow.fs import FSSpecHandler, LocalFileSystem, PyFileSystem

        if self.protocol == "file":
            return LocalFileSystem()
        return PyFileSystem(FSSpecHandler(self.fs))

    def _check_bucket(self, bucket: str, options: dict[str, Any]) -> None:
        # botocore's 5 tries take ~10 s to give up on an endpoint that refuses
        probe = fsspec.filesystem("s3", config_kwargs={"retries": {"max_attempts": PROBE_ATTEMPTS}}, **options)
        try:
            probe.ls(bucket, refresh=True)
        except FileNotFoundError:
            raise StorageError(
                f"storage.root={self.root_uri}: bucket {bucket!r} does not exist"
                f"{' at ' + self.endpoint_url if self.endpoint_url else ''} — create it "
                f"(aws s3 mb s3://{bucket}) or point storage.root elsewhere"
            ) from None
        except PermissionError as e:
            raise StorageError(
                f"storage.root={self.root_uri}: access to bucket {bucket!r} denied ({e}) — "
                "check AWS credentials (AWS_ACCESS_KEY_ID / instance profile)"
            ) from None
        except Exception as e:  # noqa: BLE001 - botocore's connection errors are no OSError
            raise StorageError(
                f"storage.root={self.root_uri}: cannot reach bucket {bucket!r} ({e}) — check "
                "storage.endpoint_url / AWS_ENDPOINT_URL and the network"
            ) from None

    # -- files -----------------------------------------------------------------
    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a whole file atomically (temp + rename locally; one PUT on S3)."""
        target = self.path(rel)
        if self.protocol == "file":
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = posixpath.join(os.path.dirname(target), f".tmp-{uuid.uuid4().hex}-{os.path.basename(target)}")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        else:
            self.fs.pipe_file(target, data)

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def listdir(self, rel: str) -> list[str]:
        """Names (not paths) in a folder; [] when it does not exist."""
        p = self.path(rel)
        if not self.fs.exists(p):
            return []
        return sorted(posixpath.basename(x.rstrip("/")) for x in self.fs.ls(p, detail=False, refresh=True))

    def delete(self, rel: str) -> None:
        p = self.path(rel)
        if self.fs.exists(p):
            self.fs.rm(p, recursive=True)

    # -- Parquet tables made of parts -------------------------------------------
    def part_names(self, table_dir: str) -> list[str]:
        """The readable parts of a table folder, sorted; unreadable ones are quarantined."""
        good = []
        for name in self.listdir(table_dir):
            if not name.endswith(".parquet") or name.startswith((".", "_")):
                continue
            try:
                with self.fs.open(self.path(table_dir, name), "rb") as f:
                    pq.read_metadata(f)
                good.append(name)
            except Exception as e:  # noqa: BLE001 - any unreadable part is quarantined alike
                self.quarantine(table_dir, name, e)
        return good

    def write_part(
        self,
        table_dir: str,
        table: pa.Table,
        done_ids: Iterable[str],
        name: str = "",
        summary: dict[str, Any] | None = None,
    ) -> str:
        """Write one part; ``done_ids`` are the items it finishes (even ones with no rows),
        ``summary`` the JSON-able facts its planners need (``manifest``)."""
        done = sorted(set(done_ids))
        meta = dict(table.schema.metadata or {})
        meta[DONE_KEY] = json.dumps(done).encode()
        meta[SUMMARY_KEY] = json.dumps({"done": len(done), **(summary or {})}, sort_keys=True).encode()
        table = table.replace_schema_metadata(meta)
        name = name or f"part-{uuid.uuid4().hex[:16]}.parquet"
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        self.write_bytes(posixpath.join(table_dir, name), sink.getvalue().to_pybytes())
        return name

    def part_footer(self, table_dir: str, name: str) -> tuple[list[str], dict[str, Any]]:
        """(done ids, summary) of one part, from its footer alone."""
        with self.fs.open(self.path(table_dir, name), "rb") as f:
            md = pq.read_schema(f).metadata or {}
        return json.loads(md.get(DONE_KEY, b"[]")), json.loads(md.get(SUMMARY_KEY, b"{}"))

    def list_parts(self, table_dir: str) -> list[str]:
        """The part files of a table folder, sorted (a listing: no part is opened)."""
        return [n for n in self.listdir(table_dir) if n.endswith(".parquet") and not n.startswith((".", "_"))]

    def manifest(
        self, table_dir: str, fill: Callable[[Storage, str, str], dict[str, Any]] | None = None
    ) -> dict[str, dict[str, Any]]:
        """``{part name: summary}`` of a table folder: ``MANIFEST`` plus the footers of the
        parts it does not list yet (each read once, then recorded). An entry whose part is
        gone is dropped with a warning; an unreadable part is quarantined (its items redone).
        fill(storage, table_dir, name): the summary of a part whose footer has none (a
        table written by another tool), computed once and recorded."""
        names = self.list_parts(table_dir)
        known: dict[str, dict[str, Any]] = {}
        if self.exists(table_dir, MANIFEST):
            try:
                known = dict(self.read_json(posixpath.join(table_dir, MANIFEST)))
            except (ValueError, TypeError) as e:
                log.warning("%s is unreadable (%s): rebuilt from the parts' footers", self.uri(table_dir, MANIFEST), e)
        present = set(names)
        gone = sorted(set(known) - present)
        if gone:
            log.warning(
                "%s lists %d parts that are gone (%s): dropped; their items count as not done",
                self.uri(table_dir, MANIFEST),
                len(gone),
                ", ".join(gone[:5]),
            )
        out = {n: known[n] for n in names if n in known}
        for name in names:
            if name in out:
                continue
            try:
                summary = self.part_footer(table_dir, name)[1]
                if fill is not None and len(summary) <= 1:  # no summary beyond the done count
                    summary = {**summary, **fill(self, table_dir, name)}
                out[name] = summary
            except Exception as e:  # noqa: BLE001 - any unreadable part is quarantined alike
                self.quarantine(table_dir, name, e)
        if gone or len(out) != len(known):
            self.write_json(posixpath.join(table_dir, MANIFEST), dict(sorted(out.items())))
        return dict(sorted(out.items()))

    def quarantine(self, table_dir: str, name: str, error: BaseException) -> None:
        """Move an unreadable part to ``_corrupt/``: its items are done again by a re-run."""
        log.warning(
            "part %s/%s is unreadable (%s): moved to _corrupt/, its items will be redone", table_dir, name, error
        )
        self.fs.mv(self.path(table_dir, name), self.path(table_dir, "_corrupt", name))

    def part_done_ids(self, table_dir: str) -> dict[str, list[str]]:
        """``{part name: the ids it finishes}`` of the readable parts (metadata only)."""
        out = {}
        for name in self.part_names(table_dir):
            with self.fs.open(self.path(table_dir, name), "rb") as f:
                md = pq.read_schema(f).metadata or {}
            out[name] = json.loads(md.get(DONE_KEY, b"[]"))
        return out

    def read_part(
        self, table_dir: str, name: str, columns: list[str] | None = None, optional: tuple[str, ...] = ()
    ) -> pa.Table:
        """One part of a table folder (without the part's metadata). ``optional``: columns
        of ``columns`` that parts written before they existed lack; such a part is read
        without them (the reader fills them in, e.g. superpoints).

        Raises ``PartError`` naming the part when it is missing or unreadable (an
        unreadable one is quarantined first, so a re-run of its stage redoes it)."""
        try:
            with self.fs.open(self.path(table_dir, name), "rb") as f:
                if columns is not None and optional:
                    present = set(pq.read_schema(f).names)
                    columns = [c for c in columns if c in present or c not in optional]
                    f.seek(0)
                table = pq.read_table(f, columns=columns)
        except FileNotFoundError:
            raise PartError(
                f"{self.uri(table_dir, name)} is missing (deleted since the stage was planned?): re-run the "
                "stage that writes it"
            ) from None
        except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for a damaged file
            self.quarantine(table_dir, name, e)
            raise PartError(
                f"{self.uri(table_dir, name)} is unreadable ({type(e).__name__}: {e}); moved to _corrupt/: "
                "re-run the stage that writes it"
            ) from None
        self.reads.record(table_dir, table.num_rows)
        return table.replace_schema_metadata(None)

    def part_column(self, table_dir: str, column: str) -> dict[str, list[Any]]:
        """``{part name: that column's values}`` of the readable parts (one column read)."""
        return {
            name: self.read_part(table_dir, name, [column]).column(column).to_pylist()
            for name in self.part_names(table_dir)
        }

    def done_ids(self, table_dir: str) -> set[str]:
        """Ids of the items finished by the readable parts of a table folder."""
        done: set[str] = set()
        for ids in self.part_done_ids(table_dir).values():
            done.update(ids)
        return done

    def read_table(self, table_dir: str, columns: list[str] | None = None, schema: pa.Schema | None = None) -> pa.Table:
        """All readable parts of a table folder as one table (empty table when none)."""
        tables = []
        for name in self.part_names(table_dir):
            with self.fs.open(self.path(table_dir, name), "rb") as f:
                tables.append(pq.read_table(f, columns=columns))
        if not tables:
            if schema is None:
                raise StorageError(f"{self.uri(table_dir)}: no table here (run the stage that writes it)")
            return schema.empty_table() if columns is None else schema.empty_table().select(columns)
        self.reads.record(table_dir, sum(t.num_rows for t in tables))
        return pa.concat_tables([t.replace_schema_metadata(None) for t in tables], promote_options="default")

    def part_uris(self, table_dir: str) -> list[str]:
        return [self.uri(table_dir, n) for n in self.part_names(table_dir)]
