"""Training: the loop, its hooks (log, health, samples, evaluation, report), run folders and resume."""

from cyclegan.train.loop import TrainResult, train
from cyclegan.train.runs import resume_config

__all__ = ["TrainResult", "resume_config", "train"]
