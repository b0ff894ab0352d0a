"""The method's configuration: one typed dataclass per stage of the method.

Data, evaluation, rendering, teacher, student, training and segmentation sections live
here; the generation section is ``generation/config.py``, storage and cluster sections
and the composed ``Config`` with its loader (``load_config``) are ``cluster/config.py``.
Each ``__post_init__`` validates values (ranges, choices) and raises ``ConfigError``
naming the key; ``check_choice`` and ``check_positive`` are shared by every package's
sections.

Pure data: no IO.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from distill.errors import UserError
from distill.readers.registry import MIX_SOURCES
from distill.readers.registry import SOURCES as READER_SOURCES
from distill.teachers import TEACHERS


class ConfigError(UserError, ValueError):
    """A configuration that cannot be used; the message names the key and the fix."""

    hint = "fix that key (key=value on the command line, or in the --config file)"


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    """Refuse a value outside ``choices``, naming the key and the values it takes."""
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(choices)}")


def check_positive(key: str, value: float, allow_zero: bool = False) -> None:
    """Refuse a negative value (or 0 unless ``allow_zero``), naming the key."""
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}={value!r} must be {'>= 0' if allow_zero else '> 0'}")


DATA_SOURCES = (*READER_SOURCES, "generated", "table")
"""The sources ``distill.readers`` serves, and shape tables (generated, table), read by ``cluster``."""
VOCABULARIES = ("psb", "shapenetpart", "procedural")
"""Datasets with a part table (``distill.categories.TABLES``), for ``data.vocabulary``."""


@dataclass
class MixEntry:
    """One source of a mixture (``data.source=mix``); empty fields take ``data``'s."""

    source: str = "procedural"
    """procedural | psb | shapenetpart | files."""
    path: str = ""
    categories: list[str] = field(default_factory=list)
    """Empty: ``data.categories``."""
    split: str = ""
    """all | train | val | test; empty: ``data.split``."""
    per_category: int = 0
    """Shapes per category from this source (0: all it has; procedural: 24). The counts of
    the entries are the mixture's stated ratio."""

    def __post_init__(self) -> None:
        check_choice("data.mix[].source", self.source, MIX_SOURCES)
        if self.split:
            check_choice("data.mix[].split", self.split, ("all", "train", "val", "test"))
        check_positive("data.mix[].per_category", self.per_category, allow_zero=True)
        if self.source in ("psb", "shapenetpart", "files") and not self.path:
            raise ConfigError(f"data.mix[] with source={self.source} needs a path")


@dataclass
class DataConfig:
    """Which shapes a stage reads."""

    source: str = "procedural"
    """procedural (the embedded corpus) | psb | shapenetpart | files (any mesh / point
    cloud trimesh reads) | generated (a generated shape table) | table (a Parquet shape
    table at ``path``)."""
    path: str = ""
    """Dataset folder (psb, shapenetpart, files) or shape-table folder/URI (table)."""
    categories: list[str] = field(default_factory=list)
    """Categories to keep; empty: all the source has."""
    split: str = "all"
    """all | train | val | test. ShapeNetPart uses its official lists; other sources
    split by sorted id within each category: ``train`` = first half, ``test`` = rest."""
    num_points: int = 2048
    """Points per shape (docs/design.md §3: 2048)."""
    per_category: int = 0
    """At most this many shapes per category (0: all). For ``procedural``: how many to make
    (0: 24)."""
    category: str = ""
    """For ``files``: the category of every file (empty: each file's folder name)."""
    part_names: list[str] = field(default_factory=list)
    """For ``files``: the part names of ``category`` when it is not a known category."""
    mix: list[MixEntry] = field(default_factory=list)
    """For ``mix``: the sources, each with its own count per category (the stated ratio),
    e.g. ``[{source: psb, path: ..., split: train}, {source: procedural, per_category: 200}]``.
    Ids keep their source's prefix, so they never collide; the items are interleaved in
    the ratio of the counts."""
    vocabulary: list[str] = field(default_factory=list)
    """Datasets (psb, shapenetpart, procedural) whose part vocabularies every shape is
    mapped onto: the concepts all of them share, named and ordered as in the first
    (``distill.vocab.common_vocabulary``). Empty: each shape keeps its own names. Give the
    distillation and the evaluated data the same list so their labels agree."""

    def __post_init__(self) -> None:
        check_choice("data.source", self.source, DATA_SOURCES)
        for v in self.vocabulary:
            check_choice("data.vocabulary[]", v, VOCABULARIES)
        if self.source == "mix" and not self.mix:
            raise ConfigError("data.source=mix needs data.mix: a list of {source, path, split, per_category}")
        check_choice("data.split", self.split, ("all", "train", "val", "test"))
        if self.num_points < 16:
            raise ConfigError(f"data.num_points={self.num_points} is too small (>= 16)")
        check_positive("data.per_category", self.per_category, allow_zero=True)
        if self.source in ("psb", "shapenetpart", "files", "table") and not self.path:
            raise ConfigError(f"data.source={self.source} needs data.path (a folder or URI)")


