"""Experiment trackers (``--log_to``) against the real libraries, and the live report.

TensorBoard's event files are read back with TensorBoard's own reader, the MLflow store through MLflow's
client, and W&B's offline run file as W&B's protobuf records. The libraries are imported inside the tests,
so the rest of the suite does not pay for them.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import StandInInception, tiny_config
from PIL import Image

from cyclegan.cli import main
from cyclegan.errors import CycleGANError
from cyclegan.evaluation import metrics
from cyclegan.evaluation.report import RunStatus, write_report
from cyclegan.evaluation.watch import watch_server
from cyclegan.models.cycle_gan import CycleGAN
from cyclegan.training import runs
from cyclegan.training.hooks import Hook, RunState
from cyclegan.training.loop import train
from cyclegan.training.tracking import hyperparameters, mlflow_name, wait_past_event_files, wandb_mode

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy")  # MLflow's, not ours
HERE = Path(__file__).parent
KILLED_AT = 7
KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from conftest import tiny_config
from cyclegan.training.hooks import Hook
from cyclegan.training.loop import train

class Kill(Hook):
    name = "kill"

    def after_step(self, run, losses):
        if run.progress.step == {step}:  # after every other hook of the step: what they logged is written
            os.kill(os.getpid(), signal.SIGKILL)

train(tiny_config({options}), hooks=[Kill()], show_progress=False)
"""


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")  # never upload a test run, even from a logged-in machine
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def loss_rows(run_dir: Path) -> dict[int, dict[str, Any]]:
    return {row["step"]: row for row in runs.read_rows(run_dir / "log.jsonl") if "event" not in row}


