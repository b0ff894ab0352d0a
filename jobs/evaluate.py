"""Per-category mIoU of the run's students and of both voting baselines.

python jobs/evaluate.py run=psb mode=pre eval.data.source=psb eval.data.split=test ...
"""

from cluster.job import run_job
from cluster.pipeline import evaluate_stage


def main(argv: list[str] | None = None) -> dict:
    return run_job("evaluate", evaluate_stage, argv)


if __name__ == "__main__":
    main()