@dataclass
class EvalConfig:
    """The shapes a student is evaluated on (``mode=pre``); empty source: ``data`` itself."""

    data: DataConfig = field(default_factory=lambda: DataConfig(source="procedural", split="test"))
    enabled: bool = True
    units_weight: float = 0.1
    """Evaluated shapes with knowledge units are also scored as ``student_units``: per point
    argmax of log p_student + units_weight · (pos − units_negative · neg), the units'
    evidence for and against each part (``distill.evidence``). 0: not scored. 0.1 and 1.0
    are the best point of ``bench/units_grid.py`` on the procedural job's own distillation
    shapes at the default teacher, a rule that reads no reported shape's label
    (docs/results.md, "How the units' settings are chosen"); the student's own row is
    unchanged. ``configs/psb.yaml`` sets 0.5, the grid's best on the PSB train half,
    which no table reports."""
    units_negative: float = 1.0
    """λ above: the weight of the evidence against a part (views that found the part
    elsewhere and saw the point) relative to the evidence for it."""

    def __post_init__(self) -> None:
        check_positive("eval.units_weight", self.units_weight, allow_zero=True)
        check_positive("eval.units_negative", self.units_negative, allow_zero=True)


@dataclass
class RenderConfig:
    """Multi-view rendering (docs/design.md §3: PartSLIP's 10 views at distance 2.2, 800²)."""

    views: str = "partslip"
    """partslip | ring | sphere."""
    num_views: int = 10
    """For ring / sphere view sets."""
    image_size: int = 320
    """Pixels per side. PartSLIP renders 800²; box voting measures the same at 320² at a
    third of the CPU time (docs/results.md, "Render speed"). The ``cluster`` preset uses 800."""
    distance: float = 2.2
    fov_deg: float = 60.0
    """Vertical field of view; ≥ 54° keeps the whole unit sphere in view at distance 2.2."""
    point_radius: float = 0.02
    """Splat radius (unit-sphere units) when a shape has no mesh."""
    depth_tolerance: float = 0.02
    """A point is visible when it is at most this far behind the rendered surface."""
    backend: str = "auto"
    """auto | embree (trimesh ray casting) | torch (splatting / rasteriser)."""
    point_visibility: str = "hpr"
    """Point clouds without a mesh: hpr (hidden-point removal, Katz et al. 2007) | depth
    (depth test against the splats). See ``distill.render`` for the measurements."""

    def __post_init__(self) -> None:
        check_choice("render.views", self.views, ("partslip", "ring", "sphere"))
        check_choice("render.point_visibility", self.point_visibility, ("hpr", "depth"))
        check_choice("render.backend", self.backend, ("auto", "embree", "torch", "pytorch3d"))
        if self.image_size < 16:
            raise ConfigError(f"render.image_size={self.image_size} is too small (>= 16)")
        check_positive("render.num_views", self.num_views)
        check_positive("render.distance", self.distance)


