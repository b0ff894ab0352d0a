"""The self-training relabel pass as a Ray Data actor pool (real local Ray) writes what the
in-process pass writes."""

from __future__ import annotations

import shutil

from cluster.config import load_config
from cluster.evaluate import plan_items
from cluster.job import run_job
from cluster.pipeline import pretrain
from cluster.relabel import relabel, relabel_dir
from cluster.relabel_ray import relabel_on_ray
from cluster.storage import Storage


def test_the_ray_pass_writes_what_the_local_pass_writes(tmp_path, ray_local):
    argv = ["--config", "smoke", f"storage.root={tmp_path}", "cluster.backend=local", "train.relabel_rounds=1"]
    argv += ["train.bd_rounds=0", "run=st", "eval.enabled=false"]
    run_job("pretrain", pretrain, argv)  # generation 0, the local pass, generation 1
    cfg = load_config(argv)
    storage = Storage.from_config(cfg.storage)
    out = relabel_dir("st", 1)
    local = {p: storage.read_part(out, p) for p in storage.list_parts(out)}
    shutil.move(tmp_path / out, tmp_path / "local_pass")
    items = plan_items(storage, "st/shapes", "st/knowledge/round_0")
    summary = relabel(cfg, storage, items, "st/shapes", "st/knowledge/round_0", 1, relabel_on_ray)
    assert summary["parts"] == len(local) == 3 and summary["skipped_parts"] == 0 and summary["shapes"] == 12
    assert storage.list_parts(out) == sorted(local)
    for part, table in local.items():
        assert storage.read_part(out, part).equals(table), part
        assert storage.part_footer(out, part) == storage.part_footer("local_pass", part)
    again = relabel(cfg, storage, items, "st/shapes", "st/knowledge/round_0", 1, relabel_on_ray)
    assert again["parts"] == 0 and again["skipped_parts"] == 3
