"""Storage and the run's layout: URIs and filesystems, the Parquet parts and manifests,
the run's paths, rejects."""