def test_tensorboard_shows_each_step_once_after_a_kill_and_resume(dataroot: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    options = dict(
        log_to="tensorboard", max_steps=10, print_freq=1, sample_freq=3, save_latest_freq=4,
        health_every=2, health_warmup=2, health_patience=1,
    )  # fmt: skip
    args = f"{str(dataroot)!r}, {str(tmp_path)!r}, " + ", ".join(f"{k}={v!r}" for k, v in options.items())
    script = KILLED_RUN.format(tests=str(HERE), step=KILLED_AT, options=args)
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run_dir = tmp_path / "run"

    def events() -> EventAccumulator:
        return EventAccumulator(
            str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0}
        ).Reload()

    # the killed process had logged steps after its last checkpoint (step 4), and its report was live
    assert [e.step for e in events().Scalars("loss/G_A")] == list(range(1, KILLED_AT + 1))
    live = (run_dir / "report.html").read_text()
    status = re.search(
        r"<strong>Training</strong> · step 3 of 10 \(30%\) · epoch 1 of 4 · ([\d.]+) images/s", live
    )
    assert status and float(status[1]) > 0 and " left" in live

    train(runs.resume_config(run_dir), run_dir, show_progress=False)
    seen, rows = events(), loss_rows(run_dir)
    assert sorted(rows) == list(range(1, 11))
    for name in CycleGAN.loss_names:  # superseded, as log.jsonl's rows are: each step once, in order
        logged = seen.Scalars(f"loss/{name}")
        assert [e.step for e in logged] == list(range(1, 11))
        assert [e.value for e in logged] == pytest.approx([rows[s][name] for s in range(1, 11)], abs=1e-5)
    for tag in seen.Tags()["scalars"]:
        steps = [e.step for e in seen.Scalars(tag)]
        assert steps == sorted(set(steps)), tag
    assert [e.value for e in seen.Scalars("train/lr")] == pytest.approx([rows[s]["lr"] for s in range(1, 11)])
    assert all(e.value > 0 for e in seen.Scalars("train/images_per_s"))
    assert [e.step for e in seen.Scalars("health/change_A")] == [2, 4, 6, 8, 10]
    grids = seen.Images("samples")
    assert [g.step for g in grids] == [3, 6, 9, 10]  # the end's grid too, drawn once
    for grid in grids:  # a JPEG preview of the grid PNG (this one small enough to keep its size)
        shown = Image.open(io.BytesIO(grid.encoded_image_string))
        drawn = Image.open(run_dir / "samples" / f"step_{grid.step:07d}.png")
        assert shown.format == "JPEG" and shown.size == drawn.size == (grid.width, grid.height)
        difference = np.abs(np.asarray(shown, float) - np.asarray(drawn.convert("RGB"), float))
        assert difference.mean() < 8  # of 255: JPEG's loss on these noise images
    health = [row for row in runs.read_rows(run_dir / "log.jsonl") if row.get("event") == "health"]
    warned = {(row["step"], f"health/{row['signal']}/{row['network']}") for row in health}
    texts = {
        (e.step, tag.removesuffix("/text_summary"))
        for tag in seen.Tags()["tensors"]
        for e in seen.Tensors(tag)
    }
    assert warned and texts == warned
    session = HParamsPluginData.FromString(seen.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    hparams = session.session_start_info.hparams
    assert hparams["ngf"].number_value == 4 and hparams["model"].string_value == "cycle_gan"
    final = (run_dir / "report.html").read_text()
    assert "<strong>Finished</strong>" in final and "step 10 of 10 (100%)" in final


def test_a_resumed_sessions_event_file_sorts_after_one_made_in_the_same_second(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    now = int(time.time())
    killed = tmp_path / f"events.out.tfevents.{now:010d}.~host.99999999.0"  # "~" sorts after any host name
    killed.write_bytes(b"")
    wait_past_event_files(tmp_path)
    SummaryWriter(str(tmp_path)).close()
    assert sorted(p.name for p in tmp_path.iterdir())[0] == killed.name


def wandb_records(run_folder: Path) -> list[Any]:
    """The records of a W&B offline run, read from its transaction log (LevelDB's log format, after W&B's
    7-byte file header) as W&B's own protobuf records."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_folder.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, position, parts = [], 7, b""
    while position + 7 <= len(data):
        left = 32768 - position % 32768
        length, kind = int.from_bytes(data[position + 4 : position + 6], "little"), data[position + 6]
        if left < 7 or kind == 0:  # a block's padding
            position += left
            continue
        parts += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or its last part
            records.append(wandb_internal_pb2.Record.FromString(parts))
            parts = b""
    return records


def wandb_items(run_folder: Path, kind: str) -> list[dict[str, Any]]:
    """The items of each ``kind`` record (history rows, config updates) of a W&B offline run."""
    found = []
    for record in wandb_records(run_folder):
        if record.WhichOneof("record_type") == kind:
            items = record.history.item if kind == "history" else record.config.update
            found.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in items})
    return found


def wandb_history(run_folder: Path) -> list[dict[str, Any]]:
    return wandb_items(run_folder, "history")


def test_wandb_and_mlflow_continue_their_runs_and_skip_steps_they_have(
    dataroot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setattr(metrics, "load_inception", lambda weights, device: StandInInception())
    cfg = tiny_config(
        dataroot,
        tmp_path,
        log_to="wandb,mlflow",
        max_steps=6,
        save_latest_freq=4,
        sample_freq=4,
        eval_every=1,
        health_every=2,
        health_warmup=2,
        health_patience=1,
    )
    run_dir = train(cfg, show_progress=False, report=False).run_dir
    folder = run_dir / "checkpoints"  # as if killed after logging step 6, before its checkpoint was committed
    (folder / "previous.safetensors").replace(folder / "latest.safetensors")
    train(runs.resume_config(run_dir, {"max_steps": 8}), run_dir, show_progress=False, report=False)
    ids, rows = json.loads((run_dir / "trackers.json").read_text()), loss_rows(run_dir)

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("cyclegan").experiment_id])
    run_id = run.info.run_id
    assert run_id == ids["mlflow"] and run.info.run_name == "run" and run.info.status == "FINISHED"
    for name in ("G_A", "cycle_B"):
        history = client.get_metric_history(run_id, f"loss/{name}")
        assert [m.step for m in history] == [2, 4, 6, 8]
        assert [m.value for m in history] == pytest.approx([rows[s][name] for s in (2, 4, 6, 8)], abs=1e-5)
    evaluated = runs.read_rows(run_dir / "eval_log.jsonl")[-1]
    (kid,) = client.get_metric_history(run_id, "eval/KID AtoB")  # once, though step 6 was evaluated twice
    assert kid.step == 6 and kid.value == pytest.approx(evaluated["metrics"]["KID A→B"])
    assert run.data.params["ngf"] == "4" and run.data.params["max_steps"] == "6"
    assert run.data.params == {mlflow_name(k): str(v) for k, v in hyperparameters(cfg).items()}
    assert run.data.tags["resumed.max_steps"] == "8"
    warned = {
        (row["step"], f"{row['signal']}/{row['network']}"): row["message"]
        for row in runs.read_rows(run_dir / "log.jsonl")
        if row.get("event") == "health"
    }
    assert warned  # health warnings reach both trackers as text, each once in MLflow
    texts = Path(client.download_artifacts(run_id, "health", str(tmp_path / "texts")))
    assert {
        (int(f.stem.removeprefix("step_")), f.parent.relative_to(texts).as_posix()): f.read_text()
        for f in texts.rglob("*")
        if f.is_file()
    } == warned
    grids = [a.path for a in client.list_artifacts(run_id, "samples")]
    assert grids == [f"samples/step_{step:07d}.png" for step in (4, 6, 8)]  # 6: the first session's end
    local = Path(client.download_artifacts(run_id, "samples/step_0000008.png", str(tmp_path / "got")))
    assert local.read_bytes() == (run_dir / "samples" / "step_0000008.png").read_bytes()

    sessions = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert [s.name.rsplit("-", 1)[1] for s in sessions] == [ids["wandb"]] * 2  # one W&B run, two sessions
    first, second = (wandb_history(s) for s in sessions)
    assert [r["_step"] for r in first if "loss/G_A" in r] == [2, 4, 6]
    assert [r["_step"] for r in second if "loss/G_A" in r] == [6, 8]  # offline, each session logs its own
    assert [r["loss/G_A"] for r in second if "loss/G_A" in r] == pytest.approx(
        [rows[6]["G_A"], rows[8]["G_A"]]
    )
    assert [r["_step"] for r in first + second if "samples/path" in r] == [4, 6, 8]
    assert any("eval/KID A→B" in r for r in first)
    configs = [{k: v for c in wandb_items(s, "config") for k, v in c.items()} for s in sessions]
    assert configs[0] == hyperparameters(cfg) and configs[1]["max_steps"] == 8  # the config as hparams
    tables = [r["health/path"] for r in first if r.get("health/_type") == "table-file"]
    data = json.loads((sessions[0] / "files" / tables[-1]).read_text())  # the last table holds them all
    assert data["columns"] == ["step", "what", "text"]
    assert {(step, what): text for step, what, text in data["data"]} == warned


def test_mlflow_logs_to_the_store_mlflow_tracking_uri_names(
    dataroot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # where that store keeps its artifacts: MLflow's choice, not ours
    cfg = tiny_config(dataroot, tmp_path / "runs", log_to="mlflow", max_steps=2, print_freq=1)
    run_dir = train(cfg, show_progress=False, report=False).run_dir
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["run"]  # no CHECKPOINTS_DIR/mlruns
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cyclegan").experiment_id])
    assert run.info.run_id == json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    assert run.info.status == "FINISHED" and run.data.params["max_steps"] == "2"
    rows = loss_rows(run_dir)
    history = client.get_metric_history(run.info.run_id, "loss/G_A")
    assert [(m.step, m.value) for m in history] == [(s, pytest.approx(rows[s]["G_A"])) for s in (1, 2)]
    grid = Path(client.download_artifacts(run.info.run_id, "samples/step_0000002.png", str(tmp_path / "got")))
    assert grid.read_bytes() == (run_dir / "samples" / "step_0000002.png").read_bytes()


def test_wandb_runs_offline_unless_the_user_has_logged_in_or_set_wandb_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # ~/.netrc, where wandb login keeps the key
    netrc = tmp_path / ".netrc"

    def logins(text: str) -> str:
        netrc.write_text(text)
        netrc.chmod(0o600)  # as wandb login writes it (Python's reader refuses a looser one)
        return wandb_mode()

    assert wandb_mode() == "offline"  # no ~/.netrc
    assert logins("machine example.com login me password secret\n") == "offline"  # a login elsewhere
    assert logins("machine api.wandb.ai login user password k3y\n") == "online"
    assert logins("machine api.wandb.ai login user\n") == "offline"  # an entry without a key
    assert logins("machne api.wandb.ai login user password k3y\n") == "offline"  # unreadable: no prompt
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org:8443")  # a server of one's own
    assert logins("machine api.wandb.ai login user password k3y\n") == "offline"
    assert logins("machine wandb.example.org login user password k3y\n") == "online"
    netrc.unlink()
    monkeypatch.setenv("WANDB_API_KEY", "k3y")
    assert wandb_mode() == "online"
    for mode in ("offline", "disabled"):  # the user's choice wins over a login
        monkeypatch.setenv("WANDB_MODE", mode)
        assert wandb_mode() == mode


class Sabotage(Hook):
    """Replaces the MLflow store's artifact folder with a file at step 3, as a failing disk would."""

    name = "sabotage"

    def after_step(self, run: RunState, losses: dict[str, torch.Tensor]) -> None:
        if run.progress.step == 3:
            artifacts = run.run_dir.parent / "mlruns" / "artifacts"
            shutil.rmtree(artifacts, ignore_errors=True)
            artifacts.write_text("")


@pytest.mark.parametrize("strict", [False, True])
def test_a_tracker_failing_mid_run_is_one_warning_or_with_strict_stops_the_run(
    dataroot: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], strict: bool
) -> None:
    from mlflow.tracking import MlflowClient

    cfg = tiny_config(
        dataroot, tmp_path, log_to="mlflow,tensorboard", log_to_strict=strict, max_steps=6, sample_freq=4
    )
    capsys.readouterr()
    result = train(cfg, hooks=[Sabotage()], show_progress=False, report=False)
    warned = [line for line in capsys.readouterr().err.splitlines() if "mlflow tracker" in line]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("cyclegan").experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss/G_A")] == [2]  # then it failed
    assert run.info.status == "FAILED"
    if strict:  # the run stops at once, and says why, as a diverged run does
        assert warned == [] and result.progress.step == 4 and result.stopped is not None
        assert "the mlflow tracker failed at step 4 (" in result.stopped
        assert "stopped for --log_to_strict: resume with cyclegan train --resume" in result.stopped
    else:
        assert len(warned) == 1 and "the mlflow tracker failed at step 4 (" in warned[0]
        assert "training goes on without it" in warned[0]
        assert result.stopped is None and result.progress.step == 6
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logged = EventAccumulator(str(result.run_dir)).Reload().Scalars("loss/G_A")  # the other tracker went on
    assert [e.step for e in logged] == [2, 4] if strict else [2, 4, 6]


def test_a_tracker_that_cannot_start_is_one_warning_or_with_strict_one_error(
    dataroot: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mlruns").write_text("")  # the local store's folder cannot be made
    result = train(
        tiny_config(dataroot, tmp_path, log_to="mlflow", max_steps=2), show_progress=False, report=False
    )
    err = [line for line in capsys.readouterr().err.splitlines() if "mlflow" in line]
    assert result.progress.step == 2 and len(err) == 1
    assert "the mlflow tracker cannot start (FileExistsError" in err[0] and "goes on without it" in err[0]
    cfg = tiny_config(dataroot, tmp_path, name="strict", log_to="mlflow", log_to_strict=True, max_steps=2)
    with pytest.raises(CycleGANError, match=r"cannot start .*: fix it, or leave mlflow out of") as info:
        train(cfg, show_progress=False, report=False)
    assert "\n" not in str(info.value)


def test_an_unknown_or_missing_tracker_is_one_line_before_any_folder_is_made(
    dataroot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for bad in ("tensorbord", "none,wandb", "wandb,wandb", ""):
        with pytest.raises(CycleGANError, match="--log_to must be none or a comma list"):
            tiny_config(dataroot, tmp_path, log_to=bad).validate()
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed
    with pytest.raises(CycleGANError, match=r"--log_to wandb needs the wandb package: pip install"):
        train(tiny_config(dataroot, tmp_path, log_to="tensorboard, wandb"), show_progress=False)
    assert not (tmp_path / "run").exists()
    code = main(["train", "--dataroot", str(dataroot), "--checkpoints_dir", str(tmp_path), "--log_to", "tb"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--log_to must be" in err


def test_the_watched_report_reloads_in_a_browser_when_training_rewrites_it(tmp_path: Path) -> None:
    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver_path):
        pytest.skip("needs chromium and chromedriver (Debian: apt install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.support.ui import WebDriverWait

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    tiny_config(tmp_path, tmp_path).save(run_dir / "config.json")
    write_report(run_dir, status=RunStatus("training", 5, 20, 1, 4, 2.5, 6.0))
    server = watch_server(run_dir, 0, poll_seconds=0.2)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        driver.get(f"{url}/")
        status = driver.find_element("css selector", ".status").text
        assert "Training" in status and "step 5 of 20 (25%)" in status and "about 6 s left" in status
        write_report(run_dir, status=RunStatus("finished", 20, 20, 4, 4, 2.5))  # as training does
        WebDriverWait(driver, 10).until(
            lambda d: "step 20 of 20" in d.find_element("css selector", ".status").text
        )
        assert "Finished" in driver.find_element("css selector", ".status").text
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()
    with pytest.raises(urllib.error.URLError):  # stopped: nothing listens any more
        urllib.request.urlopen(f"{url}/version", timeout=2)


def test_the_watch_server_serves_the_report_alone_and_bad_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    tiny_config(tmp_path, tmp_path).save(run_dir / "config.json")
    server = watch_server(run_dir, 0)  # no report yet: it writes one
    assert (run_dir / "report.html").is_file()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with urllib.request.urlopen(f"{url}/version", timeout=5) as answer:
            before = answer.read()
        write_report(run_dir)
        with urllib.request.urlopen(f"{url}/version", timeout=5) as answer:
            assert answer.read() != before
        for path in ("/config.json", "/../config.json", "/report.html"):
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(f"{url}{path}", timeout=5)
        with pytest.raises(CycleGANError, match=r"cannot listen on 127\.0\.0\.1") as info:
            watch_server(run_dir, server.server_address[1])
        assert "\n" not in str(info.value)
    finally:
        server.shutdown()
        server.server_close()
    assert main(["report", str(tmp_path / "nothing"), "--watch", "--port", "0"]) == 2
    assert main(["report", str(run_dir), "--watch", "--out", str(tmp_path / "x.html")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "run folder not found" in err[0] and "leave out --out" in err[1]
