"""Play a registered agent (Atari Q-network or MuJoCo SAC actor) and report its returns.

Loads a Q-network from the MLflow model registry (``models:/NAME@ALIAS``), builds
the game with the training preprocessing (Dopamine style: sticky actions 0.25,
frame skip 4 with max-pool, 84x84 grayscale, 4 stacked frames, zero padding at
the episode start), and plays epsilon-greedy episodes (epsilon 0.01, as in the
paper's evaluation). Prints the mean and std of the raw (unclipped) episode
scores and the sparsity tags of the model version. Both stored forms play the
same way: a dense (masked) network and the compact one of
``register_network(..., compact=True)`` (sparse layers in CSR form).

    python recipes/evaluate.py --model models:/Pong-eaudeqn-small@latest --game Pong \\
        --episodes 5 --video pong.gif

Two env backends give the same observations: ``torchrl`` (default,
``torchrl_eaudeqn.envs.make_atari_env``, the training env) and ``gymnasium``
(plain Gymnasium wrappers with the same settings, no TorchRL). The video shows
the emulator's RGB screen of the first episode.

A registered SAC actor (kind ``sac_actor``, from ``recipes/mujoco_sac.py``)
plays its continuous-control task deterministically (the mean action), on
the plain Gymnasium env with float32 observations as in training. The task is
``--env`` or, when omitted, the version's ``env`` tag; ``--max-steps``
defaults to the task's registered cap (1000 for MuJoCo). The video renders
MuJoCo offscreen (``MUJOCO_GL=egl`` unless set).

    python recipes/evaluate.py --model models:/eaudesac-HalfCheetah-v5-eaudesac-256x2@final \
        --episodes 10 --video cheetah.mp4

Only a ``torch.export`` (pt2) model without bundled code is loaded, and
MLflow checks its archive for pickled records first: a model saved with
pickle or with code is refused (one line, exit status 2) unless
``--allow-pickle`` is given, because loading it can run anything its author
wrote (docs/security.md).

Exit status: 0 on success, 2 on a usage error (bad arguments, unknown game,
unreachable store, missing model or alias, a model that needs unpickling),
each reported on one line.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RL_WARNINGS", "False")

# Light modules (no torch, no MLflow): the arguments are checked before anything heavy loads.
from torchrl_eaudeqn.config import SEED_MAX, ConfigError  # noqa: E402
from torchrl_eaudeqn.credentials import resolve_env_uri  # noqa: E402
from torchrl_eaudeqn.validation import (  # noqa: E402
    MODELS_URI_RE,
    OneLineParser,
    check_alias,
    check_model_name,
    check_tracking_uri,
)

PROG = "evaluate.py"
VIDEO_SUFFIXES = (".gif", ".mp4")


class UsageError(Exception):
    """A user error: reported on one line, exit status 2."""


class _Parser(OneLineParser):
    prefix = f"{PROG}: "  # one line, no usage block


def _check_model_uri(p: argparse.ArgumentParser, uri: str) -> None:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` with names MLflow accepts."""
    match = MODELS_URI_RE.match(uri)
    if match is None:
        p.error(f"--model: expected a registry URI models:/NAME@ALIAS or models:/NAME/VERSION, "
                f"got {uri!r}")  # fmt: skip
    try:
        check_model_name(match["name"], field="--model")
        if match["alias"] is not None:
            check_alias(match["alias"], field="--model")
    except ConfigError as err:
        hint = ""
        if match["alias"] and match["alias"][1:].isdigit():
            hint = f"; version {match['alias'][1:]} is models:/{match['name']}/{match['alias'][1:]}"
        p.error(f"{err}{hint}")


