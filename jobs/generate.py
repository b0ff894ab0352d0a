"""Generate a shape corpus: procedural (labelled) or Shap-E text-to-3D (unlabelled), on Ray
or in this process as ``cluster.backend`` says (``auto``: Ray when a cluster is configured).

python jobs/generate.py generation.name=procedural generation.count=1000 run=proc
python jobs/generate.py generation.name=shap_e generation.model=DIR generation.count=50 \
    generation.categories=[chair,table] generation.gpus=1 generation.actors=4 run=gen

Writes ``{storage.root}/{run}/{generation.output}/`` (default ``shapes``), rejects with
their reasons to ``{run}/rejects/``, and prints the JSON summary as the last line. A
re-run makes only the shapes still missing.
"""

from typing import Any

from cluster.config import Config
from cluster.job import run_job
from cluster.pipeline import generate_shapes
from cluster.store.storage import Storage


def stage(cfg: Config, storage: Storage) -> dict[str, Any]:
    """The job's stage: the configured table (``{run}/{generation.output}``)."""
    return generate_shapes(cfg, storage)


def main(argv: list[str] | None = None) -> dict:
    return run_job("generate", stage, argv)


if __name__ == "__main__":
    main()
