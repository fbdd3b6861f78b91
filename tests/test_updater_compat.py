"""Updater checkpoints written by an older version (``tests/data/updaters``) still restore."""

from __future__ import annotations

import importlib.util
import io
import pathlib

import pytest
import torch

DATA = pathlib.Path(__file__).parent / "data" / "updaters"
_spec = importlib.util.spec_from_file_location("make_fixture", DATA / "make_fixture.py")
fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixture)


@pytest.fixture(scope="module")
def states():
    return torch.load(DATA / "updaters_v1.pt", weights_only=True)


@pytest.mark.parametrize("name", fixture.NAMES)
def test_v1_state_dict_loads_with_same_history(states, name):
    old = states[name]
    up = fixture.build(name)
    up.load_state_dict(old)
    assert up.num_steps == old["num_steps"]
    assert len(up.history) == len(old["history"]) > 0
    for rec, ref in zip(up.history, old["history"], strict=True):
        # Legacy dict access is what consumers use: the record must keep it.
        for key, value in ref.items():
            assert key in rec
            assert rec[key] == value
            assert rec.get(key) == value
    # The restored state saves again in a weights_only-loadable form.
    buf = io.BytesIO()
    torch.save(up.state_dict(), buf)
    buf.seek(0)
    torch.load(buf, weights_only=True)
