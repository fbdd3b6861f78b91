import dataclasses
import pathlib

import pytest

from torchrl_eaudeqn.config import AtariConfig, ConfigError, config_diff, load_config

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs" / "atari"


@pytest.mark.parametrize("name", ["eaudeqn", "polyprune", "dqn", "quick"])
def test_shipped_configs_load(name):
    cfg = load_config(AtariConfig, CONFIGS / f"{name}.yaml")
    assert cfg.method in ("eaudeqn", "polyprune", "dqn")
    assert cfg.members == (cfg.num_members if cfg.method == "eaudeqn" else 1)


def test_paper_settings_are_the_defaults_of_the_eaudeqn_config():
    cfg = load_config(AtariConfig, CONFIGS / "eaudeqn.yaml")
    assert (cfg.lr, cfg.adam_eps, cfg.batch_size, cfg.buffer_size) == (6.25e-5, 1.5e-4, 32, 10**6)
    assert (cfg.learning_starts, cfg.train_freq, cfg.target_period) == (20_000, 4, 8000)
    assert (cfg.sticky_actions, cfg.frame_skip, cfg.max_episode_steps) == (0.25, 4, 27_000)
    assert (cfg.num_members, cfg.max_speed, cfg.eps_decay_steps) == (5, 0.01, 250_000)


def test_extends_and_overrides():
    cfg = load_config(AtariConfig, CONFIGS / "polyprune.yaml", ["env=Breakout", "width=2048"])
    assert cfg.method == "polyprune" and cfg.lr == 6.25e-5 and cfg.width == "2048"
    assert cfg.model_name == "eaudeqn-Breakout-polyprune-2048"
    assert config_diff(cfg, load_config(AtariConfig, CONFIGS / "polyprune.yaml")) == {
        "env": ("Breakout", "Pong"),
        "width": ("2048", "medium"),
    }


BAD = [
    (["widht=small"], "widht: unknown config key.*did you mean 'width'"),
    (["width=huge"], "width: expected small"),
    (["width=0"], "width: expected"),
    (["method=sac"], "method: expected one of eaudeqn"),
    (["env_steps=-5"], "env_steps: must be >= 1"),
    (["env_steps=1.5"], "env_steps: expected an integer"),
    (["lr=fast"], "lr: expected a number"),
    (["gamma=1.5"], "gamma: must be <= 1"),
    (["max_speed=2"], "max_speed: must be <= 1"),
    (["num_members=0"], "num_members: must be >= 1"),
    (["reset_optimizer=maybe"], "reset_optimizer: expected true or false"),
    (["prune_end=10", "prune_start=20"], "prune_end: must be greater than prune_start"),
    (["target_period=8001"], "target_period: must be a multiple of train_freq"),
    (["speed_policy=fast"], "speed_policy: expected one of grid"),
    (["sticky_actions=-0.1"], "sticky_actions: must be >= 0"),
    (["use_vmap=sometimes"], "use_vmap: expected one of auto"),
    (["novalue"], "override 'novalue': expected key=value"),
]