@dataclass
class TeacherConfig:
    """The 2D teacher whose predictions become knowledge units."""

    name: str = "simulated"
    """simulated | grounding_dino | owlv2 | clipseg | grounded_sam (``distill.teachers.TEACHERS``)."""
    model: str = ""
    """Hub id or local directory of the model (real teachers)."""
    sam_model: str = ""
    """Hub id or local directory of SAM (grounded_sam)."""
    preset: str = "glip_like"
    """Simulated teacher's error model: glip_like | clean."""
    output: str = "box"
    """Simulated teacher's output: box | mask."""
    view_correlation: float = 0.8
    """Simulated teacher: how alike its errors are across the views of one shape's part, in
    [0, 1] (0: independent per view; 1: the same miss, confusion and box bleed in every
    view). Per-view error rates do not change with it. Default and sources: docs/design.md §4."""
    score_threshold: float = 0.5
    whole_object_fraction: float = 0.98
    """Drop boxes and masks covering at least this fraction of the shape's pixels in a view."""
    prompt_template: str = "{part}"
    """Prompt per part; ``{part}`` and ``{category}`` are filled in."""
    batch_size: int = 10
    nms_iou: float = 0.5
    """Box teachers: drop a box overlapping a better box of the same part by IoU above this
    (class-wise NMS; 1.0 keeps all). OWLv2 scores every image patch, so it needs this."""
    device: str = "auto"
    """auto (CUDA when present) | cpu | cuda."""

    def __post_init__(self) -> None:
        check_choice("teacher.name", self.name, tuple(TEACHERS))
        check_choice("teacher.preset", self.preset, ("glip_like", "clean"))
        check_choice("teacher.output", self.output, ("box", "mask"))
        check_choice("teacher.device", self.device, ("auto", "cpu", "cuda"))
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ConfigError(f"teacher.score_threshold={self.score_threshold} not in [0, 1]")
        if not 0.0 <= self.view_correlation <= 1.0:
            raise ConfigError(
                f"teacher.view_correlation={self.view_correlation} not in [0, 1] (0: independent views, "
                "1: the same errors in every view)"
            )
        if "{part}" not in self.prompt_template:
            raise ConfigError("teacher.prompt_template must contain '{part}'")


@dataclass
class StudentConfig:
    """The 3D point-cloud student."""

    backbone: str = "pointnet2"
    """pointnet2 | dgcnn | dgcnn_static | pointnet. PointNet++ (32 wide, 16 neighbours) is
    the default: the best measured on the PSB benchmark, and several times faster than
    DGCNN on a CPU (bench/student.py; docs/results.md, "Student backbones")."""
    width: int = 32
    """Base channel width."""
    k: int = 16
    """Neighbours per point for local geometric context."""
    use_normals: bool = False
    category_input: bool = False
    """pointnet2: the category (a learned code) is an input of the encoder too, not only of
    the head (a multi-category student only)."""
    dropout: float = 0.3
    pretrained: str = ""
    """A pretrained encoder the student starts from (``jobs/pretrain_encoder.py``): the name
    of a run in this storage whose ``encoder/encoder.pt`` it loads, or a path or URI of such
    a file (or of a plain encoder state dict). Empty: random initialisation. Every encoder
    tensor must load, and the encoder must have been trained for this backbone, width,
    neighbours, normals and ``data.num_points``: anything else is refused with one line."""
    freeze_encoder: bool = False
    """With ``pretrained``: keep the encoder's weights fixed and train the head only (its
    BatchNorm statistics still follow the distillation shapes, as for every student)."""
    align: str = "none"
    """none | cube: turn every cloud, before the network, by the cube rotation (axis
    permutation with sign flips, no mirroring) that best matches its category's reference
    clouds, chosen from the distillation shapes by geometry alone (distill/pose.py). For
    collections whose shapes are not consistently posed (it helps on the PSB sample); on a
    consistently posed corpus it costs a little, hence off by default (docs/results.md)."""

    pool: str = "none"
    """none | superpoints: at inference (evaluation's ``student`` row, ``jobs/segment.py``)
    each superpoint takes the argmax of its points' mean log-probability
    (``distill.pooling.pool_log_probs``). Still the student alone: superpoints are
    geometry, stored with the shapes. Measured in docs/results.md ("Superpoints and
    self-training for the student")."""

    def __post_init__(self) -> None:
        check_choice("student.pool", self.pool, ("none", "superpoints"))
        check_positive("student.width", self.width)
        check_positive("student.k", self.k)
        check_choice("student.align", self.align, ("none", "cube"))
        if self.freeze_encoder and not self.pretrained:
            raise ConfigError(
                "student.freeze_encoder=true freezes a random encoder: set student.pretrained "
                "(a run of jobs/pretrain_encoder.py, or an encoder file), or freeze_encoder=false"
            )


