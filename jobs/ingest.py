"""Ingest a data source into the run's Parquet shape table.

python jobs/ingest.py data.source=psb data.path=../shared/data/labeled_psb run=psb
"""

from cluster.job import run_job
from cluster.passes.ingest import ingest


def main(argv: list[str] | None = None) -> dict:
    return run_job("ingest", ingest, argv)


if __name__ == "__main__":
    main()