def _check_store(p: argparse.ArgumentParser, tracking_uri: str | None) -> None:
    """The store to read must exist: looking a model up must not create an empty one."""
    if tracking_uri is not None and not tracking_uri.strip():
        p.error("--tracking-uri: expected an MLflow tracking URI, got ''")
    given = tracking_uri if tracking_uri is not None else os.environ.get("MLFLOW_TRACKING_URI")
    if not given:
        return  # MLflow's default store: resolved (and checked) once MLflow is loaded
    try:
        check_tracking_uri(resolve_env_uri(given, "--tracking-uri"), must_exist=True)
    except ValueError as err:
        text = str(err)
        p.error(text if text.startswith("--tracking-uri") else f"--tracking-uri: {text}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = _Parser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="registered model: models:/NAME@ALIAS")
    p.add_argument("--game", default=None, help="Atari game of a Q-network, e.g. Pong")
    p.add_argument("--env", default=None, help="task of a SAC actor (default: its 'env' tag)")
    p.add_argument("--episodes", type=int, default=10, help="episodes to play (>= 1)")
    p.add_argument("--epsilon", type=float, default=0.01, help="random-action probability")
    p.add_argument("--seed", type=int, default=0, help="seed of the env and of epsilon")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: MLflow's)")
    p.add_argument(
        "--max-steps", type=int, default=None, help="step cap per episode (Atari: 27000)"
    )
    p.add_argument("--video", default=None, help="save the first episode to PATH.gif or .mp4")
    p.add_argument("--video-frames", type=int, default=1000, help="most frames in the video")
    p.add_argument("--fps", type=int, default=15, help="video frame rate (15 = real time)")
    p.add_argument("--backend", choices=("torchrl", "gymnasium"), default="torchrl")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="also load a model saved with pickle or with bundled code: it can run anything "
        "its author wrote, so only for a model you trust (docs/security.md)",
    )
    args = p.parse_args(argv)
    # Checked before the slow imports, so that a typo fails in well under a second.
    if args.episodes < 1:
        p.error(f"--episodes: must be >= 1, got {args.episodes}")
    if not (math.isfinite(args.epsilon) and 0.0 <= args.epsilon <= 1.0):
        p.error(f"--epsilon: must be a number in [0, 1], got {args.epsilon}")
    if not 0 <= args.seed <= SEED_MAX:
        p.error(f"--seed: must be in 0..{SEED_MAX} (NumPy's seeds), got {args.seed}")
    if args.max_steps is not None and args.max_steps < 1:
        p.error(f"--max-steps: must be >= 1, got {args.max_steps}")
    if args.video_frames < 1:
        p.error(f"--video-frames: must be >= 1, got {args.video_frames}")
    if args.fps < 1:
        p.error(f"--fps: must be >= 1, got {args.fps}")
    if args.video is not None:
        video = Path(args.video)
        if video.suffix.lower() not in VIDEO_SUFFIXES:
            p.error(f"--video: must end with .gif or .mp4, got {args.video!r}")
        if not video.resolve().parent.is_dir():
            p.error(f"--video: directory {video.resolve().parent} does not exist")
    for flag, value, example in (("--game", args.game, "Pong"), ("--env", args.env, "Hopper-v5")):
        if value is not None and not value.strip():
            p.error(f"{flag}: expected a task name such as {example}, got ''")
    if args.game is not None and args.env is not None:
        p.error("--game, --env: give --game (a Q-network's Atari game) or --env (a SAC actor's "
                "task), not both")  # fmt: skip
    _check_model_uri(p, args.model)
    try:
        _check_task(args)
    except UsageError as err:
        p.error(str(err))
    _check_store(p, args.tracking_uri)
    return args


def _check_task(args: argparse.Namespace) -> None:
    """The task given on the command line (Gymnasium and ALE only: no torch yet)."""
    if args.game is not None:
        args.game = resolve_game(args.game)
    if args.env is not None:
        from torchrl_eaudeqn.tasks import resolve_continuous_env

        try:
            resolve_continuous_env(args.env)
        except ValueError as err:
            raise UsageError(f"--env: {err}") from None


# --------------------------------------------------------------------------- game
def resolve_game(game: str) -> str:
    """'pong', 'Pong' or 'ALE/Pong-v5' -> 'Pong' (UsageError for an unknown game)."""
    from torchrl_eaudeqn.tasks import resolve_atari_game

    try:
        return resolve_atari_game(game)
    except ValueError as err:
        raise UsageError(f"--game: {err}") from None


# --------------------------------------------------------------------------- main
# --------------------------------------------------------------------------- SAC actors
#: Registry kind of the deterministic SAC actors registered by recipes/mujoco_sac.py.
SAC_ACTOR_KIND = "sac_actor"


