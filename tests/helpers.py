"""Shared test helpers: drive run.py through Hydra as a user does, read and fabricate run folders,
compose configs, write image trees."""
import atexit
import contextlib
import json
import multiprocessing
import os
import re
import runpy
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# one epoch of 2 training and 2 validation steps, no logger
QUICK = ("trainer=debug", "logger=none")
# two epochs of 3 steps with an EMA of the weights and a CSV log: the run that tests interrupt, resume
# and extend (tests/conftest.py: two_epoch_run)
TWO_EPOCHS = (
    "trainer.max_epochs=2", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false", "logger=csv", "data.batch_size=64", "seed=3", "ema_decay=0.5",
)


# What run.py imports before it reads its arguments (~7 s of a 2-core machine's time per process, more
# than a debug run's training): a fork server imports it once per test process and forks each run from
# it. The forked run is a process of its own (pid, signals, exit code, stdout and stderr files) that runs
# run.py as __main__ with its argv, cwd and environment; only the import is shared.
PRELOADED = ["torch", "torchvision", "lightning", "hydra", "omegaconf", "attn_zoo.train"]
# environment variables that torch or its libraries read at import: a run given one gets a fresh interpreter
IMPORT_TIME_ENV = ("TORCH", "PYTORCH", "OMP_", "MKL_", "CUDA_", "CUBLAS", "NCCL", "KMP_")
_FORK_SERVER = multiprocessing.get_context("forkserver")
_FORK_SERVER.set_forkserver_preload(PRELOADED)


def _exit_code(code) -> int:
    """The exit status of ``sys.exit(code)``, as the interpreter sets it."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _run_py_in_forked_child(argv: list[str], cwd: str, env: dict, stdout: str, stderr: str) -> None:
    """The forked process: run.py as __main__, then the exit handlers, as the interpreter runs them."""
    for fd, path in ((1, stdout), (2, stderr)):
        handle = os.open(path, os.O_WRONLY | os.O_TRUNC)
        os.dup2(handle, fd)
        os.close(handle)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = argv
    # the start method a fresh interpreter has, not the fork server's: the run's loader workers then are
    # its own children, as in `python run.py`, and end when it is killed (forked by the fork server,
    # they outlived a SIGKILLed run and every test session, ~2.8 GB of idle processes each time)
    multiprocessing.set_start_method(None, force=True)
    try:
        runpy.run_path(argv[0], run_name="__main__")
        code = 0
    except SystemExit as stop:
        code = _exit_code(stop.code)
    except BaseException:
        traceback.print_exc()
        code = 1
    # the interpreter's exit order: threads' exit hooks and joins (an executor tells its workers to stop),
    # then atexit (multiprocessing joins its children)
    threading._shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class RunPy:
    """``python run.py *overrides`` started in ``cwd``, forked from the fork server (see PRELOADED)
    or in a fresh interpreter: when asked (``fresh``) or given an ``env`` key that torch reads at import."""

    def __init__(self, *overrides: str, cwd: Path, env: dict | None = None, fresh: bool = False):
        argv, environment = [str(ROOT / "run.py"), *overrides], {**os.environ, **(env or {})}
        self._folder = tempfile.TemporaryDirectory(prefix="run_py_")
        self._streams = [Path(self._folder.name) / name for name in ("stdout", "stderr")]
        for stream in self._streams:
            stream.touch()
        self.fresh = fresh or any(key.startswith(IMPORT_TIME_ENV) for key in (env or {}))
        if self.fresh:
            with self._streams[0].open("w") as stdout, self._streams[1].open("w") as stderr:
                self._process = subprocess.Popen([sys.executable, *argv], cwd=cwd, env=environment,
                                                 stdout=stdout, stderr=stderr)
            return
        self._process = _FORK_SERVER.Process(
            target=_run_py_in_forked_child, args=(argv, str(cwd), environment, *map(str, self._streams)))
        self._process.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    def poll(self) -> int | None:
        if isinstance(self._process, subprocess.Popen):
            return self._process.poll()
        return self._process.exitcode

    def send_signal(self, signum: int) -> None:
        """As Popen.send_signal: nothing once the process has ended."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def wait(self, timeout: float) -> subprocess.CompletedProcess:
        """Its exit code, stdout and stderr once it ends (killed and TimeoutExpired after ``timeout`` s)."""
        if isinstance(self._process, subprocess.Popen):
            try:
                returncode = self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                raise
        else:
            self._process.join(timeout)
            if self._process.exitcode is None:
                self._process.kill()
                raise subprocess.TimeoutExpired(self._process.name, timeout)
            returncode = self._process.exitcode
        stdout, stderr = (stream.read_text(errors="replace") for stream in self._streams)
        self._folder.cleanup()
        return subprocess.CompletedProcess(["run.py"], returncode, stdout, stderr)


