"""What a run prints: the summary block, the env-step progress bar, the scoped silencing.

The summary block is read from a short real Atari run (real ALE game, real
MLflow SQLite store) and checked field by field against what MLflow logged;
the progress bar from a real Lightning fit and its resume; the silencing by
showing that the same known warning, and a user's own, still come through
outside (and, for a user's, inside) the silenced calls.
"""

import dataclasses
import logging
import math
import re
import shlex
import warnings
from pathlib import Path

import pytest
from scripts import load_script

from torchrl_eaudeqn.checkpointing import latest_checkpoint
from torchrl_eaudeqn.config import load_config
from torchrl_eaudeqn.console import (
    KNOWN_LOG_LINES,
    EvalStats,
    compare_with_random,
    count_selections,
    human_count,
    human_percent,
    human_value,
    known_noise_silenced,
    layer_labels,
)

ROOT = Path(__file__).resolve().parents[1]
IDS_LEN = "Your `IterableDataset` has `__len__` defined. In combination with multi-process ..."


# ---------------------------------------------------------------- pure formatting
def test_numbers_for_a_person():
    assert [human_count(x) for x in (0, 999, 1000, 17_000, 50_000, 1_250_000)] == [
        "0", "999", "1.00k", "17.0k", "50.0k", "1.25M",
    ]  # fmt: skip
    assert human_percent(0.7581) == "75.8%" and human_value(1.7e4) == "17,000"
    assert human_value(-203.94) == "-204" and human_value(757.5) == "758"


def test_verdict_rule_is_two_standard_errors_of_the_difference():
    final, rand = EvalStats(100.0, 50.0, 10), EvalStats(0.0, 0.0, 10)
    se = math.sqrt(50.0**2 / 10)  # 15.8: the difference 100 is 6.3 SE
    v = compare_with_random(final, rand)
    assert v.above and v.se == pytest.approx(se) and v.diff == 100.0
    assert v.text == "above random (diff 100 > 2 SE = 31.6)"
    # Just inside 2 SE: not clearly above; a single episode gives no SE at all.
    close = compare_with_random(EvalStats(2 * se, 50.0, 10), rand)
    assert not close.above and close.text.startswith("not clearly above random (diff 31.6 <=")
    one = compare_with_random(EvalStats.from_population(900.0, 0.0, 1), rand)
    assert not one.above and "needs >= 2 episodes" in one.text
    # The recipes log np.std (ddof=0); the rule uses the sample std (ddof=1).
    assert EvalStats.from_population(1.0, 2.0, 5).std == pytest.approx(2.0 * math.sqrt(5 / 4))


def test_selection_counts_and_layer_labels():
    sac = [{"actor_selected": 1, "critic_selected": 0, "actor_speeds_before": [0, 0.1],
            "critic_speeds_before": [0, 0.1]}] * 3  # fmt: skip
    actor, critic = count_selections(sac)
    assert (actor.total, actor.pruned_wins, critic.pruned_wins) == (3, 3, 0)
    (poly,) = count_selections([{"event": "prune", "sparsity": [0.1]}, {"event": "target"}])
    assert poly.pruned_wins is None and "no selection" in str(poly)
    # A bounded history (the updater keeps its newest history_len entries): the
    # run's total stays whole, the wins are said to be over the kept entries.
    dqn = [{"selected": 1, "speeds_before": [0.0, 0.1]}, {"selected": 0, "speeds_before": [0, 0.1]}]
    (kept,) = count_selections(dqn * 2, total=1500)
    assert (kept.total, kept.pruned_wins, kept.counted) == (1500, 2, 4)
    assert str(kept) == "1500, won by a pruned member 2 of the newest 4"
    (whole,) = count_selections(dqn * 2, total=4)
    assert whole.counted is None and str(whole) == "4, won by a pruned member 2"
    (poly,) = count_selections([{"event": "target"}] * 3, total=9)
    assert (
        str(poly)
        == "3 in the newest 3 updater entries (one network pruned on a schedule: no selection)"
    )
    names = ["1.weight", "3.weight", "5.weight", "8.weight", "10.weight"]
    assert layer_labels(names, ["conv"] * 3 + ["fc"] * 2) == [
        "conv1", "conv2", "conv3", "fc1", "head",
    ]  # fmt: skip


# ---------------------------------------------------------------- the summary block
def _field(lines, label):
    hits = [line[18:] for line in lines if line.startswith(label.ljust(18))]
    assert len(hits) == 1, (label, lines)
    return hits[0]


