"""Where things are in a run folder (``CHECKPOINTS_DIR/NAME/``): the one place that names its files.

``config.json``, ``checkpoints/latest.safetensors`` (resumable; the one before it is kept as
``previous.safetensors``), ``checkpoints/epoch_NNN.safetensors`` and ``best.safetensors`` (weights only),
``log.jsonl``, ``eval_log.jsonl``, ``samples/step_NNNNNNN.png``, ``eval.json`` or ``demo.json`` (scores),
``triplets.png`` (input | output | target of a paired evaluation), ``report.html``,
``intensity.json`` (the data's mapping to [-1, 1], for data that is not 8-bit). With
``--log_to``: TensorBoard's ``events.out.tfevents.*`` (in the run folder itself, so
that ``tensorboard --logdir CHECKPOINTS_DIR`` names each run by its folder), ``wandb/`` (W&B's run
folders), ``trackers.json`` (the W&B and MLflow run ids a resumed run continues) and, beside the run
folders, ``CHECKPOINTS_DIR/mlruns/`` (the local MLflow store).
"""

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
LATEST = "latest.safetensors"
PREVIOUS = "previous.safetensors"
STAGED = ".latest.safetensors.staged"  # a commit's new checkpoint, complete, before its renames
BEST = "best.safetensors"
LOG = "log.jsonl"
EVAL_LOG = "eval_log.jsonl"
SAMPLES = "samples"
REPORT = "report.html"
EVAL_FILE = "eval.json"
DEMO_FILE = "demo.json"
TRIPLETS = "triplets.png"
LOCK = ".lock"
WANDB = "wandb"
TRACKER_IDS = "trackers.json"
MLRUNS = "mlruns"  # in CHECKPOINTS_DIR: one store for all its runs, as `tensorboard --logdir` sees them all
INTENSITY = "intensity.json"


def epoch_checkpoint(epoch: int) -> str:
    return f"epoch_{epoch:03d}.safetensors"


def sample_grid(step: int) -> str:
    return f"step_{step:07d}.png"
