"""Behavior policies (SAC actors kept as safetensors + JSON) and D4RL-style locomotion datasets."""

import json
import signal
import subprocess

import minari
import numpy as np
import pytest
import torch

from conftest import PYTHON, REPO, script_env
from diffusion_planner_ros.data.behavior import (BehaviorPolicy, episode_returns,
                                                 replay_episodes, rollout_episodes,
                                                 write_locomotion_dataset)
from diffusion_planner_ros.data.sac import BehaviorTrainingConfig, policy_from_sb3
from diffusion_planner_ros.envs import make_env


def sac_model(seed=0):
    from stable_baselines3 import SAC

    torch.manual_seed(seed)
    return SAC('MlpPolicy', make_env('hopper'), seed=seed, buffer_size=1000, device='cpu',
               policy_kwargs={'net_arch': [32, 32]})


def kept_policy(tmp_path, label='medium', seed=0):
    model = sac_model(seed)
    config = BehaviorTrainingConfig(env_id='hopper', total_steps=10, learning_starts=0)
    policy = policy_from_sb3(model, config, label, 1.0, 'test')
    return BehaviorPolicy.load(policy.save(tmp_path / f'hopper-{label}')), model


def run(args, tmp_path, check=True):
    result = subprocess.run([PYTHON, *args], cwd=REPO, env=script_env(tmp_path),
                            capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_kept_actor_acts_as_the_sb3_actor(tmp_path):
    policy, model = kept_policy(tmp_path)
    observations = np.random.default_rng(0).standard_normal((5, 11))
    expected, _ = model.predict(observations, deterministic=True)
    np.testing.assert_allclose(policy.act(observations, None), expected, atol=1e-5)
    # Sampling: the same Gaussian (mean and log-std) before the tanh.
    with torch.no_grad():
        mean, log_std, _ = model.policy.actor.get_action_dist_params(
            torch.as_tensor(observations, dtype=torch.float32))
    draws = np.stack([policy.act(observations, np.random.default_rng(seed))
                      for seed in range(2000)])
    pre_tanh = np.arctanh(np.clip(draws, -1 + 1e-9, 1 - 1e-9))
    np.testing.assert_allclose(pre_tanh.mean(0), mean.numpy(), atol=0.1)
    np.testing.assert_allclose(np.log(pre_tanh.std(0)), log_std.numpy(), atol=0.1)
    assert policy.card.hidden == [32, 32] and policy.card.label == 'medium'


def test_bad_policy_folders_are_named(tmp_path):
    with pytest.raises(ValueError, match='not a behavior policy'):
        BehaviorPolicy.load(tmp_path)
    policy, _ = kept_policy(tmp_path)
    folder = tmp_path / 'hopper-medium'
    card = json.loads((folder / 'card.json').read_text())
    (folder / 'card.json').write_text(json.dumps({**card, 'hidden': [64, 64]}))
    with pytest.raises(ValueError, match=r'latent_pi.0 is \(32, 11\), expected \(64, 11\)'):
        BehaviorPolicy.load(folder)
    (folder / 'card.json').write_text(json.dumps({**card, 'format': 'pickle'}))
    with pytest.raises(ValueError, match='not a version-1'):
        BehaviorPolicy.load(folder)
    with pytest.raises(ValueError, match=r'takes \(N, 11\) observations'):
        policy.act(np.zeros((1, 17)), None)
    with pytest.raises(ValueError, match='trained on Hopper-v5, not Walker2d-v5'):
        rollout_episodes('walker2d', policy, 10, 0)


def test_rollouts_are_deterministic_and_cut_at_the_step_budget(tmp_path):
    policy, _ = kept_policy(tmp_path)
    first = rollout_episodes('hopper', policy, 500, seed=3)
    again = rollout_episodes('hopper', policy, 500, seed=3)
    other = rollout_episodes('hopper', policy, 500, seed=4)
    assert sum(len(e.actions) for e in first) == 500
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.observations, b.observations)
        np.testing.assert_array_equal(a.actions, b.actions)
    assert not np.array_equal(first[0].actions, other[0].actions)
    for episode in first:
        assert len(episode.observations) == len(episode.actions) + 1
        # Each episode ends in exactly one of termination (fell) or truncation (budget or limit).
        assert episode.terminations[-1] != episode.truncations[-1]
        assert not episode.terminations[:-1].any() and not episode.truncations[:-1].any()
    assert first[-1].truncations[-1]
    random = rollout_episodes('hopper', None, 200, seed=3)
    assert np.abs(np.concatenate([e.actions for e in random])).max() <= 1.0