def test_summary_block_fields_match_what_mlflow_logged(tmp_path, capsys, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # the run's ./mlruns artifacts stay in tmp_path
    store = f"sqlite:///{tmp_path}/mlflow.db"
    main = load_script(ROOT / "recipes" / "atari_dqn.py", "atari_summary").main
    args = [
        "--config", str(ROOT / "configs/atari/quick.yaml"), "game=Breakout", "env_steps=160",
        "learning_starts=64", "target_period=32", "buffer_size=1000", "batch_size=8",
        "eval_every=80", "eval_episodes=2", "eval_max_steps=40", "checkpoint_every=80",
        "log_every=40", f"tracking_uri={store}", f"checkpoint_dir={tmp_path}/ckpt",
        "progress_bar=false", "register_name=summary-breakout", "register_format=dense",
        "threads=2",
    ]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err[-3000:]
    out = capsys.readouterr().out.splitlines()
    start = out.index("== EauDeQN on Breakout: done ==")
    lines = out[start + 1 :]
    assert len(lines) == 11, lines  # one block, nothing after it

    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("eaudeqn-atari").experiment_id])
    rid, m = run.info.run_id, run.data.metrics
    took = r"(\d+s|\d+m\d\ds|\d+h\d\dm)"
    assert re.fullmatch(rf"160 in {took}; training {took} at [\d.,]+ steps/s",
                        _field(lines, "env steps"))  # fmt: skip

    final = EvalStats.from_population(m["eval/score_mean"], m["eval/score_std"], 2)
    rand = EvalStats.from_population(
        m["eval_random/score_mean"], m["eval_random/score_std"], m["eval_random/episodes"]
    )
    assert _field(lines, "final eval").startswith(f"{final}: the final agent")
    assert str(final).endswith("(2 episodes)")
    assert _field(lines, "random policy") == f"{rand} -> {compare_with_random(final, rand).text}"

    hist = sorted(client.get_metric_history(rid, "eval/score_mean"), key=lambda p: p.step)
    assert [p.step for p in hist] == [80, 160]
    assert _field(lines, "eval history") == " | ".join(
        f"{p.step}: {human_value(p.value)}" for p in hist
    )
    assert _field(lines, "training").startswith("episode score first/last tenth of the steps ")

    version = client.get_model_version_by_alias("summary-breakout", "final")
    tags = version.tags
    sparsity = _field(lines, "sparsity")
    assert sparsity.startswith(
        f"{human_percent(float(tags['sparsity_prunable']))} of weights "
        f"({human_percent(float(tags['sparsity_overall']))} of all parameters); "
    )
    per_layer = [float(tags[f"sparsity.{n}.weight"]) for n in (1, 3, 5, 8, 10)]
    labels = ["conv1", "conv2", "conv3", "fc1", "head"]
    assert sparsity.endswith(
        ", ".join(f"{label} {human_percent(s)}" for label, s in zip(labels, per_layer, strict=True))
    )

    updates = client.get_metric_history(rid, "target_update/selected")
    got = re.fullmatch(r"(\d+), won by a pruned member (\d+)", _field(lines, "target updates"))
    assert got and int(got[1]) == len(updates) >= 2 and 0 <= int(got[2]) <= len(updates)

    uri = f"models:/summary-breakout/{version.version}"
    assert _field(lines, "model") == f"{uri} (alias @final)"
    cmd = shlex.split(_field(lines, "evaluate"))
    assert Path(cmd[1]).name == "evaluate.py" and Path(cmd[1]).is_file()
    # The command's flags are evaluate.py's own, and name this model and this store.
    play = load_script(ROOT / "recipes" / "evaluate.py", "evaluate_summary").parse_args(cmd[2:])
    assert (play.model, play.game, play.episodes, play.tracking_uri) == (uri, "Breakout", 2, store)

    plot = Path(_field(lines, "plot"))
    assert plot.name == "score_sparsity.png" and plot.read_bytes()[:4] == b"\x89PNG"
    ui = _field(lines, "MLflow UI")
    assert f"--backend-store-uri {store}, then http://127.0.0.1:5000/#/experiments/" in ui
    assert ui.endswith(f"/{run.info.experiment_id}/runs/{rid}")

    # The silencing ended with the run: the same known warning shows again.
    with pytest.warns(UserWarning, match="IterableDataset"):
        warnings.warn(IDS_LEN, UserWarning, stacklevel=1)
    assert all(not logging.getLogger(name).filters for name in KNOWN_LOG_LINES)


