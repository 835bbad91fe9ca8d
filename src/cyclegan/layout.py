"""Where things are in a run folder (``CHECKPOINTS_DIR/NAME/``): the one place that names its files.

``config.json``, ``checkpoints/latest.safetensors`` (resumable; the one before it is kept as
``previous.safetensors``), ``checkpoints/epoch_NNN.safetensors`` and ``best.safetensors`` (weights only),
``log.jsonl``, ``eval_log.jsonl``, ``samples/step_NNNNNNN.png``, ``eval.json`` or ``demo.json`` (scores),
``triplets.png`` (input | output | target of a paired evaluation), ``report.html``.
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


def epoch_checkpoint(epoch: int) -> str:
    return f"epoch_{epoch:03d}.safetensors"


def sample_grid(step: int) -> str:
    return f"step_{step:07d}.png"