def test_replay_buffer_is_cut_into_episodes():
    rng = np.random.default_rng(0)
    count = 9
    observations, next_observations = rng.standard_normal((count, 2)), rng.standard_normal(
        (count, 2))
    dones = np.array([0, 0, 1, 0, 1, 0, 0, 0, 0], bool)
    timeouts = np.array([0, 0, 0, 0, 1, 0, 0, 0, 0], bool)
    episodes = replay_episodes(observations, next_observations, rng.standard_normal((count, 1)),
                               np.arange(count, dtype=float), dones, timeouts)
    assert [len(e.actions) for e in episodes] == [3, 2, 4]
    assert [bool(e.terminations[-1]) for e in episodes] == [True, False, False]
    assert [bool(e.truncations[-1]) for e in episodes] == [False, True, True]
    np.testing.assert_array_equal(episodes[1].observations,
                                  np.concatenate([observations[3:5], next_observations[4:5]]))
    assert episode_returns(episodes).tolist() == [3.0, 7.0, 26.0]
    with pytest.raises(ValueError, match='differ in length'):
        replay_episodes(observations, next_observations[:3], observations, dones, dones, dones)


def test_written_dataset_numbers_the_parts_in_order_and_refuses_its_id_again(tmp_path):
    policy, _ = kept_policy(tmp_path)
    episodes = (rollout_episodes('hopper', policy, 100, seed=0)
                + rollout_episodes('hopper', None, 100, seed=1))
    write_locomotion_dataset('test/hopper-mixed-v0', 'hopper', episodes, 'test', 'test')
    dataset = minari.load_dataset('test/hopper-mixed-v0')
    assert dataset.spec.total_steps == 200 and dataset.spec.env_spec.id == 'Hopper-v5'
    loaded = list(dataset.iterate_episodes())
    assert [e.id for e in loaded] == list(range(len(episodes)))
    np.testing.assert_allclose(loaded[-1].actions, episodes[-1].actions)
    with pytest.raises(ValueError, match='already exists'):
        write_locomotion_dataset('test/hopper-mixed-v0', 'hopper', episodes, 'test', 'test')