# ---------------------------------------------------------------- the progress bar
def test_progress_bar_counts_env_steps_of_the_budget_and_resumes(tmp_path, capsys):
    from torchrl_eaudeqn.control import ControlConfig, ControlDQNModule
    from torchrl_eaudeqn.lightning import EnvStepProgressBar, TargetSelectionCallback
    from torchrl_eaudeqn.recipe import make_trainer

    cfg = load_config(ControlConfig, overrides=[
        "task=CartPole-v1", "width=8", "num_members=2", "env_steps=1000", "learning_starts=800",
        "target_period=100", "batch_size=8", "buffer_size=2000", "eval_every=500",
        "eval_episodes=1", "eval_max_steps=50", "eval_random_baseline=false", "log_every=100",
        "checkpoint_every=500", "threads=1",
    ])  # fmt: skip

    def fit(cfg, ckpt=None):
        module = ControlDQNModule(cfg)
        cbs = [TargetSelectionCallback(module.updater)]
        trainer = make_trainer(cfg, cbs, tmp_path / "ckpt", description="CartPole")
        trainer.fit(module, ckpt_path=ckpt)
        (bar,) = [c for c in trainer.callbacks if isinstance(c, EnvStepProgressBar)]
        text = capsys.readouterr().out.replace("\r", "\n")
        return bar.train_progress_bar, [s for s in text.splitlines() if "CartPole" in s]

    tq, shown = fit(cfg)
    assert (tq.total, tq.initial, tq.n, tq.unit, tq.unit_scale) == (1000, 0, 1000, " steps", True)
    assert shown[0].startswith("CartPole:   0%|") and "| 0/1.00k [" in shown[0]
    # e.g. "CartPole: 100%|███| 1.00k/1.00k [00:09<00:00, 130 steps/s, return 21
    #       | eval 9 | 19.0% sparse, member 1]"
    num = r"-?[\d.,]+k?"
    assert re.search(
        rf"CartPole: 100%\|.*\| 1\.00k/1\.00k \[[\d:]+<[\d:]+, {num} steps/s, return {num} "
        rf"\| eval {num} \| {num}% sparse, member \d\]$",
        shown[-1],
    ), shown[-1]
    assert not any(re.search(r"\d e[+-]\d|\d+ it/s|it\]", s) for s in shown)

    # Resumed with a larger budget: the bar starts at the checkpoint's step.
    ckpt = latest_checkpoint(tmp_path / "ckpt")
    tq, shown = fit(dataclasses.replace(cfg, env_steps=1200), str(ckpt))
    assert (tq.total, tq.initial, tq.n) == (1200, 1000, 1200)
    assert "| 1.00k/1.20k [" in shown[0] and "| 1.20k/1.20k [" in shown[-1]


# ---------------------------------------------------------------- scoped silencing
def test_known_noise_is_silenced_inside_the_block_only():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warnings.warn("a user's warning before", UserWarning, stacklevel=1)
        with known_noise_silenced():
            warnings.warn(IDS_LEN, UserWarning, stacklevel=1)
            warnings.warn("a user's warning inside", UserWarning, stacklevel=1)
        warnings.warn(IDS_LEN, UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == [
        "a user's warning before", "a user's warning inside", IDS_LEN,
    ]  # fmt: skip

    got = []

    class Keep(logging.Handler):
        def emit(self, record):
            got.append(record.getMessage())

    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    handler, level = Keep(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with known_noise_silenced():
            log.info("💡 Tip: For seamless cloud logging ...")
            log.info("GPU available: False, used: False")
        log.info("💡 Tip: outside")
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert got == ["GPU available: False, used: False", "💡 Tip: outside"]


def test_mujoco_deprecation_is_silenced_for_the_projects_envs_only(capfd):
    mujoco = pytest.importorskip("mujoco")
    import gymnasium as gym

    from torchrl_eaudeqn.envs import make_continuous_env

    make_continuous_env("HalfCheetah-v5", seed=0).close()
    assert "settotalmass" not in capfd.readouterr().err
    gym.make("HalfCheetah-v5").close()  # a user's own env: MuJoCo's warning as usual
    assert "settotalmass" in capfd.readouterr().err
    assert mujoco.get_mju_user_warning() is None


def test_locations_are_absolute_and_carry_no_credentials(tmp_path, monkeypatch):
    from torchrl_eaudeqn.tracking.summary import evaluate_command, local_artifact_path, ui_hint

    monkeypatch.chdir(tmp_path)
    cmd = evaluate_command("models:/m/3", "sqlite:///mlflow.db", ["--game", "Pong"])
    assert shlex.split(cmd)[-2:] == ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    secret = "http://alice:s3cret@mlflow.example:5000"
    artifact = local_artifact_path("https://alice:s3cret@store/1/ab/artifacts", "p.png")
    for text in (evaluate_command("models:/m/3", secret, []), ui_hint(secret, "1", "ab"), artifact):
        assert "s3cret" not in text and "alice" not in text and "***" in text, text
    assert ui_hint(secret, "1", "ab") == "http://***@mlflow.example:5000/#/experiments/1/runs/ab"
    assert str(EvalStats.from_population(900.0, 0.0, 1)) == "900 (1 episode)"
