"""Untrusted inputs at the edges: crafted pickles, NaN datasets, paths, stamps, wild states."""

import pickle

import minari
import numpy as np
import pytest
import torch
from minari.data_collector import EpisodeBuffer
from test_bundle_planner import write_bundle

from diffusion_planner_ros.data.minari_io import load_minari, read_episodes, validate_dataset_id
from diffusion_planner_ros.envs import make_env
from diffusion_planner_ros.planning import load_planner
from diffusion_planner_ros.planning.realtime import ActionChunk, StampGate
from diffusion_planner_ros.planning.returns import episode_target, ReturnsToGo


class RunsCode:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def test_a_crafted_pickle_in_a_bundle_is_refused_and_never_run(tmp_path):
    bundle = write_bundle(tmp_path / 'bundle')
    marker = tmp_path / 'payload_ran'
    payload = pickle.dumps({'weights': RunsCode(marker)})
    (bundle / 'prior.safetensors').write_bytes(payload)
    with pytest.raises(ValueError, match='prior.safetensors'):
        load_planner(bundle, backend='eager')
    assert not marker.exists()
    # torch.load as the package would ever call it (weights_only) refuses the payload too.
    torch_file = tmp_path / 'checkpoint.pt'
    torch_file.write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(torch_file, weights_only=True)
    assert not marker.exists()


def write_episodes(dataset_id, corrupt):
    """Three short PointMaze episodes; ``corrupt`` maps an episode to the field given NaN."""
    env = make_env('umaze', max_episode_steps=20)
    rng = np.random.default_rng(0)
    buffers = []
    for index in range(3):
        steps = 10
        observations = {key: rng.uniform(-1, 1, (steps + 1, size))
                        for key, size in (('observation', 4), ('achieved_goal', 2),
                                          ('desired_goal', 2))}
        actions = rng.uniform(-1, 1, (steps, 2)).astype(np.float32)
        rewards = np.zeros(steps)
        if corrupt.get(index) == 'actions':
            actions[3, 1] = np.nan
        if corrupt.get(index) == 'observations':
            observations['observation'][5, 0] = np.inf
        truncations = np.zeros(steps, dtype=bool)
        truncations[-1] = True
        buffers.append(EpisodeBuffer(id=index, observations=observations, actions=actions,
                                     rewards=rewards, terminations=np.zeros(steps, dtype=bool),
                                     truncations=truncations))
    minari.create_dataset_from_buffers(dataset_id=dataset_id, buffer=buffers, env=env.spec,
                                       algorithm_name='test', author='test',
                                       author_email='test@example.invalid',
                                       code_permalink='test/test_safety.py',
                                       description='NaN test episodes', eval_env=env.spec)
    env.close()
    return load_minari(dataset_id)


def test_a_dataset_with_nan_is_refused_unless_dropping_is_asked_for(caplog):
    dataset = write_episodes('test/nan-v0', {1: 'actions', 2: 'observations'})
    with pytest.raises(ValueError, match=r'episode 1 of dataset test/nan-v0 has NaN or inf in '
                                         r'actions.*drop_nonfinite'):
        read_episodes(dataset)
    kept = read_episodes(dataset, drop_nonfinite=True)
    assert len(kept) == 1 and np.all(np.isfinite(kept[0].actions))
    assert 'dropped 2 episode(s) with NaN or inf: 1 (actions); 2 (observations)' in caplog.text
    everything_bad = write_episodes('test/allnan-v0', {0: 'actions', 1: 'actions', 2: 'actions'})
    with pytest.raises(ValueError, match='no episodes left after dropping'):
        read_episodes(everything_bad, drop_nonfinite=True)


@pytest.mark.parametrize('dataset_id', ['../outside-v0', 'dpr/../../etc-v0', '/abs/path-v0',
                                        'dpr/name', 'dpr/na me-v0', 'dpr\\..\\x-v0', ''])
def test_dataset_ids_that_could_leave_the_datasets_folder_are_refused(dataset_id):
    with pytest.raises(ValueError, match='namespace/name-vN'):
        validate_dataset_id(dataset_id)
    with pytest.raises(ValueError, match='namespace/name-vN'):
        load_minari(dataset_id)


