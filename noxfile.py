"""Sessions: `nox -s tests` (default), `slow`, `reliability`, `cluster`, `lint`, `benchmarks`,
`train`, `train_mujoco`, `presets`, `cartpole`, `study`.

Every session installs the project with `constraints.txt`, which pins the
CPU-only torch that the project machines carry (no CUDA downloads).
"""

import os

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"

PY = None  # the interpreter nox runs under
ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "RL_WARNINGS": "False", "PYTHONHASHSEED": "0"}


def _install(session: nox.Session, extras: str) -> None:
    session.install("-c", "constraints.txt", "-e", f".[{extras}]")


def _with_config(posargs: list[str], default: str) -> list[str]:
    """Overrides alone (`nox -s train -- seed=1`) apply to the preset, not to bare defaults."""
    if any(a == "--config" or a.startswith("--config=") for a in posargs):
        return list(posargs)
    return ["--config", default, *posargs]


@nox.session(python=PY)
def tests(session: nox.Session) -> None:
    """Fast unit, property and smoke tests (the CI run)."""
    _install(session, "test,study,onnx")
    # Worker processes: most of a recipe test is imports, SQLite and subprocess
    # start-up. On 2 cores: 651 s serial (94cfa60), 488 s with two workers
    # (cd30d93, which also copies new MLflow stores from a template).
    workers = str(min(os.cpu_count() or 1, 4))
    default = ["-q", "-n", workers, "--dist", "worksteal"]
    session.run("pytest", *(session.posargs or default), env=ENV)


@nox.session(python=PY)
def slow(session: nox.Session) -> None:
    """Longer tests marked `slow` (real-env training runs)."""
    _install(session, "test,study")
    session.run("pytest", "-m", "slow", *(session.posargs or ["-q"]), env=ENV)


@nox.session(python=PY)
def reliability(session: nox.Session) -> None:
    """Fault injection: SIGKILL/SIGTERM + resume, corrupt checkpoints, NaN, bad configs."""
    _install(session, "test")
    session.run("pytest", "-m", "reliability", *(session.posargs or ["-q", "-s"]), env=ENV)


@nox.session(python=PY)
def cluster(session: nox.Session) -> None:
    """A study grid on a local Ray against a real `mlflow server`, with a killed, resumed run."""
    _install(session, "test,distributed")
    session.run("pytest", "-m", "cluster", *(session.posargs or ["-q", "-s"]), env=ENV)


@nox.session(python=PY)
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PY)
def benchmarks(session: nox.Session) -> None:
    """Speed measurements; write JSON to benchmarks/results and tables to docs/benchmarks.md."""
    _install(session, "test")
    for script in (
        "bench_grad_step.py",
        "bench_replay.py",
        "bench_atari_throughput.py",
        "bench_inference.py",
        "bench_sac_throughput.py",
        "bench_small_tasks.py",
    ):
        session.run("python", f"benchmarks/{script}", env=ENV)
    session.run("python", "benchmarks/bench_atari_throughput.py", "--vs-plain", env=ENV)


@nox.session(python=PY)
def train(session: nox.Session) -> None:
    """The main job: EauDeQN on Atari, quick preset (~15 min on 2 cores); args are overrides.

    `nox -s train -- --config configs/atari/eaudeqn.yaml env=Pong` runs the paper's settings.
    """
    _install(session, "recipes")
    args = _with_config(session.posargs, "configs/atari/quick.yaml")
    session.run("python", "recipes/atari_dqn.py", *args, env={**ENV, **os.environ})


@nox.session(python=PY)
def train_mujoco(session: nox.Session) -> None:
    """EauDeSAC on MuJoCo HalfCheetah-v5, quick preset (< 15 min on 2 cores); args are overrides.

    `nox -s train_mujoco -- --config configs/mujoco/eaudesac.yaml env=Hopper-v5` runs the
    standard SAC settings (1M steps).
    """
    _install(session, "recipes")
    args = _with_config(session.posargs, "configs/mujoco/quick.yaml")
    session.run("python", "recipes/mujoco_sac.py", *args, env={**ENV, **os.environ})


@nox.session(python=PY)
def presets(session: nox.Session) -> None:
    """The quick presets seed by seed (resumable): `-- --preset atari --seeds 0 1 2 3 4`."""
    _install(session, "recipes")
    args = session.posargs or ["--preset", "atari"]
    session.run("python", "benchmarks/bench_presets.py", "run", *args, env={**ENV, **os.environ})


@nox.session(python=PY)
def cartpole(session: nox.Session) -> None:
    """EauDeQN on CartPole inside TorchRL's own Trainer (a minute or two)."""
    _install(session, "recipes")
    session.run("python", "recipes/cartpole_trainer.py", *session.posargs, env=ENV)


@nox.session(python=PY)
def study(session: nox.Session) -> None:
    """The reproduction study: run the default grid (resumable), then the report.

    Arguments go to `recipes/study.py run` (e.g. `-- --workers 8 --seeds 0 1 2`);
    see docs/results.md for budgets and what the report writes.
    """
    _install(session, "study")
    env = {**ENV, **os.environ}
    grid = ["--grid", "configs/study/default.yaml"]
    session.run("python", "recipes/study.py", "run", *grid, *session.posargs, env=env)
    session.run("python", "recipes/study.py", "report", *grid, env=env)
