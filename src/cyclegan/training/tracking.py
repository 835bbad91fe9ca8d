"""Experiment trackers behind ``--log_to``: TensorBoard, Weights & Biases and MLflow through one hook.

:class:`Tracker` hands what the other hooks publish on the run (:class:`~cyclegan.training.hooks.Scalars`:
losses and the learning rate every ``print_freq`` steps, health signals, FID/KID;
:class:`~cyclegan.training.hooks.ImageFile`: sample grids; :class:`~cyclegan.training.hooks.Text`: health
warnings) to one small backend per library, adds images/s, and logs the configuration as
hyper-parameters. It reads nothing from the device, so it adds no host-device synchronisation.

Where each writes, never outside the folders the user named: TensorBoard's event files go in the run
folder (``tensorboard --logdir CHECKPOINTS_DIR`` shows every run by its name); W&B's run folder in
``RUN/wandb``, offline unless the user has logged in (or set WANDB_MODE); MLflow, unless
MLFLOW_TRACKING_URI names a store, to ``CHECKPOINTS_DIR/mlruns``: an SQLite store (MLflow's file store is
deprecated) with its artifacts beside it, shared by the runs of that folder so its UI compares them.

A resumed run continues the same tracker runs. TensorBoard: the resumed session's event file purges what
a killed session logged after the checkpoint (``purge_step``), as ``log.jsonl`` forgets those rows. W&B and
MLflow keep everything they are sent: their run ids are kept in ``trackers.json`` from the first start on
(before any checkpoint), and a resumed run skips the steps its MLflow run, or online W&B run, already has;
a resumed run repeats them exactly. Offline, W&B keeps a folder per session of the one run, which
``wandb sync`` uploads.

A tracker that cannot start, or fails mid-run (a full disk, a server gone), is one warning and the run
goes on without it; with ``--log_to_strict`` it stops the run instead: before training when it cannot
start, at once (keeping the last checkpoint) when it fails mid-run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import netrc
import os
import re
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast
from urllib.parse import urlparse

import torch

from cyclegan.config import TrainConfig, trackers
from cyclegan.errors import CycleGANError, first_line
from cyclegan.files import atomic_write_text
from cyclegan.layout import MLRUNS, TRACKER_IDS
from cyclegan.training.hooks import Event, Hook, ImageFile, RunState, Scalars, StopRun, note

if TYPE_CHECKING:
    from torch.utils.tensorboard.writer import FileWriter

Value = str | int | float | bool
PREVIEW_WIDTH = 1024  # px: TensorBoard's sample grids, as JPEG (see TensorBoard.image)


def check_installed(cfg: TrainConfig) -> None:
    """Every tracker ``--log_to`` names must be installed: checked before anything is made or trained."""
    for name in trackers(cfg.log_to):
        backend = BACKENDS[name]
        if importlib.util.find_spec(backend.package) is None:
            raise CycleGANError(
                f"--log_to {name} needs the {backend.package} package: pip install 'cyclegan[{name}]'"
            )


def hyperparameters(cfg: TrainConfig) -> dict[str, Value]:
    """The config by its flat option names (as the CLI spells them), unset options as "none"."""
    data = cfg.to_dict()
    model = data.pop("model")
    net = model.pop("net")
    flat = {**data, "model": model.pop("name"), **model, **net}
    return {k: "none" if v is None else v for k, v in flat.items()}


class Backend:
    """One tracker library. Any method may raise: the tracker then warns once and drops the backend."""

    name: ClassVar[str]
    package: ClassVar[str]  # what --log_to needs installed
    first_step = 0  # earlier steps are already in the tracker's run, logged before a kill

    def __init__(self, run: RunState, ids: dict[str, str]) -> None:
        """Open the tracker's run: a resumed run's by its id in ``ids``, or a new one, whose id goes there."""

    def scalars(self, step: int, values: dict[str, float]) -> None:
        raise NotImplementedError

    def image(self, step: int, name: str, path: Path) -> None:
        raise NotImplementedError

    def text(self, step: int, name: str, text: str) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Write out what was logged so far: every ``print_freq`` steps and before every checkpoint."""

    def close(self, outcome: str) -> None:
        """``outcome``: finished, interrupted or stopped."""


