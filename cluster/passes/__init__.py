"""Every pass over shape parts, each run by ``runner.run_pass`` here or in one Ray Data pool:
ingest, generation, extraction, re-scoring, evaluation, relabelling, segmentation."""
