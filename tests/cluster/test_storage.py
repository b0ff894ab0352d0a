import numpy as np
import pyarrow as pa
import pytest

from cluster.store.storage import Storage, StorageError
from distill.records import SHAPE_SCHEMA, Mesh, Shape, shapes_to_table, table_to_shapes


def _shapes(n: int, seed: int = 0) -> list[Shape]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        pts = rng.normal(size=(64, 3)).astype(np.float32)
        mesh = Mesh(rng.normal(size=(4, 3)).astype(np.float32), np.array([[0, 1, 2], [0, 2, 3]]), np.array([0, 1]))
        out.append(
            Shape(f"s{i}", "chair", ["back", "seat"], pts, pts * 0.5, rng.integers(-1, 2, 64), "test", mesh, {"i": i})
        )
    return out


def _roundtrip(storage: Storage) -> None:
    shapes = _shapes(5)
    storage.write_part("run/shapes", shapes_to_table(shapes[:3]), done_ids=["s0", "s1", "s2"])
    storage.write_part("run/shapes", shapes_to_table(shapes[3:]), done_ids=["s3", "s4", "bad"])
    assert storage.done_ids("run/shapes") == {"s0", "s1", "s2", "s3", "s4", "bad"}
    back = sorted(table_to_shapes(storage.read_table("run/shapes")), key=lambda s: s.shape_id)
    assert [s.shape_id for s in back] == [s.shape_id for s in shapes]
    for a, b in zip(shapes, back):
        np.testing.assert_array_equal(a.points, b.points)
        np.testing.assert_array_equal(a.normals, b.normals)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.mesh.faces, b.mesh.faces)
        np.testing.assert_array_equal(a.mesh.face_labels, b.mesh.face_labels)
        assert a.meta == b.meta and a.part_names == b.part_names


def test_local_roundtrip(tmp_path):
    _roundtrip(Storage(str(tmp_path / "root")))


def test_s3_roundtrip_identical_to_local(tmp_path, s3_bucket):
    s3 = Storage(f"{s3_bucket}/prefix")
    _roundtrip(s3)
    local = Storage(str(tmp_path))
    table = shapes_to_table(_shapes(4, seed=3))
    s3.write_part("t", table, done_ids=[])
    local.write_part("t", table, done_ids=[])
    assert s3.read_table("t").equals(local.read_table("t"))
    s3.write_json("run/metrics.json", {"a": 1})
    assert s3.read_json("run/metrics.json") == {"a": 1}
    assert s3.uri("run").startswith("s3://")


def test_missing_bucket_is_a_clear_error(s3_endpoint):
    with pytest.raises(StorageError, match="does not exist"):
        Storage("s3://no-such-bucket-here/prefix")


def test_unreachable_endpoint_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(StorageError, match="bucket"):
        Storage("s3://some-bucket/p", endpoint_url="http://127.0.0.1:9")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_interrupted_write_is_quarantined_and_redone(tmp_path, where, request):
    root = str(tmp_path) if where == "local" else request.getfixturevalue("s3_bucket") + "/p"
    storage = Storage(root)
    good = shapes_to_table(_shapes(2))
    storage.write_part("run/shapes", good, done_ids=["s0", "s1"], name="part-a.parquet")
    # A part cut off mid-write by a crashed writer: a truncated Parquet file.
    sink = pa.BufferOutputStream()
    import pyarrow.parquet as pq

    pq.write_table(shapes_to_table(_shapes(3, seed=9)), sink)
    storage.write_bytes("run/shapes/part-b.parquet", sink.getvalue().to_pybytes()[:200])
    # Leftover temporary files of an interrupted local write are ignored.
    storage.write_bytes("run/shapes/.tmp-123-part-c.parquet", b"garbage")
    assert storage.done_ids("run/shapes") == {"s0", "s1"}
    assert storage.read_table("run/shapes").num_rows == 2
    assert "part-b.parquet" in storage.listdir("run/shapes/_corrupt")


def test_empty_table_needs_schema(tmp_path):
    storage = Storage(str(tmp_path))
    with pytest.raises(StorageError, match="no table"):
        storage.read_table("nothing")
    assert storage.read_table("nothing", schema=SHAPE_SCHEMA).num_rows == 0


def test_per_part_ids_and_reads(tmp_path):
    storage = Storage(str(tmp_path))
    a = pa.table({"shape_id": ["x", "y"], "v": [1, 2]})
    b = pa.table({"shape_id": ["z"], "v": [3]})
    na = storage.write_part("t", a, done_ids=["x", "y", "rejected"], name="part-a.parquet")
    nb = storage.write_part("t", b, done_ids=["z"], name="part-b.parquet")
    assert storage.part_done_ids("t") == {na: ["rejected", "x", "y"], nb: ["z"]}
    assert storage.part_column("t", "shape_id") == {na: ["x", "y"], nb: ["z"]}
    assert storage.read_part("t", nb).equals(b)
    assert storage.read_part("t", na, ["v"]).column("v").to_pylist() == [1, 2]
    assert storage.done_ids("t") == {"x", "y", "z", "rejected"}