def run_entry_point(*overrides: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python run.py *overrides`` in ``cwd`` to its end (RunPy)."""
    return RunPy(*overrides, cwd=cwd, env=env).wait(timeout=600)


def assert_a_debug_run_completes_on_jpegs(folder: Path, tmp_path: Path, *overrides: str) -> None:
    """``trainer=debug`` on a small ResNet from the JPEG folder ``folder`` (``data=imagefolder`` at
    32 px, batch 3) with ``overrides`` (the loader) ends with ``status: completed``."""
    out = tmp_path / "run"
    completed = run_entry_point(
        *QUICK, "data=imagefolder", f"data.root={folder}", "data.image_size=32", "data.batch_size=3",
        "backbone.stem=cifar", "backbone=resnet18", *overrides, f"hydra.run.dir={out}", cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert json.loads((out / "results.json").read_text())["status"] == "completed"


def markdown_rows(text: str) -> list[list[str]]:
    """The cells of each row of the markdown tables in ``text`` (header rows included, the ``|---|``
    rule lines left out), stripped, with an escaped ``\\|`` read back as ``|``."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not set(line) <= set("|:- "):
            cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])
            rows.append([cell.strip().replace(r"\|", "|") for cell in cells])
    return rows


def relative_error(actual, expected) -> float:
    """‖actual − expected‖ / ‖expected‖ in float64: a whole tensor's error, which one element on the
    other side of a ReLU's kink cannot dominate as it does the largest-element error."""
    expected = expected.double()
    return ((actual.double() - expected).norm() / expected.norm().clamp(min=1e-30)).item()


def sweep_params(cfg) -> dict:
    """{key: [values]} as Hydra's sweeper expands a composed config's ``hydra.sweeper.params``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    overrides = parser.parse_overrides([f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()])
    return {o.key_or_group: list(o.sweep_iterator()) for o in overrides}


def signal_after_first_checkpoint(*overrides: str, out: Path, cwd: Path, signum: int, settle_s: float = 0.0,
                                  rank: int = 0) -> tuple[int, str]:
    """Start run.py into ``out`` and send ``signum`` as soon as its first ``last.ckpt`` exists
    (``settle_s`` later: a SIGKILL must not cut the write) to run.py, or under DDP to the process of
    another ``rank`` alone (Lightning starts it); returns (exit code, stderr)."""
    process = RunPy(*overrides, f"hydra.run.dir={out}", cwd=cwd)
    last, deadline = out / "checkpoints" / "last.ckpt", time.time() + 300
    while not last.is_file() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    time.sleep(settle_s)
    if rank == 0:
        process.send_signal(signum)
    else:
        os.kill(_child_of_rank(process.pid, rank), signum)
    completed = process.wait(timeout=120)
    return completed.returncode, completed.stderr


def _child_of_rank(parent: int, rank: int) -> int:
    """The pid of ``parent``'s child process whose environment says ``LOCAL_RANK=<rank>``."""
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                if f"LOCAL_RANK={rank}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                    return int(entry.name)
    raise LookupError(f"no child of {parent} with LOCAL_RANK={rank}")


# ---------------------------------------------------------------- run folders


def results(folder: Path) -> dict:
    """The results.json a run wrote into ``folder``."""
    return json.loads((folder / "results.json").read_text())


def error_lines(completed: subprocess.CompletedProcess) -> list[str]:
    """The ``error:`` lines a run printed on stderr."""
    return [line for line in completed.stderr.splitlines() if line.startswith("error:")]


def completed_run(tmp_path_factory, *overrides: str) -> Path:
    """A run of ``overrides`` completed into a new folder (for a module-scoped fixture to share)."""
    out = tmp_path_factory.mktemp("completed") / "run"
    completed = run_entry_point(*overrides, f"hydra.run.dir={out}", cwd=out.parent)
    assert completed.returncode == 0, completed.stderr[-2000:]
    return out


def copy_run(folder: Path, tmp_path: Path) -> Path:
    """A copy of the run ``folder`` at ``tmp_path/run``, for a test to rerun, resume or break."""
    return Path(shutil.copytree(folder, tmp_path / "run"))


def as_killed(folder: Path) -> None:
    """What SIGKILL after the last checkpoint leaves: results.json still says running."""
    record = results(folder)
    record["status"] = "running"
    (folder / "results.json").write_text(json.dumps(record))


