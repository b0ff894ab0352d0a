"""Teacher knowledge for the run's shapes (ingesting the data source first when needed).

    python jobs/extract.py data.source=psb data.path=../shared/data/labeled_psb \
        teacher.name=simulated teacher.preset=glip_like render.image_size=320
"""

from cluster.job import run_job
from cluster.pipeline import extract_stage


def main(argv: list[str] | None = None) -> dict:
    return run_job("extract", extract_stage, argv)


if __name__ == "__main__":
    main()
