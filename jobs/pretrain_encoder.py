"""Pretrain the student's encoder on ``data``'s shapes, without labels.

    python jobs/pretrain_encoder.py --config smoke run=enc
    python jobs/pretrain_encoder.py --config encoder run=enc10k           # 10K procedural shapes, this CPU
    ray job submit --working-dir . -- python jobs/pretrain_encoder.py --config encoder_cuda

The last line of output is a JSON summary whose ``"encoder"`` is the file to start
students from: ``python jobs/pretrain.py student.pretrained=<that path, or the run name>``.
"""

from cluster.job import run_job
from cluster.pipeline import pretrain_encoder


def main(argv: list[str] | None = None) -> dict:
    return run_job("pretrain_encoder", pretrain_encoder, argv)


if __name__ == "__main__":
    main()