@pytest.mark.parametrize("overrides,message", BAD)
def test_bad_values_give_one_line_errors_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(AtariConfig, CONFIGS / "eaudeqn.yaml", overrides)
    assert "\n" not in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(AtariConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("game: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(AtariConfig, bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(AtariConfig, listing)
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(AtariConfig, loop)


FAMILIES = ("AtariConfig", "SACConfig", "ControlConfig")


@pytest.mark.parametrize("family", FAMILIES)
def test_families_share_the_core_fields_with_the_same_checks(family):
    import dataclasses

    from torchrl_eaudeqn import config

    cls = getattr(config, family)
    assert issubclass(cls, config.RunConfig)
    core = {f.name: f.metadata for f in dataclasses.fields(config.RunConfig)}
    mine = {f.name: f.metadata for f in dataclasses.fields(cls)}
    assert core.keys() <= mine.keys()
    # The control tasks bring their own episode cap: 0 there means "the task's".
    own = {"ControlConfig": {"max_episode_steps"}}.get(family, set())
    for name, meta in core.items():
        if name in own:
            continue
        # A family may say what a field means for it; the checks are the core's.
        checks = {k: v for k, v in meta.items() if k != "doc"}
        assert {k: v for k, v in mine[name].items() if k != "doc"} == checks, name


FAMILY_ALIASES = [
    ("AtariConfig", {"game": "env"}, "Breakout"),
    ("SACConfig", {"selection_period": "target_period", "hidden": "width"}, "Hopper-v5"),
    ("ControlConfig", {"task": "env"}, "Acrobot-v1"),
]


@pytest.mark.parametrize(("family", "aliases", "task"), FAMILY_ALIASES)
def test_every_family_names_its_task_period_and_width_the_same(family, aliases, task):
    from torchrl_eaudeqn import config

    cls = getattr(config, family)
    names = {f.name for f in dataclasses.fields(cls)}
    assert {"env", "target_period", "width"} <= names and not names & set(cls.ALIASES)
    assert cls.ALIASES == aliases
    cfg = cls(env=task)
    assert cfg.tags["env"] == task and cfg.tags["width"] == str(cfg.width)
    with pytest.raises(ConfigError, match=r"^target_period: must be a multiple of train_freq"):
        cls(target_period=7, train_freq=2)


@pytest.mark.parametrize(("family", "aliases", "task"), FAMILY_ALIASES)
def test_older_names_read_as_the_current_ones_everywhere(family, aliases, task, tmp_path):
    from torchrl_eaudeqn import config
    from torchrl_eaudeqn.trainers.recipe import config_fingerprint

    cls = getattr(config, family)
    values = {"env": task, "target_period": 64, "width": 16}
    older = {old: values[new] for old, new in aliases.items()}
    current = cls(**values)
    rest = {k: v for k, v in values.items() if k not in aliases.values()}
    # keyword arguments (a checkpoint's stored config), overrides, YAML files (extended)
    by_kwargs = cls(**rest, **older)
    assert by_kwargs == current
    assert load_config(cls, overrides=[f"{k}={v}" for k, v in {**rest, **older}.items()]) == current
    (tmp_path / "base.yaml").write_text("".join(f"{k}: {v}\n" for k, v in older.items()))
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\n")
    assert load_config(cls, child, [f"{k}={v}" for k, v in rest.items()]) == current
    # attribute reads and writes
    for old, new in aliases.items():
        assert getattr(current, old) == getattr(current, new)
    old, new = next(iter(aliases.items()))
    changed = cls(**values)
    setattr(changed, old, "Other-v0" if new == "env" else 128)
    assert getattr(changed, new) == getattr(changed, old) != values[new]
    # checkpoint directories keep the names they had: same fingerprint either way
    assert config_fingerprint(by_kwargs) == config_fingerprint(current)
    with pytest.raises(AttributeError, match="no_such_field"):
        _ = current.no_such_field


@pytest.mark.parametrize(("family", "aliases", "task"), FAMILY_ALIASES)
def test_an_older_and_a_current_name_together_is_an_error_except_as_an_override(
    family, aliases, task, tmp_path
):
    from torchrl_eaudeqn import config

    cls = getattr(config, family)
    old, new = next(iter(aliases.items()))
    value = task if new == "env" else 64
    with pytest.raises(
        ConfigError, match=rf"^{old}: the older name of {new}, both given in the arguments"
    ):
        cls(**{old: value, new: value})
    both = tmp_path / "both.yaml"
    both.write_text(f"{old}: {value}\n{new}: {value}\n")
    with pytest.raises(
        ConfigError,
        match=rf"^{old}: the older name of {new}, both given in config file .*both.yaml",
    ):
        load_config(cls, both)
    # a file in one spelling, an override in the other: the override wins
    one = tmp_path / "one.yaml"
    one.write_text(f"{old}: {value}\n")
    other = "Other-v0" if new == "env" else 128
    assert getattr(load_config(cls, one, [f"{new}={other}"]), new) == other
    with pytest.raises(
        ConfigError, match=rf"^{old[:-1]}x: unknown config key .* \(did you mean '{old}'"
    ):
        load_config(cls, overrides=[f"{old[:-1]}x=1"])


def test_prune_structure_and_keep_checkpoints_are_core_fields_the_builders_use():
    import torch
    from torchrl.data import Bounded, OneHot

    from torchrl_eaudeqn import (
        EauDeQNLoss,
        EauDeSACLoss,
        MaskedEnsembleQValueActor,
        MaskedEnsembleTanhGaussianActor,
        MaskedEnsembleTwinQ,
        mlp,
    )
    from torchrl_eaudeqn.config import ControlConfig, SACConfig
    from torchrl_eaudeqn.updaters import build_sac_updater, build_updater

    actor = MaskedEnsembleQValueActor(mlp(3, 2, hidden=(8,)), 3, action_spec=OneHot(2))
    loss = EauDeQNLoss(actor)
    cfg = ControlConfig(num_members=3, prune_structure="filters", keep_checkpoints=5)
    up = build_updater(cfg, loss, torch.optim.Adam(loss.parameters()))
    assert up.structure == "filters" and cfg.keep_checkpoints == 5
    sac_actor = MaskedEnsembleTanhGaussianActor(3, Bounded(-1.0, 1.0, shape=(2,)), 3, hidden=(8,))
    sac_loss = EauDeSACLoss(sac_actor, MaskedEnsembleTwinQ(3, 2, 3, hidden=(8,)))
    scfg = SACConfig(num_members=3, prune_structure="filters")
    sup = build_sac_updater(scfg, sac_loss, torch.optim.Adam(sac_loss.parameters()))
    assert sup.structure == "filters" and sup.period == scfg.target_period
