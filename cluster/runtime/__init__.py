"""The cluster runtime: connecting to Ray, the resources each stage asks for, autoscaling
holds."""
