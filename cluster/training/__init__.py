"""The students and the encoder: plans, fits (in this process or on Ray Train), samples
from storage, checkpoints, curves, loading."""