@pytest.mark.slow
def test_train_behavior_keeps_medium_and_expert_and_replays_repeatably(tmp_path):
    args = ['training/train_behavior.py', '--env', 'hopper', '--steps', '300',
            '--medium-return', '-1000', '--eval-every', '100', '--eval-episodes', '1',
            '--learning-starts', '50']
    run([*args, '--out', str(tmp_path / 'a')], tmp_path)
    for label in ('medium', 'expert'):
        card = json.loads((tmp_path / 'a' / f'hopper-{label}' / 'card.json').read_text())
        assert card['label'] == label and card['env_id'] == 'Hopper-v5'
        assert 'train_behavior.py' in card['command']
    assert json.loads((tmp_path / 'a' / 'hopper-medium' / 'card.json').read_text())[
        'train_steps'] == 100
    first = minari.load_dataset('dpr/hopper-medium-replay-v0')
    assert first.spec.total_steps == 99  # transitions stored before the evaluation at step 100
    replay = [e.actions for e in first.iterate_episodes()]

    # The same seed again, stopping at medium, gives the same replay data.
    refused = run([*args, '--out', str(tmp_path / 'a')], tmp_path, check=False)
    assert refused.returncode != 0 and 'exists' in refused.stderr
    first_path = tmp_path / 'datasets'
    (first_path / 'dpr').rename(tmp_path / 'kept')
    run([*args, '--out', str(tmp_path / 'b'), '--stop-at-medium'], tmp_path)
    assert not (tmp_path / 'b' / 'hopper-expert').exists()
    again = minari.load_dataset('dpr/hopper-medium-replay-v0')
    for a, b in zip(replay, (e.actions for e in again.iterate_episodes()), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_stopping_train_behavior_keeps_the_best_policy_so_far(tmp_path):
    args = ['training/train_behavior.py', '--env', 'hopper', '--steps', '1000000',
            '--medium-return', '1e9', '--eval-every', '100', '--eval-episodes', '1',
            '--learning-starts', '50', '--replay-dataset-id', '', '--out', str(tmp_path)]
    process = subprocess.Popen([PYTHON, *args], cwd=REPO, env=script_env(tmp_path),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stderr:
            if 'eval return' in line:  # the first evaluation, at step 100
                break
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, err[-3000:]
    summary = json.loads(out[:out.rindex('}') + 1])
    assert summary['stopped_at'] >= 100 and summary['medium'] is None
    card = json.loads((tmp_path / 'hopper-expert' / 'card.json').read_text())
    assert card['stopped_at'] == summary['stopped_at'] and card['train_steps'] >= 100
    assert summary['expert']['return'] == card['eval_return']


@pytest.mark.slow
def test_make_locomotion_dataset_joins_medium_and_expert_and_names_bad_input(tmp_path):
    policies = tmp_path / 'policies'
    kept_policy(policies, 'medium', seed=0)
    kept_policy(policies, 'expert', seed=1)
    out = run(['training/make_locomotion_dataset.py', '--env', 'hopper', '--kind',
               'medium-expert', '--steps', '300', '--policies', str(policies),
               '--no-progress'], tmp_path).stdout
    assert 'wrote dpr/hopper-medium-expert-v0' in out and '600 steps' in out
    joined = minari.load_dataset('dpr/hopper-medium-expert-v0')
    assert joined.spec.total_steps == 600
    # Its medium half is the medium dataset of the same seed.
    run(['training/make_locomotion_dataset.py', '--env', 'hopper', '--kind', 'medium',
         '--steps', '300', '--policies', str(policies), '--no-progress'], tmp_path)
    medium = [e.actions for e in minari.load_dataset('dpr/hopper-medium-v0').iterate_episodes()]
    for a, b in zip(medium, joined.iterate_episodes()):
        np.testing.assert_array_equal(a, b.actions)

    for args, message in (
            (['--kind', 'medium'], 'already exists'),
            (['--kind', 'expert', '--policies', str(tmp_path / 'none')], 'not a behavior policy'),
            (['--env', 'walker2d', '--kind', 'medium'], 'walker2d-medium is not a behavior'),
            (['--kind', 'expert', '--dataset-id', 'no-version'], 'not of the form')):
        argv = ['training/make_locomotion_dataset.py', '--env', 'hopper', '--policies',
                str(policies), '--steps', '10', *args]
        result = run(argv, tmp_path, check=False)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / 'datasets' / 'dpr' / 'hopper-expert-v0').exists()

    text = run(['training/evaluate.py', '--policy', str(policies / 'hopper-expert'), '--env',
                'hopper', '--episodes', '2', '--no-progress', '--json',
                str(tmp_path / 'eval.json')], tmp_path).stdout
    assert json.loads((tmp_path / 'eval.json').read_text())['episodes'] == 2, text
    bad = run(['training/evaluate.py', '--policy', 'greedy', '--env', 'hopper'], tmp_path,
              check=False)
    assert bad.returncode == 2 and 'not random, scripted or a policy folder' in bad.stderr


def test_a_benchmark_suite_collects_locomotion_data_from_kept_policies(tmp_path, monkeypatch):
    from suite import ensure_dataset

    monkeypatch.setenv('MINARI_DATASETS_PATH', str(tmp_path / 'datasets'))
    spec = {'collect': {'env': 'hopper', 'kind': 'random', 'steps': 50, 'seed': 3}}
    ensure_dataset(spec, 'dpr/hopper-random-v0', progress=False)
    assert minari.load_dataset('dpr/hopper-random-v0').spec.total_steps == 50
    spec = {'collect': {'env': 'hopper', 'kind': 'medium', 'steps': 50,
                        'policies': str(tmp_path / 'none')}}
    with pytest.raises(ValueError, match='train_behavior.py'):
        ensure_dataset(spec, 'dpr/hopper-medium-v0', progress=False)
    assert not (tmp_path / 'datasets' / 'dpr' / 'hopper-medium-v0').exists()


@pytest.mark.parametrize('env', ['hopper', 'walker2d'])
def test_committed_policies_fit_their_env_and_the_expert_outwalks_random(env):
    spaces, returns = make_env(env), {}
    for label in ('medium', 'expert'):
        policy = BehaviorPolicy.load(REPO / 'models' / 'behavior' / f'{env}-{label}')
        assert policy.card.obs_dim == spaces.observation_space.shape[0]
        assert policy.card.action_dim == spaces.action_space.shape[0]
        returns[label] = episode_returns(rollout_episodes(env, policy, 300, seed=5))
    returns['random'] = episode_returns(rollout_episodes(env, None, 300, seed=5))
    # A policy that stays up earns several hundred in 300 steps; random actions fall at once.
    for label in ('medium', 'expert'):
        assert np.mean(returns[label]) > 5 * max(np.mean(returns['random']), 10.0), returns
