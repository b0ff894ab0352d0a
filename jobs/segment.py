"""Segment shapes with trained students: per-point labels, coloured PLYs and pictures.

python jobs/segment.py run=smoke data.source=files data.path=my_chairs/ data.category=chair
"""

from cluster.job import run_job
from cluster.passes.segment import segment


def main(argv: list[str] | None = None) -> dict:
    return run_job("segment", segment, argv)


if __name__ == "__main__":
    main()
