"""The pipeline's re-scoring pass under every snapshot rule (``train.rescore``), in process:
its score parts, pair weights and balance factors give exactly the scores that ``distil``'s
in-memory rule (``rescore_samples_with_rule``) gives over the same samples."""

import numpy as np
import pytest

from cluster.config import load_config
from cluster.passes.rescore import balance_factors, load_snapshot, rescore_pass
from cluster.training.checkpoints import load_torch
from cluster.training.samples import BALANCE_FILE, load_item, read_score_part
from distill.backward import rescore_samples_with_rule
from distill.config import ConfigError
from distill.records import SCORE_SCHEMA
from distill.samples import pairs_to_source
from tests.cluster.bd_run import ARGS, CKPT_DIR, CPU, fit, pending_run, prepare


def _pending(tmp_path, bd_extracted, rule):
    return pending_run(tmp_path, bd_extracted, f"train.rescore={rule}")


def _samples(cfg, storage, plan, round):
    return [
        s
        for item in plan.items
        for s in load_item(storage, plan.tables(round), item, plan.space, cfg.data.num_points, cfg.seed)
        if s.num_units
    ]


def _source(s):
    return None if s.pair_source is None else s.pair_source.numpy()


@pytest.mark.parametrize("rule", ["point", "agreement_balanced", "point_balanced"])
def test_pass_gives_the_in_memory_rule_and_training_resumes(tmp_path, bd_extracted, rule):
    cfg, storage, plan = _pending(tmp_path, bd_extracted, rule)
    model, _ = load_snapshot(cfg, storage, f"{CKPT_DIR}/last.pt", plan.space, CPU)
    before = _samples(cfg, storage, plan, 0)
    want, want_pairs = rescore_samples_with_rule(model, before, plan.space, cfg.train, CPU)

    summary = prepare(storage, plan, lambda snap: rescore_pass(cfg, storage, plan, snap))
    assert summary["round"] == 1 and summary["parts"] == len(plan.items)
    out_dir = plan.tables(1).scores_dir
    point = rule.startswith("point")
    for part in storage.list_parts(out_dir):
        table = storage.read_part(out_dir, part)
        assert table.schema.equals(SCORE_SCHEMA)
        _, pairs = read_score_part(storage, out_dir, part)
        assert bool(pairs) == point  # unit rules store no pair weights
        assert storage.part_footer(out_dir, part)[1]["rule"] == rule
    assert storage.exists(out_dir, BALANCE_FILE) == rule.endswith("_balanced")

    # Round 1 as the next fit loads it: the in-memory rule's scores (balanced over the
    # whole student, as distil balances) and, for point rules, its pair weights.
    after = {s.shape_id: s for s in _samples(cfg, storage, plan, 1)}
    assert set(after) == set(want)
    for s in before:
        got = after[s.shape_id]
        np.testing.assert_allclose(got.unit_score.numpy(), want[s.shape_id], rtol=1e-5, atol=1e-6)
        if point:
            # a resampled pair takes the mean weight of its source pair's copies
            src = pairs_to_source(want_pairs[s.shape_id], _source(s), len(s.units.point_idx))
            copied = src if got.pair_source is None else src[got.pair_source.numpy()]
            np.testing.assert_allclose(got.pair_weight.numpy(), copied, rtol=1e-5, atol=1e-6)
        else:
            assert got.pair_weight is None

    outcome = fit(cfg, storage, plan)
    assert not outcome.rescore_due and outcome.info["rounds"] == 1
    assert storage.exists(CKPT_DIR, "final.pt") and load_torch(storage, f"{CKPT_DIR}/last.pt")["round"] == 1


def test_balance_factors_keep_each_parts_mass():
    a = {"mass": {"Chair": {"old": [2.0, 1.0, 0.0], "new": [1.0, 0.0, 0.0]}}}
    b = {"mass": {"Chair": {"old": [2.0, 1.0, 3.0], "new": [3.0, 0.0, 1.5]}, "Cup": {"old": [1.0], "new": [4.0]}}}
    # per part: Σ old / Σ new, 1 where the new mass is 0 (the part keeps its zeros)
    assert balance_factors([a, b]) == {"Chair": [1.0, 1.0, 2.0], "Cup": [0.25]}


def test_a_round_written_by_another_rule_is_refused(tmp_path, bd_extracted):
    cfg, storage, plan = _pending(tmp_path, bd_extracted, "agreement")
    prepare(storage, plan, lambda snap: rescore_pass(cfg, storage, plan, snap))
    from cluster.passes.rescore import finish_round

    balanced = load_config([*ARGS, f"storage.root={tmp_path}", "train.rescore=agreement_balanced"])
    with pytest.raises(ValueError, match="another rule"):
        finish_round(balanced, storage, plan.tables(1).scores_dir)


def test_crossfit_rules_are_a_study_not_a_setting(tmp_path):
    with pytest.raises(ConfigError, match="train.rescore"):
        load_config([*ARGS, f"storage.root={tmp_path}", "train.rescore=crossfit"])
