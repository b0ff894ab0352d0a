"""Distil the students from the run's knowledge: forward, then backward distillation.

python jobs/train.py run=psb train.epochs=25 train.bd_rounds=1
"""

from cluster.job import run_job
from cluster.pipeline import train_stage


def main(argv: list[str] | None = None) -> dict:
    return run_job("train", train_stage, argv)


if __name__ == "__main__":
    main()
