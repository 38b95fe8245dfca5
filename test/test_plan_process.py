"""The planner in a child process: the same plans as in this process, errors, and its end."""

import io
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from conftest import process_gone
from diffusion_planner_ros.planning import load_planner
from diffusion_planner_ros.planning.plan_process import pack, PlanProcess, unpack

HOPPER = Path(__file__).resolve().parents[1] / 'models' / 'hopper'
OPTIONS = {'backend': 'eager', 'threads': 1}


def _states(count: int, seed: int = 0) -> list:
    """Hopper-like observations near the data's start states."""
    rng = np.random.default_rng(seed)
    start = np.array([1.25, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    return [start + rng.normal(0.0, 0.05, 11) for _ in range(count)]


def test_messages_round_trip_and_a_broken_one_is_refused():
    arrays = {'a': np.arange(6.0).reshape(2, 3), 'b': np.array([np.nan, -1.5])}
    header, back = unpack(io.BytesIO(pack({'x': 1, 'y': None}, arrays)).read)
    assert header == {'x': 1, 'y': None}
    assert np.array_equal(back['a'], arrays['a'])
    assert np.array_equal(back['b'], arrays['b'], equal_nan=True)
    message = pack({}, arrays)
    with pytest.raises(EOFError):
        unpack(io.BytesIO(message[:-3]).read)     # the stream ended inside a message
    with pytest.raises(EOFError):
        unpack(io.BytesIO(b'').read)
    # A header naming more than the body holds, or a body longer than its arrays: refused.
    text = b'{"arrays": [["a", [4]]]}'
    short = len(text).to_bytes(4, 'little') + text + (16).to_bytes(4, 'little') + bytes(16)
    with pytest.raises(ValueError, match='too short'):
        unpack(io.BytesIO(short).read)
    text = b'{"arrays": [["a", [1]]]}'
    long = len(text).to_bytes(4, 'little') + text + (16).to_bytes(4, 'little') + bytes(16)
    with pytest.raises(ValueError, match='past its arrays'):
        unpack(io.BytesIO(long).read)


@pytest.mark.slow
def test_the_planning_process_plans_what_this_process_plans():
    local = load_planner(HOPPER, **OPTIONS)
    local.warm_up()
    remote = PlanProcess(HOPPER, OPTIONS, anytime=True)
    try:
        assert remote.backend == 'eager' and not process_gone(remote.pid, 0.0)
        for episode in range(2):
            for state in _states(6, seed=episode):
                ours = local.plan(state, returns_to_go=3000.0)
                theirs = remote.plan(state, returns_to_go=3000.0)
                # The same seed and the same history: the same plan, to the bit.
                assert np.array_equal(ours.refined_states, theirs.refined_states)
                assert np.array_equal(ours.prior_states, theirs.prior_states)
                assert np.array_equal(ours.actions, theirs.actions)
                assert ours.refine_steps == theirs.refine_steps
                assert set(theirs.timings_ms) == set(ours.timings_ms)
            local.reset()
            remote.reset()
        # Under a budget too small for one step the child runs the bundle's floor of
        # refinement steps (it measured its steps at start), and says why.
        plan = remote.plan(_states(1)[0], budget_ms=0.0)
        assert (plan.refine_steps, plan.refine_reason) == (local.config.min_refine_steps,
                                                           'budget')
        # A runtime change reaches the child; a bad one is refused with the planner's reason
        # and changes nothing.
        remote.reconfigure(refine_steps=2)
        assert remote.plan(_states(1)[0]).refine_steps == 2
        with pytest.raises(ValueError, match='trained levels'):
            remote.reconfigure(refine_steps=500)
        assert remote.plan(_states(1)[0]).refine_steps == 2
        # Bad input is the planner's ValueError, and the child goes on serving.
        with pytest.raises(ValueError, match='NaN or inf'):
            remote.plan(np.full(11, np.nan))
        with pytest.raises(ValueError, match=r'shape \(11,\)'):
            remote.plan(np.zeros(3))
        with pytest.raises(ValueError, match='budget_ms'):
            remote.plan(_states(1)[0], budget_ms=-1.0)
        assert remote.plan(_states(1)[0]).actions.shape[1] == local.action_dim
    finally:
        remote.close()
    # Closing ends the child.
    assert process_gone(remote.pid)


def test_a_planning_process_that_dies_makes_every_plan_fail_loudly():
    remote = PlanProcess(HOPPER, OPTIONS)
    try:
        os.kill(remote.pid, signal.SIGKILL)
        assert process_gone(remote.pid)
        for _ in range(2):
            with pytest.raises(RuntimeError, match='planning process'):
                remote.plan(_states(1)[0])
    finally:
        remote.close()


@pytest.mark.slow
def test_a_planning_process_that_cannot_start_says_why(tmp_path):
    with pytest.raises(ValueError, match='nothing_here'):
        PlanProcess(tmp_path / 'nothing_here', OPTIONS)
    with pytest.raises(ValueError, match='unknown planner option'):
        PlanProcess(HOPPER, {**OPTIONS, 'refine_stepz': 1})