def setup_actor(args: argparse.Namespace, tags: dict[str, str], tracking_uri: str):
    """(model, task) for a registered SAC actor; UsageError/ValueError on a mismatch."""
    import torch

    from torchrl_eaudeqn.envs.evaluation import ContinuousTask
    from torchrl_eaudeqn.tasks import resolve_continuous_env
    from torchrl_eaudeqn.tracking.loading import load_registered

    if args.game is not None:
        raise UsageError(f"{args.model} is a SAC actor: give its task with --env, not --game")
    env_id = args.env or tags.get("env")
    if not env_id:
        raise UsageError(f"{args.model} has no 'env' tag: give the task with --env")
    resolve_continuous_env(env_id)
    model = load_registered(args.model, tracking_uri=tracking_uri, allow_pickle=args.allow_pickle)
    task = ContinuousTask(env_id, args.seed, args.max_steps, record=args.video is not None)
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, task.obs_dim))
    except Exception as err:  # noqa: BLE001 - an exported graph raises many types on bad shapes
        task.close()
        raise UsageError(
            f"{args.model} does not take {env_id}'s observations ({task.obs_dim} values): "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from None
    if tuple(out.shape) != (1, task.action_dim):
        task.close()
        raise UsageError(
            f"{args.model} outputs shape {tuple(out.shape)} for one observation, but "
            f"{env_id} has {task.action_dim} action dimensions"
        )
    return model, task


def play_actor_and_report(args, tags, tracking_uri, model, task, start: float) -> int:
    from torchrl_eaudeqn.credentials import redact_uri
    from torchrl_eaudeqn.envs.evaluation import play_actor, save_video
    from torchrl_eaudeqn.tracking.describe import describe_tags

    print(
        f"model: {args.model} (version {tags.get('version')}, run {tags.get('run_id')}, "
        f"store {redact_uri(tracking_uri)})"
    )
    print(
        f"env: {task.env_id} via {task.backend}, cap {task.max_steps} steps; deterministic "
        f"actor (mean action), seed {args.seed}"
    )
    try:
        returns, steps, frames = play_actor(
            model, task, args.episodes, args.video_frames if args.video else 0
        )
    finally:
        task.close()
    mean = sum(returns) / len(returns)
    std = math.sqrt(sum((r - mean) ** 2 for r in returns) / len(returns))
    print(f"return: mean {mean:.2f} std {std:.2f} over {len(returns)} episodes")
    print(f"steps: {sum(steps)} in total, {sum(steps) / len(steps):.1f} per episode")
    for line in describe_tags(tags):
        print(line)
    if args.video:
        path = Path(args.video)
        save_video(path, frames, args.fps)
        print(f"video: {path} ({len(frames)} frames of episode 1 from {task.video_source})")
    print(f"time: {time.perf_counter() - start:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    from torchrl_eaudeqn.credentials import redact_text, redact_uri

    try:
        game_name = args.game  # checked and canonical (parse_args)
        import torch

        from torchrl_eaudeqn.envs.evaluation import (
            GymnasiumGame,
            TorchRLGame,
            play_q_network,
            save_video,
        )
        from torchrl_eaudeqn.tracking.describe import describe_tags
        from torchrl_eaudeqn.tracking.loading import get_version_tags, load_registered
        from torchrl_eaudeqn.tracking.registry import KIND_TAG, resolve_tracking_uri

        tracking_uri = resolve_tracking_uri(args.tracking_uri)
        tags = get_version_tags(args.model, tracking_uri=tracking_uri)
        kind = tags.get(KIND_TAG, "q_network")
        if kind == SAC_ACTOR_KIND:
            actor = setup_actor(args, tags, tracking_uri)
        elif kind != "q_network":
            raise UsageError(
                f"{args.model} is a {kind!r} model; evaluate.py plays Q-networks and SAC actors"
            )
        else:
            actor = None
            if game_name is None:
                raise UsageError("--game is required to play a Q-network (e.g. --game Pong)")
            args.max_steps = args.max_steps or 27_000
            model = load_registered(
                args.model, tracking_uri=tracking_uri, allow_pickle=args.allow_pickle
            )
            backend = TorchRLGame if args.backend == "torchrl" else GymnasiumGame
            game = backend(game_name, args.seed, args.max_steps, record=args.video is not None)
            # A blank observation: resetting the game here would shift the seeded episodes.
            try:
                with torch.no_grad():
                    out = model(torch.zeros(1, 4, 84, 84, dtype=torch.uint8))
            except Exception as err:  # noqa: BLE001 - a graph raises many types on bad inputs
                game.close()
                first = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise UsageError(
                    f"{args.model} does not take Atari observations (4 x 84x84 uint8): {first}"
                ) from None
            if out.shape != (1, game.n_actions):
                raise UsageError(
                    f"{args.model} outputs shape {tuple(out.shape)} for one observation, but "
                    f"{game_name} has {game.n_actions} actions"
                )
    except (UsageError, ValueError) as err:
        print(f"{PROG}: error: {redact_text(str(err))}", file=sys.stderr)
        return 2
    if actor is not None:
        return play_actor_and_report(args, tags, tracking_uri, *actor, start)

    print(
        f"model: {args.model} (version {tags.get('version')}, run {tags.get('run_id')}, "
        f"store {redact_uri(tracking_uri)})"
    )
    print(
        f"env: ALE/{game_name}-v5 via {game.backend}, sticky actions 0.25, frame skip 4, "
        f"4 x 84x84 frames, cap {args.max_steps} steps; epsilon {args.epsilon:g}, seed {args.seed}"
    )
    video_frames = args.video_frames if args.video else 0
    try:
        scores, steps, _, frames = play_q_network(
            model, game, args.episodes, args.epsilon, args.seed, video_frames
        )
    finally:
        game.close()
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
    print(f"score: mean {mean:.2f} std {std:.2f} over {len(scores)} episodes (raw game score)")
    print(f"steps: {sum(steps)} in total, {sum(steps) / len(steps):.1f} per episode")
    for line in describe_tags(tags):
        print(line)
    if args.video:
        path = Path(args.video)
        save_video(path, frames, args.fps)
        print(f"video: {path} ({len(frames)} frames of episode 1 from {game.video_source})")
    print(f"time: {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