def test_a_bundle_file_linking_out_of_the_bundle_is_refused(tmp_path):
    bundle = write_bundle(tmp_path / 'bundle')
    outside = tmp_path / 'elsewhere.safetensors'
    (bundle / 'prior.safetensors').rename(outside)
    (bundle / 'prior.safetensors').symlink_to(outside)
    with pytest.raises(ValueError, match='leads out of its bundle directory'):
        load_planner(bundle, backend='eager')
    (bundle / 'prior.safetensors').unlink()
    outside.rename(bundle / 'prior.safetensors')
    (bundle / 'normalizer.json').rename(tmp_path / 'normalizer.json')
    (bundle / 'normalizer.json').symlink_to(tmp_path / 'normalizer.json')
    with pytest.raises(ValueError, match='normalizer.json leads out'):
        load_planner(bundle, backend='eager')


def test_a_state_far_outside_the_training_data_is_refused(tmp_path):
    planner = load_planner(write_bundle(tmp_path / 'bundle'), backend='eager')
    low, high = planner._states.low, planner._states.high
    inside = (low + high) / 2
    planner.plan(inside, goal=np.zeros(2), returns_to_go=0.0)
    far = inside.copy()
    far[2] = high[2] + 20 * (high[2] - low[2])
    with pytest.raises(ValueError, match=r'observation dims \[2\] are far outside'):
        planner.plan(far, goal=np.zeros(2), returns_to_go=0.0)
    with pytest.raises(ValueError, match='NaN or inf'):
        planner.plan(np.full(4, np.nan), goal=np.zeros(2))
    # The limit is a validated planner setting.
    planner.reconfigure(observation_limit=100.0)
    planner.plan(far, goal=np.zeros(2), returns_to_go=0.0)
    with pytest.raises(ValueError, match='observation_limit'):
        planner.reconfigure(observation_limit=0.0)


def test_stamp_gate_drops_stamps_out_of_order_and_in_the_future():
    gate = StampGate(stale_after_s=0.5)
    assert gate.check(10.0, now_s=100.0) is None
    assert gate.check(10.01, now_s=100.01) is None
    assert gate.check(10.01, now_s=100.02) is None             # the same state again
    assert 'older than the last state' in gate.check(9.0, now_s=100.03)
    assert 'leaps' in gate.check(500.0, now_s=100.04)
    assert gate.check(0.0, now_s=100.05) is None               # unstamped
    assert gate.check(10.02, now_s=100.05) is None
    # A restarted source (its clock starts again) passes once the stream has gone stale.
    assert 'older' in gate.check(0.5, now_s=100.3)
    assert gate.check(0.5, now_s=100.6) is None
    assert gate.check(0.51, now_s=100.61) is None


def test_stamp_gate_anchored_on_a_stamp_far_ahead_returns_to_the_streams_clock():
    # Beside the stream (10 s + t), a second clock 1000 s ahead sends every 5th state, and the
    # gate's first stamp is one of them: their own steady clock keeps that anchor fresh.
    gate = StampGate(stale_after_s=0.5)
    assert gate.check(1010.0, now_s=0.0) is None
    verdicts = {}
    for i in range(1, 300):   # 3 s at 100 Hz
        stamp = (1000.0 if i % 5 == 0 else 0.0) + 10.0 + 0.01 * i
        verdicts[i] = gate.check(stamp, now_s=0.01 * i)
    back = min(i for i, verdict in verdicts.items() if verdict is None and i % 5)
    assert back <= 110   # within about two windows of 0.5 s
    later = range(back + 1, 300)
    assert all(verdicts[i] is None for i in later if i % 5)
    assert all('leaps' in verdicts[i] for i in later if i % 5 == 0)
    # A third clock 5 s behind (every 6th state) may take the anchor for a window; the gate
    # then settles on the clock most states follow.
    gate = StampGate(stale_after_s=0.5)
    assert gate.check(1010.0, now_s=0.0) is None
    for i in range(1, 600):
        stamp = 10.0 + 0.01 * i + (1000.0 if i % 5 == 0 else -5.0 if i % 6 == 0 else 0.0)
        verdict = gate.check(stamp, now_s=0.01 * i)
    main = [gate.check(10.0 + 0.01 * i, now_s=0.01 * i) for i in range(600, 650)]
    assert all(verdict is None for verdict in main)
    # A source whose clock starts again (a new episode) still waits out the stale time, however
    # the windows fall: the node's pause detection needs that gap.
    for offset in np.arange(0.0, 0.5, 0.05):
        gate = StampGate(stale_after_s=0.5)
        for i in range(100):
            assert gate.check(5.0 + 0.01 * i, now_s=offset + 0.01 * i) is None
        restart = offset + 1.0
        taken = next(t for t in np.arange(restart, restart + 2.0, 0.01)
                     if gate.check(0.01 + t - restart, now_s=t) is None)
        assert taken - (offset + 0.99) > 0.5
    # A stream in order, with a few states out of order, keeps its anchor.
    gate = StampGate(stale_after_s=0.5)
    for i in range(200):
        verdict = gate.check(10.0 + 0.01 * i - (0.5 if i % 7 == 3 else 0.0), now_s=0.01 * i)
        assert (verdict is None) == (i % 7 != 3), (i, verdict)