RESCORE_RULES = ("agreement", "point", "agreement_balanced", "point_balanced")
"""Backward distillation's re-scoring rules (``train.rescore``), see ``distill.rescore``."""


@dataclass
class TrainConfig:
    """Forward then backward distillation (docs/design.md §3)."""

    epochs: int = 25
    """Epochs of a fit, at least (``min_steps`` may add some)."""
    min_steps: int = 0
    """Optimiser steps a fit takes at least: a small corpus is a few steps an epoch (95
    shapes in batches of 16: 6), so its schedule is set in steps, and the fit trains
    max(epochs, ⌈min_steps / steps per epoch⌉) epochs (``with_steps``)."""
    warmup_steps: int = 0
    """Steps of linear learning-rate warm-up before the cosine decay (0: none)."""
    batch_size: int = 16
    lr: float = 3e-3
    lr_min: float = 3e-5
    weight_decay: float = 0.0
    bd_rounds: int = 0
    """Backward-distillation rounds (0: forward distillation only, the default: on the
    Labeled PSB sample no re-scoring rule made the student better, 3 seeds in Pre and
    TTA, docs/results.md "Backward distillation"; the paper uses 1)."""
    bd_trigger: str = "plateau"
    """plateau (5-epoch moving average of the loss changes by < bd_plateau_delta) | epoch."""
    bd_epoch: int = 10
    """Epoch of the first re-scoring when bd_trigger=epoch."""
    bd_plateau_delta: float = 0.01
    rescore: str = "point_balanced"
    """Backward distillation's re-scoring rule (``RESCORE_RULES``, ``distill.rescore``), used
    when bd_rounds > 0; the default is the best measured (docs/results.md "Backward distillation":
    it ties forward distillation, the paper's rule loses 4 points): agreement (the paper:
    the fraction of a unit's points the student labels with the unit's label) | point
    (each (point, unit) pair weighted by the student's probability of the unit's label
    there) | agreement_balanced, point_balanced (the rule, then rescaled per part so each
    part keeps the score mass Σ score·|unit| it had: ``distill.rescore.balance_part_mass``).
    The cross-fitted rules are a study in ``bench/bd_variants.py``, not a setting: each
    round would train K more students, and they scored below in-sample agreement."""
    relabel_rounds: int = 0
    """Self-training relabel rounds after the first student (``cluster/passes/relabel.py``): each
    relabels every point of every distillation shape with ``student_units`` (the student
    with the shape's teacher units, ``eval.units_weight``), and a fresh student learns from
    those labels. Each relabel round costs one more training. At the default teacher one
    round lifts the PSB student alone by 2.3 (TTA) and 1.1 (Pre) with ``eval.units_weight``
    0.5 (on in ``configs/psb.yaml``), and the default job's by 1.7 at twice the time, so it
    is off by default (``--config selftrain`` turns it on; docs/results.md)."""
    superpoint_targets: bool = False
    """Pool the units' evidence within superpoints before the loss: every point of a
    superpoint some unit touches learns the mean soft target of its covered points
    (``distill.pooling.pool_units``). Re-scoring still reads and re-scores the units as
    extracted. Measured in docs/results.md ("Superpoints and self-training for the
    student")."""
    superpoint_consistency: float = 0.0
    """Weight of a consistency term: each point's cross-entropy against the mean predicted
    distribution of its superpoint (held fixed), over every point, covered or not
    (``distill.losses.superpoint_consistency``; 0: off)."""
    mean_teacher: float = 0.0
    """Online self-training (0: off): weight of a loss on every point whose prediction by
    the weights' moving average (``train.ema``, which must be > 0) is confident
    (max p ≥ ``mean_teacher_threshold``), its argmax the target (the mean-teacher form,
    Tarvainen & Valpola 2017; GGSD). Ramped in linearly over the first half of the fit
    (``distill.regularisers``)."""
    mean_teacher_threshold: float = 0.9
    relabel_folds: int = 1
    """Self-training's relabelling students (``train.relabel_rounds`` > 0). 1: the student
    relabels the very shapes it learnt from. K ≥ 2 (cross-fitted): every relabel round before
    the last trains K students, student f without the shapes of hash fold f
    (``distill.sources.fold_of``), and each shape is relabelled by the student that never
    saw its units, so an error the teacher repeats on one shape in every view, which a
    student fits on the shapes it learns from, is not voted back onto it. Costs about one
    more training (each of the K fits is sized for (K − 1)/K of the shapes)."""
    fold: int = -1
    """Set by the pipeline for cross-fitted students (the fold this fit holds out); −1: none."""
    select: str = "last"
    """Which checkpoint is reported: last (fixed schedule) | val (best on a validation
    split of the distillation shapes, scored against teacher knowledge, never test labels)."""
    val_fraction: float = 0.2
    """With select=val: the fraction of each category's distillation shapes held out."""
    per_category: bool = False
    """One student per category (the paper) instead of one student over all categories
    (category embedding + a head over the union of part slots, masked per category)."""
    augment: bool = True
    class_weights: str = "batch"
    """Where the loss's class weights w_c = clip(1 + log₄(total / (P·n_c)), 1, 4) count their
    (point, unit) pairs: batch (each batch's own, as the official code) | corpus (once per
    fit, from up to 64 training shapes of each category: a part's weight no longer jumps
    with the ~2 shapes of its category a mixed batch holds)."""
    ema: float = 0.0
    """Decay per optimiser step of the weights' moving average (0: off). With it on, the
    averaged weights are what validation, re-scoring and the final model use."""
    order_seed: int = -1
    """Seed of the training order alone (which shapes share a batch, in which epoch order);
    -1: the run's ``seed``. Separate from the seed of the initial weights, augmentation
    and dropout, so a study can vary one and hold the other (``bench/quality.py --orders``)."""
    max_failures: int = 2
    """Ray Train: times a worker group is restarted (resuming from the last checkpoint)."""
    checkpoint_every: int = 1
    """Epochs between checkpoints."""
    device: str = "auto"
    """auto (CUDA when visible, else the CPU) | cpu | cuda."""
    amp: str = "none"
    """Autocast of the student's training forward: none | bf16 (the geometry, xyz and
    distances, stays float32). Not the default: bench/student_speed.py measures it."""

    def __post_init__(self) -> None:
        check_positive("train.epochs", self.epochs)
        check_positive("train.batch_size", self.batch_size)
        check_positive("train.min_steps", self.min_steps, allow_zero=True)
        check_positive("train.warmup_steps", self.warmup_steps, allow_zero=True)
        check_positive("train.lr", self.lr)
        check_positive("train.bd_rounds", self.bd_rounds, allow_zero=True)
        check_positive("train.relabel_rounds", self.relabel_rounds, allow_zero=True)
        check_positive("train.relabel_folds", self.relabel_folds)
        if not -1 <= self.fold < self.relabel_folds:
            raise ConfigError(f"train.fold={self.fold} must be -1 (none) or a fold below train.relabel_folds")
        check_choice("train.bd_trigger", self.bd_trigger, ("plateau", "epoch"))
        check_choice("train.rescore", self.rescore, RESCORE_RULES)
        check_choice("train.select", self.select, ("last", "val"))
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"train.val_fraction={self.val_fraction} not in [0, 1)")
        check_choice("train.device", self.device, ("auto", "cpu", "cuda"))
        check_choice("train.amp", self.amp, ("none", "bf16"))
        check_choice("train.class_weights", self.class_weights, ("batch", "corpus"))
        check_positive("train.superpoint_consistency", self.superpoint_consistency, allow_zero=True)
        check_positive("train.mean_teacher", self.mean_teacher, allow_zero=True)
        if not 0.0 <= self.mean_teacher_threshold <= 1.0:
            raise ConfigError(f"train.mean_teacher_threshold={self.mean_teacher_threshold} not in [0, 1]")
        if self.mean_teacher > 0 and self.ema <= 0:
            raise ConfigError(
                f"train.mean_teacher={self.mean_teacher} needs a teacher: the weights' moving average "
                "(set train.ema, e.g. train.ema=0.99)"
            )
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"train.ema={self.ema} must be in [0, 1) (0: no weight average)")
        if self.order_seed < -1:
            raise ConfigError(f"train.order_seed={self.order_seed} must be >= 0, or -1 for the run's seed")

    def with_steps(self, steps_per_epoch: int) -> TrainConfig:
        """This config with ``epochs`` raised to cover ``min_steps`` at ``steps_per_epoch``
        (idempotent: the result has ``min_steps`` = 0)."""
        epochs = max(self.epochs, math.ceil(self.min_steps / max(1, steps_per_epoch)))
        return replace(self, epochs=epochs, min_steps=0)

    def data_order_seed(self, seed: int) -> int:
        """The seed of the training order: ``order_seed``, or the run's ``seed`` when -1."""
        return seed if self.order_seed < 0 else self.order_seed


