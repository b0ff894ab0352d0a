"""The whole pipeline: ingest (or generate) → extract → train with backward-distillation
rounds → evaluate. With no arguments it runs on the embedded procedural corpus with the
simulated teacher, on this machine.

    python jobs/pretrain.py [--config FILE] [key=value ...]
    ray job submit --working-dir . -- python jobs/pretrain.py --config configs/cluster.yaml
"""

from cluster.job import run_job
from cluster.pipeline import pretrain


def main(argv: list[str] | None = None) -> dict:
    return run_job("pretrain", pretrain, argv)


if __name__ == "__main__":
    main()