def test_returns_to_go_spends_rewards_and_starts_again_at_the_target():
    class Planner:
        condition_kind = 'returns'
        config = type('Config', (), {'target_return': 3000.0})()

    assert episode_target(Planner()) == 3000.0
    assert episode_target(Planner(), float('nan')) == 3000.0  # the node's "unset"
    assert episode_target(Planner(), 2500.0) == 2500.0
    Planner.condition_kind = 'goal'
    assert episode_target(Planner(), 2500.0) is None
    returns = ReturnsToGo(3000.0)
    returns.spend(3.5)
    returns.spend(1.5)
    assert returns.value == 2995.0 and returns.rewards == 2
    returns.retarget(2000.0)   # a new target mid-episode keeps what was spent
    assert returns.value == 1995.0
    returns.reset()
    assert returns.value == 2000.0 and returns.rewards == 0
    unconditioned = ReturnsToGo(None)
    unconditioned.spend(1.0)
    assert unconditioned.value is None


def test_action_chunk_in_real_time_gives_the_action_of_the_step_under_way():
    chunk = ActionChunk(1)
    assert chunk.at(5.0, 0.01) is None
    actions = np.arange(4.0)[:, None]   # (4, 1): action i for the i-th step after the state
    chunk.replace(actions, start_s=10.0)
    # A plan ready 12 ms after its state (period 8 ms) starts at action 1, not at action 0,
    # which was due during the step the robot has already taken.
    assert chunk.at(10.012, 0.008)[0] == 1.0
    assert chunk.at(10.0, 0.008)[0] == 0.0
    assert chunk.at(10.0161, 0.008)[0] == 2.0
    assert chunk.at(10.0319, 0.008)[0] == 3.0   # the last action's step
    assert chunk.at(10.0399, 0.008)[0] == 3.0   # one period past the end: it holds
    assert not chunk.expired(10.0399, 0.008)
    assert chunk.at(10.0401, 0.008)[0] == 0.0   # stale: zero
    assert chunk.expired(10.0401, 0.008)
    assert chunk.at(11.0, 0.008)[0] == 0.0
    # A plan that arrives after its chunk's end: its last action holds a period from arrival.
    chunk.replace(actions, start_s=10.0, installed_s=10.05)
    assert chunk.at(10.05, 0.008)[0] == 3.0 and chunk.at(10.0579, 0.008)[0] == 3.0
    assert chunk.at(10.0581, 0.008)[0] == 0.0
    # The node holds for a plan period (here 4 control periods) rather than one.
    assert chunk.at(10.0581, 0.008, hold_s=0.032)[0] == 3.0
    assert chunk.at(10.0821, 0.008, hold_s=0.032)[0] == 0.0
    assert chunk.expired(10.0821, 0.008, hold_s=0.032)
    # Lockstep hands them out one per state instead.
    chunk.replace(actions, consumed=1)
    assert chunk.next()[0] == 1.0 and chunk.next()[0] == 2.0