def wait_past_event_files(folder: Path) -> None:
    """Wait (a second at most) until a new event file in ``folder`` sorts after the ones there.

    TensorBoard reads a run's event files in name order, and a name starts with the second its file was
    made, then host and process id. A session resumed within the second its killed predecessor started
    could sort first; TensorBoard would then take the older steps that follow for a restart and drop the
    resumed session's steps.
    """
    made = [
        int(stamp) for p in folder.glob("events.out.tfevents.*") if (stamp := p.name.split(".")[3]).isdigit()
    ]
    deadline = time.monotonic() + 1.0
    while made and time.time() < max(made) + 1 and time.monotonic() < deadline:
        time.sleep(0.02)


class TensorBoard(Backend):
    """Event files in the run folder through ``torch.utils.tensorboard``."""

    name, package = "tensorboard", "tensorboard"

    def __init__(self, run: RunState, ids: dict[str, str]) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        # steps after the checkpoint were logged by a killed session: TensorBoard hides them
        wait_past_event_files(run.run_dir)
        self.writer = SummaryWriter(str(run.run_dir), purge_step=run.progress.step + 1)
        events = self.writer.file_writer  # for what SummaryWriter has no method for
        assert events is not None
        self.events: FileWriter = events
        losses = {f"loss/{name}": None for name in run.model.loss_names}
        experiment, session, _ = hparams(hyperparameters(run.cfg), losses)
        for summary in (experiment, session):
            self.events.add_summary(summary, run.progress.step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def image(self, step: int, name: str, path: Path) -> None:
        """A JPEG preview at most ``PREVIEW_WIDTH`` wide: TensorBoard checksums what it writes in pure
        Python, a quarter of a second for a 256-px run's 1.2 MB grid, which would hold up training. The
        lossless grid stays in ``samples/`` and the report."""
        from PIL import Image
        from tensorboard.compat.proto.summary_pb2 import Summary

        with Image.open(path) as image:
            preview = image.convert("RGB")
        if preview.width > PREVIEW_WIDTH:
            height = max(1, round(preview.height * PREVIEW_WIDTH / preview.width))
            preview = preview.resize((PREVIEW_WIDTH, height), Image.Resampling.LANCZOS)
        data = io.BytesIO()
        preview.save(data, format="JPEG", quality=90, subsampling=0)  # colours matter here
        encoded = Summary.Image(
            height=preview.height, width=preview.width, colorspace=3, encoded_image_string=data.getvalue()
        )
        self.events.add_summary(Summary(value=[Summary.Value(tag=name, image=encoded)]), step)

    def text(self, step: int, name: str, text: str) -> None:
        self.writer.add_text(name, text, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self, outcome: str) -> None:
        self.writer.close()


class WandB(Backend):
    """A W&B run in ``RUN/wandb``; health warnings as a table (W&B's way of showing text)."""

    name, package = "wandb", "wandb"

    def __init__(self, run: RunState, ids: dict[str, str]) -> None:
        import wandb

        ids.setdefault(self.name, secrets.token_hex(6))
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "cyclegan"),
            name=run.cfg.name,
            id=ids[self.name],
            resume="allow",
            dir=run.run_dir,
            mode=cast(Any, wandb_mode()),
            settings=wandb.Settings(console="off"),  # leave the progress bar's stderr alone
        )
        self.run.config.update(hyperparameters(run.cfg), allow_val_change=True)
        self.first_step = self.run.step  # online, a resumed run's steps so far; offline 0
        self.tables: dict[str, list[list[Any]]] = {}

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def image(self, step: int, name: str, path: Path) -> None:
        import wandb

        self.run.log({name: wandb.Image(str(path))}, step=step)

    def text(self, step: int, name: str, text: str) -> None:
        import wandb

        key, _, what = name.partition("/")
        rows = self.tables.setdefault(key, [])
        rows.append([step, what, text])
        self.run.log({key: wandb.Table(columns=["step", "what", "text"], data=rows)}, step=step)

    def close(self, outcome: str) -> None:
        self.run.finish(exit_code=0 if outcome != "stopped" else 1)


