"""Training: the loop, its hooks (log, health, samples, evaluation, report), run folders and resume."""

from cyclegan.training.loop import TrainResult, train
from cyclegan.training.runs import resume_config

__all__ = ["TrainResult", "resume_config", "train"]