def hold_lock(folder: Path, job: str = "") -> subprocess.Popen:
    """A process that holds ``folder``'s lock, as a live run does (its pid, and ``job``, written into the
    lock file); the caller kills it."""
    folder.mkdir(parents=True, exist_ok=True)
    code = (f"import fcntl, os, time; h = os.open({str(folder / '.lock')!r}, os.O_RDWR | os.O_CREAT); "
            f"fcntl.flock(h, fcntl.LOCK_EX); os.pwrite(h, b'pid %d on host{job}' % os.getpid(), 0); print('held', flush=True); "
            f"time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def fabricate_run(
    folder: Path, attention: str = "se", seed: int = 0, top1: float = 90.0, *, status: str = "completed",
    variant: str | None = None, data: str = "embedded", backbone: str = "resnet20", params: int = 1000,
    flops: int = 2_000_000, curve: list[float] | None = None, options: dict | None = None,
    settings: dict | None = None, **extra,
) -> Path:
    """A run folder as training leaves it: results.json (+ csv/metrics.csv when ``curve`` is given);
    ``settings`` sets dotted config keys (``{"backbone.placement": "pre"}``)."""
    folder.mkdir(parents=True)
    history = [{"epoch": epoch, "top1": value, "top5": value + 5} for epoch, value in enumerate(curve or [top1])]
    record = {
        "schema": 1, "status": status, "data": data, "backbone": backbone,
        "attention": attention, "attention_variant": variant or attention, "attention_options": options or {},
        "seed": seed, "top1": top1, "top5": top1 + 5, "best_top1": top1, "params": params, "flops": flops,
        "macs": flops // 2, "epochs": len(history), "history": history, "wall_time_s": 1.0,
        "config": {
            "data": {"name": data, "_target_": "attn_zoo.data.EmbeddedCIFAR10", "batch_size": 128},
            "backbone": {"name": backbone, "shortcut": "projection"},
            "attention": {"name": attention, **(options or {})},
            "optim": {"lr": 0.1}, "seed": seed, "paths": {"output_dir": str(folder)},
        },
        **extra,
    }
    if "train_images_per_s" in extra and "hardware" not in extra:  # a speed without its hardware counts for none
        record["hardware"] = [{"device": "Test CPU", "threads": 1, "processes": 1}]
    for key, value in (settings or {}).items():
        *sections, name = key.split(".")
        node = record["config"]
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = value
    (folder / "results.json").write_text(json.dumps(record))
    if curve is not None:
        (folder / "csv").mkdir()
        lines = ["epoch,step,train/loss,val/top1,val/top5"]
        for epoch, value in enumerate(curve):
            lines += [f"{epoch},{epoch * 10 + 5},2.0,,", f"{epoch},{epoch * 10 + 9},,{value / 100},{(value + 5) / 100}"]
        (folder / "csv" / "metrics.csv").write_text("\n".join(lines) + "\n")
    return folder


# ---------------------------------------------------------------- configs and image trees


def compose_run(*overrides: str, output_dir="unused"):
    """The config of a QUICK run with ``overrides``, composed in-process."""
    from attn_zoo.config import compose

    return compose([*QUICK, f"paths.output_dir={output_dir}", *overrides])


def startup_error(*overrides: str, tmp_path=None) -> str:
    """The one-line ConfigError that start-up (``train.prepare``) raises for ``overrides``."""
    import pytest

    from attn_zoo.config_check import ConfigError
    from attn_zoo.train import prepare

    cfg = compose_run(*overrides, output_dir=tmp_path or "unused")
    with pytest.raises(ConfigError) as error:
        prepare(cfg, tmp_path or ROOT / "unused")
    message = str(error.value)
    assert "\n" not in message
    return message


def image(path: Path, seed: int = 0, size: tuple[int, int] = (8, 8)) -> Path:
    """A random RGB image of ``size`` (height, width) at ``path``, in the format its suffix names."""
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def image_tree(root: Path, classes=("cat", "dog"), per_class: int = 2, size: tuple[int, int] = (8, 8),
               suffix: str = ".png") -> Path:
    """``root/{train,val}/<class>/<n><suffix>``: the layout data=imagefolder reads."""
    for split in ("train", "val"):
        for index, name in enumerate(classes):
            for number in range(per_class):
                image(root / split / name / f"{number}{suffix}", seed=index * 10 + number, size=size)
    return root



def randomised(model, seed: int = 0):
    """Every parameter and BN statistic of ``model`` random, so a key loaded into the wrong place shows.
    Norm weights (the 1-D weights) lie in [0.5, 1.5]: near 0, as the other values, they shrank what the
    first layers contribute to the output below a test's tolerance."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                values = torch.randn(tensor.shape, generator=generator) * 0.05
                if name.endswith("running_var"):
                    values = values.abs() + 0.5
                elif name.endswith("weight") and tensor.ndim == 1:
                    values = torch.rand(tensor.shape, generator=generator) + 0.5
                tensor.copy_(values)
    return model


def saved(tmp_path: Path, arch: str, seed: int = 0, **kwargs) -> tuple:
    """A randomised torchvision ``arch`` (in eval mode) and the path of its state dict saved under
    ``tmp_path``: a torchvision-format weights file, made here, never downloaded."""
    import torch
    import torchvision

    model = randomised(torchvision.models.get_model(arch, weights=None, **kwargs), seed).eval()
    path = tmp_path / f"{arch}.pt"
    torch.save(model.state_dict(), path)
    return model, str(path)

# data=imagefolder at 32x32 in the test process, two images a batch
IMAGEFOLDER = ("data=imagefolder", "data.image_size=32", "data.augment=cifar", "data.num_workers=0",
               "data.batch_size=2")