ENCODER_OBJECTIVES = ("masked_points",)
"""Self-supervised objectives of ``jobs/pretrain_encoder.py`` (``distill.masked_points``)."""


@dataclass
class EncoderConfig:
    """Self-supervised pretraining of the student's encoder (``jobs/pretrain_encoder.py``).

    The encoder's architecture is the student's (``student.backbone``, ``width``, ``k``,
    ``use_normals``) and its clouds are ``data``'s (``data.num_points``), so what it trains
    loads into the student of the same settings. The device and autocast are
    ``train.device`` and ``train.amp``; Ray Train's workers are ``cluster.train_*``."""

    objective: str = "masked_points"
    """masked_points: reconstruct hidden patches from the visible rest (Point-MAE's
    objective on the student's own encoder, ``distill.masked_points``)."""
    epochs: int = 4
    batch_size: int = 32
    lr: float = 1e-3
    lr_min: float = 1e-5
    weight_decay: float = 0.05
    """AdamW's decoupled weight decay (Point-MAE's 0.05)."""
    warmup_steps: int = 20
    group_size: int = 32
    """Points per patch (Point-MAE: 32)."""
    mask_ratio: float = 0.6
    """Fraction of the patches hidden (Point-MAE: 0.6)."""
    decoder_width: int = 256
    checkpoint_every: int = 1
    """Epochs between checkpoints (``{run}/encoder/last.pt``); a killed job resumes from the last."""

    def __post_init__(self) -> None:
        check_choice("encoder.objective", self.objective, ENCODER_OBJECTIVES)
        check_positive("encoder.epochs", self.epochs)
        check_positive("encoder.batch_size", self.batch_size)
        check_positive("encoder.lr", self.lr)
        check_positive("encoder.lr_min", self.lr_min, allow_zero=True)
        check_positive("encoder.weight_decay", self.weight_decay, allow_zero=True)
        check_positive("encoder.warmup_steps", self.warmup_steps, allow_zero=True)
        check_positive("encoder.decoder_width", self.decoder_width)
        check_positive("encoder.checkpoint_every", self.checkpoint_every)
        if self.group_size < 2:
            raise ConfigError(f"encoder.group_size={self.group_size} must be >= 2")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ConfigError(f"encoder.mask_ratio={self.mask_ratio} must be in (0, 1)")


@dataclass
class SegmentConfig:
    """Segmenting new shapes with trained students (``jobs/segment.py``)."""

    students_from: str = ""
    """Run whose students segment (empty: this run)."""
    pictures: int = 24
    """PNG pictures to draw (the first N shapes; 0: none)."""
    picture_size: int = 300

    def __post_init__(self) -> None:
        check_positive("segment.pictures", self.pictures, allow_zero=True)