def wandb_mode() -> str:
    """The user's WANDB_MODE, else online when they have logged in (``wandb login`` keeps the key in
    ~/.netrc; WANDB_API_KEY counts too), else offline: a run never waits at a login prompt."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
    try:
        found = netrc.netrc().authenticators(host)
    except (OSError, netrc.NetrcParseError):
        found = None
    return "online" if found and found[2] else "offline"  # an entry without a password holds no key


class MLflow(Backend):
    """An MLflow run (experiment ``cyclegan``, or MLFLOW_EXPERIMENT_NAME) through ``MlflowClient``.

    Sample grids are artifacts (``samples/step_NNNNNNN.png``, the PNG as written): MLflow's ``log_image``
    would encode each grid twice more, half a second a grid. Options changed on resume become tags
    ``resumed.NAME``, as MLflow parameters cannot change.
    """

    name, package = "mlflow", "mlflow"

    def __init__(self, run: RunState, ids: dict[str, str]) -> None:
        from mlflow.tracking import MlflowClient

        uri, local = os.environ.get("MLFLOW_TRACKING_URI"), None
        if not uri:
            local = run.run_dir.resolve().parent / MLRUNS
            local.mkdir(exist_ok=True)
            uri = f"sqlite:///{local / 'mlflow.db'}"
        self.client = MlflowClient(uri)
        experiment = self._experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "cyclegan"), local)
        params = {k: str(v) for k, v in hyperparameters(run.cfg).items()}
        old = self._run(ids.get(self.name))
        if old is None:
            self.run_id = self.client.create_run(experiment, run_name=run.cfg.name).info.run_id
            ids[self.name] = self.run_id
            self._log(params)
            return
        self.run_id = old.info.run_id
        self.client.update_run(self.run_id, status="RUNNING")
        self._log({k: v for k, v in params.items() if k not in old.data.params})
        for k, v in params.items():
            if k in old.data.params and old.data.params[k] != v:
                self.client.set_tag(self.run_id, f"resumed.{k}", v)
        steps = [m.step for key in old.data.metrics for m in self.client.get_metric_history(self.run_id, key)]
        self.first_step = max(steps, default=-1) + 1

    def _experiment(self, name: str, local: Path | None) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:  # artifacts beside the local store, not in MLflow's default ./mlartifacts
            where = (local / "artifacts").as_uri() if local else None
            return self.client.create_experiment(name, artifact_location=where)
        except MlflowException:  # another run created it meanwhile
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _run(self, run_id: str | None) -> Any:
        """The run a resumed run continues; None when there is none (or this store does not have it)."""
        from mlflow.exceptions import MlflowException

        if run_id is None:
            return None
        try:
            return self.client.get_run(run_id)
        except MlflowException:
            note(f"the MLflow run {run_id} is not in this store: starting a new MLflow run")
            return None

    def _log(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(mlflow_name(k), v) for k, v in params.items()])

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(mlflow_name(k), v, now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def image(self, step: int, name: str, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path), name)

    def text(self, step: int, name: str, text: str) -> None:
        self.client.log_text(self.run_id, text, f"{name}/step_{step:07d}.txt")

    def close(self, outcome: str) -> None:
        status = {"finished": "FINISHED", "interrupted": "KILLED"}.get(outcome, "FAILED")
        self.client.set_terminated(self.run_id, status=status)


def mlflow_name(name: str) -> str:
    """A metric or parameter name MLflow accepts: "eval/FID A→B" becomes "eval/FID AtoB"."""
    return re.sub(r"[^\w./\- :]", "_", name.replace("→", "to"))


BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (TensorBoard, WandB, MLflow)}


class Tracker(Hook):
    """Logs what the run's hooks publish to the trackers named by ``--log_to``; see the module docstring."""

    name = "trackers"

    def __init__(self, names: Sequence[str], strict: bool = False) -> None:
        self.names, self.strict = tuple(names), strict
        self.backends: dict[str, Backend] = {}
        self.failure: str | None = None  # why a backend failed mid-run (stops the run when strict)
        self.pending: dict[int, dict[str, float]] = {}  # scalars by step, until the step's hooks are done

    def start(self, run: RunState) -> None:
        self.run_dir = run.run_dir
        ids = read_ids(run.run_dir)
        before, failed = dict(ids), None
        for name in self.names:
            try:
                self.backends[name] = BACKENDS[name](run, ids)
            except Exception as err:  # a library's own errors: each raises its own kinds
                why = f"the {name} tracker cannot start ({type(err).__name__}: {first_line(err)})"
                if self.strict:
                    failed = f"{why}: fix it, or leave {name} out of --log_to, and resume with:"
                    failed += f" cyclegan train --resume {run.run_dir}"
                    break
                note(f"warning: {why}; training goes on without it")
        if ids != before:  # before anything is logged, so that a killed run's trackers are found again
            atomic_write_text(run.run_dir / TRACKER_IDS, json.dumps(ids, indent=2) + "\n")
        if failed is not None:
            self._close_all("stopped")
            raise CycleGANError(failed)
        self.mark = (run.progress.step, run.progress.seconds)
        self.batch_size = run.cfg.batch_size
        run.subscribe(self.log)

    def log(self, event: Event) -> None:
        """Images and text go to the trackers at once; a step's scalars wait for the end of its hooks, to
        reach each tracker in one call (MLflow's store commits each call)."""
        if isinstance(event, Scalars):
            values = self.pending.setdefault(event.step, {})
            values.update({f"{event.group}/{k}": v for k, v in event.values.items()})
        elif isinstance(event, ImageFile):
            self._call(event.step, "image", event.step, event.name, event.path)
        else:
            self._call(event.step, "text", event.step, event.name, event.text)

    def after_step(self, run: RunState, losses: dict[str, torch.Tensor]) -> None:
        p = run.progress
        printing = p.step % run.cfg.print_freq == 0
        if printing and p.seconds > self.mark[1]:
            speed = (p.step - self.mark[0]) * self.batch_size / (p.seconds - self.mark[1])
            self.log(Scalars(p.step, "train", {"images_per_s": speed}))
            self.mark = (p.step, p.seconds)
        self._send()
        if printing or run.saving:  # live dashboards see each interval; a checkpoint's past survives a kill
            self._flush(p.step)
        self._stop_if_failed()

    def after_epoch(self, run: RunState) -> None:
        self._send()
        self._flush(run.progress.step)  # an evaluation's scores, before the next checkpoint
        self._stop_if_failed()

    def end(self, run: RunState) -> None:
        self._send()
        if run.stopped is not None:
            outcome = "stopped"
        else:
            outcome = "finished" if run.progress.step >= run.total_steps else "interrupted"
        self._call(run.progress.step, "close", outcome, logs=False)

    def _send(self) -> None:
        for step, values in sorted(self.pending.items()):
            self._call(step, "scalars", step, values)
        self.pending.clear()

    def _call(self, step: int, method: str, *args: Any, logs: bool = True) -> None:
        """``method(*args)`` of every backend, but a call that ``logs`` skips the backends that have ``step``
        already; a backend that raises is dropped with a warning."""
        for name, backend in list(self.backends.items()):
            if logs and step < backend.first_step:
                continue
            try:
                getattr(backend, method)(*args)
            except Exception as err:
                self._drop(name, err, step)

    def _flush(self, step: int) -> None:
        self._call(step, "flush", logs=False)

    def _drop(self, name: str, err: Exception, step: int) -> None:
        backend = self.backends.pop(name)
        why = f"the {name} tracker failed at step {step} ({type(err).__name__}: {first_line(err)})"
        if self.strict:
            self.failure = self.failure or (
                f"{why}; stopped for --log_to_strict: resume with cyclegan train --resume {self.run_dir}"
            )
        else:
            note(f"warning: {why}; training goes on without it")
        with contextlib.suppress(Exception):  # it has failed once already: its warning said so
            backend.close("stopped")

    def _stop_if_failed(self) -> None:
        if self.failure is not None:
            raise StopRun(self.failure)

    def _close_all(self, outcome: str) -> None:
        for backend in self.backends.values():
            with contextlib.suppress(Exception):  # the run is failing already: its error says why
                backend.close(outcome)
        self.backends.clear()


def read_ids(run_dir: Path) -> dict[str, str]:
    """The tracker run ids a run has kept (``trackers.json``); a missing or damaged file keeps none."""
    try:
        data = json.loads((run_dir / TRACKER_IDS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}
