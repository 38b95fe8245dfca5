"""Smoke runs of the real scripts in subprocesses, with tiny sizes."""

import dataclasses
import json
import re
import subprocess

import pytest

from conftest import NETWORK_ATOL, PYTHON, REPO, reverse_chain_atol, script_env
from diffusion_planner_ros.config import load_config, ScheduleConfig
from diffusion_planner_ros.diffusion import DDPMSchedule
from diffusion_planner_ros.planning.bundle import derive_bundle, load_bundle
from test_bundle_planner import tiny_config, write_bundle

# Whole collect, train, evaluate and benchmark runs through their scripts: make test, not check.
pytestmark = pytest.mark.slow

TINY_MODEL = [
    '--set', 'prior.n_layer=1', '--set', 'prior.n_embd=32', '--set', 'prior.n_head=2',
    '--set', 'unet.dim=8', '--set', 'unet.dim_mults=[1, 2]', '--set', 'unet.embed_dim=8',
    '--set', 'unet.embed_hidden=16', '--set', 'inverse_dynamics.hidden_dim=32',
    '--set', 'training.batch_size=8', '--set', 'training.log_every=5',
    '--set', 'training.checkpoint_every=10', '--set', 'data.dataset_id=test/e2e-v0',
]


def run(args, tmp_path, timeout=300):
    result = subprocess.run([PYTHON, *args], cwd=REPO, env=script_env(tmp_path),
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def steps(prior, diffuser, inverse):
    return ['--set', f'training.prior_steps={prior}',
            '--set', f'training.diffuser_steps={diffuser}',
            '--set', f'training.inverse_dynamics_steps={inverse}']


@pytest.fixture
def tiny_data(tmp_path):
    out = run(['training/collect.py', '--env', 'umaze', '--steps', '3000', '--episode-steps',
               '1000', '--dataset-id', 'test/e2e-v0', '--seed', '1', '--no-progress'], tmp_path)
    assert 'wrote test/e2e-v0: 3 episodes, 3000 steps' in out


def test_collect_train_evaluate_end_to_end(tiny_data, tmp_path):
    out = run(['training/train.py', '--config', 'config/pointmaze_umaze.yaml', '--out',
               str(tmp_path / 'run'), '--no-progress', *TINY_MODEL, *steps(20, 20, 20)],
              tmp_path)
    assert 'bundle written to' in out
    losses = json.loads((tmp_path / 'run' / 'weights' / 'prior.losses.json').read_text())
    assert len(losses) == 4 and losses[-1] < losses[0]
    result = tmp_path / 'eval.json'
    table = run(['training/evaluate.py', '--bundle', str(tmp_path / 'run' / 'bundle'),
                 '--episodes', '1', '--seed', '5', '--json', str(result), '--no-progress'],
                tmp_path)
    # The bundle carries the config's planner defaults.
    defaults = load_config(REPO / 'config' / 'pointmaze_umaze.yaml').planner
    assert (f'| PointMaze_UMaze-v3 | trajectory_diffuser | onnx | {defaults.refine_steps} | 1 |'
            in table)
    row = json.loads(result.read_text())
    assert row['replan_every'] == defaults.replan_every
    assert row['noise_scale'] == defaults.noise_scale
    assert len(row['episode_returns']) == 1
    for key in ('env', 'dataset', 'method', 'refine_steps', 'episodes', 'score_mean',
                'score_stderr', 'success_rate', 'plan_ms_p50', 'plan_ms_p99', 'prior_ms_p50',
                'refine_ms_p50'):
        assert key in row
    assert row['episodes'] == 1 and row['dataset'] == 'test/e2e-v0'
    assert row['bundle'] == str(tmp_path / 'run' / 'bundle') and 'CPU' in row['machine']
    # One episode: it reached its goal or not, nothing between.
    assert row['success_rate'] in (0.0, 1.0) and row['plan_ms_p50'] > 0
    prior_only = run(['training/evaluate.py', '--bundle', str(tmp_path / 'run' / 'bundle'),
                      '--episodes', '1', '--refine-steps', '0', '--no-progress'], tmp_path)
    assert '| prior_only | onnx | 0 |' in prior_only
    check = run(['training/check_refinement.py', '--bundle', str(tmp_path / 'run' / 'bundle'),
                 '--windows', '8', '--refine-steps', '0', '2'], tmp_path)
    rows = [line for line in check.splitlines() if re.match(r'\| \d+ \|', line)]
    assert [row.split('|')[1].strip() for row in rows] == ['0', '2']
    steer = re.search(r"another window's condition: position RMS ([0-9.]+) \(the data's \d+ "
                      r"steps move ([0-9.]+)\)", check)
    assert steer and float(steer.group(2)) > 0, check
    # A critic added to the trained bundle; its other networks are taken as they are.
    critic = tmp_path / 'critic'
    out = run(['training/train.py', '--from-bundle', str(tmp_path / 'run' / 'bundle'),
               '--only', 'critic', '--set', 'method.critic=true', '--set',
               'training.critic_steps=20', '--out', str(critic), '--no-progress'], tmp_path)
    assert 'sanity batch critic' in out and 'sanity batch prior' not in out
    assert (critic / 'bundle' / 'prior.safetensors').read_bytes() == (
        tmp_path / 'run' / 'bundle' / 'prior.safetensors').read_bytes()
    run(['training/evaluate.py', '--bundle', str(critic / 'bundle'), '--episodes', '1',
         '--candidates', '4', '--json', str(result), '--no-progress'], tmp_path)
    assert json.loads(result.read_text())['candidates'] == 4
    # Any other planner option by name; a name the planner does not have is refused by name.
    run(['training/evaluate.py', '--bundle', str(critic / 'bundle'), '--episodes', '1',
         '--set', 'noise_scale=0.25', '--set', 'refine_steps=1', '--json', str(result),
         '--no-progress'], tmp_path)
    row = json.loads(result.read_text())
    assert (row['noise_scale'], row['refine_steps']) == (0.25, 1)
    refused = subprocess.run([PYTHON, 'training/evaluate.py', '--bundle', str(critic / 'bundle'),
                              '--episodes', '1', '--set', 'no_such_option=1'], cwd=REPO,
                             env=script_env(tmp_path), capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode != 0 and 'no_such_option' in refused.stderr
    # A prior of another size trained on top: the bundle records it, the U-Net is the source's.
    deeper = tmp_path / 'deeper'
    run(['training/train.py', '--from-bundle', str(tmp_path / 'run' / 'bundle'), '--only',
         'prior', '--set', 'prior.n_layer=2', '--set', 'training.prior_steps=10', '--out',
         str(deeper), '--no-progress'], tmp_path)
    assert load_bundle(deeper / 'bundle').config.prior.n_layer == 2
    assert (deeper / 'bundle' / 'diffuser.safetensors').read_bytes() == (
        tmp_path / 'run' / 'bundle' / 'diffuser.safetensors').read_bytes()
    assert '| trajectory_diffuser | onnx |' in run(
        ['training/evaluate.py', '--bundle', str(deeper / 'bundle'), '--episodes', '1',
         '--no-progress'], tmp_path)


def test_window_weights_favour_windows_that_start_near_their_goal(tiny_data, tmp_path):
    out = run(['tools/benchmark/window_weights.py', '--config', 'config/pointmaze_umaze.yaml',
               '--set', 'data.dataset_id=test/e2e-v0', '--set', 'data.span_goal_switches=true',
               '--horizon', '32', '--windows', '512'], tmp_path)
    assert 'horizon 32, 512 windows spanning goal switches' in out
    rows = [line.split('|')[1:-1] for line in out.splitlines()
            if line.startswith('| ') and line[2].isdigit()]
    assert len(rows) >= 2 and sum(int(row[1]) for row in rows) == 512
    # The scripted controller heads for its goal: a window starting nearer has more reward.
    weights = [float(row[2]) for row in rows]
    assert weights[0] > weights[-1]
    for bad, message in ((['--config', 'config/hopper_medium_expert.yaml'], 'need goal data'),
                         (['--config', 'config/pointmaze_umaze.yaml', '--horizon', '-4'],
                          '--horizon -4 must be >= 0')):
        result = subprocess.run([PYTHON, 'tools/benchmark/window_weights.py', *bad], cwd=REPO,
                                env=script_env(tmp_path), capture_output=True, text=True,
                                timeout=120)
        assert result.returncode != 0 and message in result.stderr


def test_training_resumes_from_checkpoints(tiny_data, tmp_path):
    args = ['training/train.py', '--config', 'config/pointmaze_umaze.yaml', '--out',
            str(tmp_path / 'run'), '--only', 'prior', '--no-progress', *TINY_MODEL]
    first = run(args + steps(10, 0, 0), tmp_path)
    assert 'bundle not written yet: diffuser, inverse_dynamics' in first
    second = run(args + steps(20, 0, 0), tmp_path)
    assert 'prior: resumed at step 10' in second
    meta = json.loads((tmp_path / 'run' / 'checkpoints' / 'prior.json').read_text())
    assert meta['step'] == 20
    # The loss curve spans both runs (logged every 5 steps), not only the resumed part.
    losses = json.loads((tmp_path / 'run' / 'weights' / 'prior.losses.json').read_text())
    assert len(losses) == 4 and meta['losses'] == losses
    # A run resumed at its last step trains nothing and keeps the curve.
    third = run(args + steps(20, 0, 0), tmp_path)
    assert 'prior: resumed at step 20' in third
    assert json.loads((tmp_path / 'run' / 'weights' / 'prior.losses.json').read_text()) == losses


def test_distributed_training_with_two_gloo_processes(tiny_data, tmp_path):
    out = run(['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
               'training/train.py', '--config', 'config/pointmaze_umaze.yaml', '--out',
               str(tmp_path / 'ddp'), '--no-progress', '--set', 'training.device=cpu',
               *TINY_MODEL, *steps(6, 6, 6)], tmp_path, timeout=600)
    assert 'world size 2' in out
    sums = re.findall(r'rank (\d) (\w+) checksum (\S+)', out)
    by_model = {}
    for rank, model, value in sums:
        by_model.setdefault(model, {})[rank] = value
    assert set(by_model) == {'prior', 'diffuser', 'inverse_dynamics'}
    for model, ranks in by_model.items():
        # DDP keeps both ranks' weights identical after every step.
        assert ranks.keys() == {'0', '1'} and ranks['0'] == ranks['1'], model
    assert (tmp_path / 'ddp' / 'bundle' / 'config.json').is_file()


def test_bad_config_key_fails_with_its_name(tmp_path):
    result = subprocess.run([PYTHON, 'training/train.py', '--config',
                             'config/pointmaze_umaze.yaml', '--set', 'training.stepz=3'],
                            cwd=REPO, env=script_env(tmp_path), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and 'stepz' in result.stderr


def test_benchmark_quick_suite_end_to_end(tmp_path):
    out = tmp_path / 'bench'
    text = run(['tools/benchmark/benchmark.py', '--suite', 'quick', '--out', str(out),
                '--no-progress'], tmp_path, timeout=900)
    suite_methods = ['trajectory_diffuser', 'prior_only', 'decision_diffuser',
                     'trajectory_diffuser_rerank', 'decision_diffuser_rerank', 'diffuser',
                     'diffuser_warm', 'dmemm', 'bc']
    for name in suite_methods:
        row = json.loads((out / 'results' / f'umaze_{name}_seed0.json').read_text())
        assert row['train_seed'] == 0 and row['episodes'] == 1
        for key in ('env', 'dataset', 'method', 'score_mean', 'score_stderr', 'success_rate',
                    'plan_ms_p50', 'plan_ms_p99', 'episode_returns', 'machine'):
            assert key in row, key
        assert f'| umaze | {name} | {row["backend"]} | 1 x 1 |' in text
    # Each method's bundle records its method; Decision Diffuser shares TD's networks.
    runs = out / 'runs' / 'umaze'
    for name in ('diffuser', 'dmemm', 'bc', 'decision_diffuser'):
        meta = json.loads((runs / name / 'seed0' / 'bundle' / 'config.json').read_text())
        assert meta['method'] == name
    assert (runs / 'decision_diffuser' / 'seed0' / 'bundle' / 'diffuser.safetensors'
            ).read_bytes() == (runs / 'trajectory_diffuser' / 'seed0' / 'bundle' /
                               'diffuser.safetensors').read_bytes()
    assert json.loads((out / 'results' / 'umaze_diffuser_warm_seed0.json').read_text())[
        'warm_start_steps'] == 2
    # Rerank: TD's networks unchanged plus a trained critic, which DD's derived bundle shares.
    td, rerank = runs / 'trajectory_diffuser' / 'seed0', runs / 'trajectory_diffuser_rerank'
    for name in ('prior', 'diffuser', 'inverse_dynamics'):
        assert (rerank / 'seed0' / 'bundle' / f'{name}.safetensors').read_bytes() == (
            td / 'bundle' / f'{name}.safetensors').read_bytes()
    assert (rerank / 'seed0' / 'weights' / 'critic.losses.json').is_file()
    assert not (rerank / 'seed0' / 'weights' / 'prior.losses.json').exists()
    assert (runs / 'decision_diffuser_rerank' / 'seed0' / 'bundle' / 'critic.safetensors'
            ).read_bytes() == (rerank / 'seed0' / 'bundle' / 'critic.safetensors').read_bytes()
    for name in ('trajectory_diffuser_rerank', 'decision_diffuser_rerank'):
        row = json.loads((out / 'results' / f'umaze_{name}_seed0.json').read_text())
        assert row['candidates'] == 4
    for plot in ('score_vs_latency.png', 'example_plan_umaze.png'):
        assert (out / plot).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    table = json.loads((out / 'table.json').read_text())
    dd = next(x for x in table if x['name'] == 'decision_diffuser')
    assert dd['speedup_vs_reference'] == pytest.approx(1.0)
    # A second run loads everything and redoes nothing.
    again = run(['tools/benchmark/benchmark.py', '--suite', 'quick', '--out', str(out),
                 '--no-progress'], tmp_path, timeout=300)
    assert 'bundle written' not in again


def test_latency_benchmark_compares_eager_and_onnx(tmp_path):
    bundle = write_bundle(tmp_path / 'bundle')
    report_path = tmp_path / 'latency.json'
    text = run(['tools/benchmark/benchmark_latency.py', '--bundle', str(bundle), '--calls', '20',
                '--warmup', '3', '--json', str(report_path)], tmp_path)
    report = json.loads(report_path.read_text())
    assert report['eager']['backend'] == 'eager'
    assert report['optimized']['backend'] == 'onnx' and not report['optimized']['fallbacks']
    for path in ('eager', 'optimized'):
        for stage in ('prior', 'refine', 'inverse', 'total'):
            figures = report[path]['stages_ms'][stage]
            assert 0.0 < figures['p50'] <= figures['p99']
    # The refined states went through refine_steps reverse steps from the prior's plan: the
    # bound of conftest.reverse_chain_atol (normalised units), in the widest state unit.
    loaded = load_bundle(bundle)
    planner, states = loaded.config.planner, loaded.normalizers['states']
    bound = reverse_chain_atol(DDPMSchedule(loaded.config.schedule), planner.refine_steps,
                               planner.guidance_scale, start=NETWORK_ATOL)
    assert report['max_state_difference'] < bound * max(states.high - states.low) / 2
    assert report['max_action_difference'] < 1e-4
    assert report['speedup_p50'] > 0.0
    assert '| total |' in text and 'whole plan speed-up' in text


def test_latency_benchmark_interleaves_bundles_and_refuses_bad_versus(tmp_path):
    # 10 noise levels: Decision Diffuser samples them all, and what is tested here is the
    # interleaving and the ratios, not a long sampler's cost.
    bundle = write_bundle(tmp_path / 'td', dataclasses.replace(
        tiny_config(), schedule=ScheduleConfig(num_steps=10)))
    derive_bundle(bundle, 'decision_diffuser', tmp_path / 'dd')
    report_path = tmp_path / 'versus.json'
    text = run(['tools/benchmark/benchmark_latency.py', '--bundle', str(bundle), '--versus',
                f'dd={tmp_path / "dd"}', '--versus',
                f'short={bundle},refine_steps=1,replan_every=2', '--calls', '6',
                '--warmup', '1', '--paths', 'eager', 'onnx', '--json', str(report_path)],
               tmp_path)
    report = json.loads(report_path.read_text())
    assert set(report['paths']) == {'eager', 'onnx'}
    for path, run_report in report['paths'].items():
        assert run_report['trajectory_diffuser']['method'] == 'trajectory_diffuser'
        assert run_report['dd']['method'] == 'decision_diffuser'
        assert run_report['dd']['backend'] == path
        ratio = run_report['ratios']['dd/trajectory_diffuser']
        totals = [run_report[name]['stages_ms']['total']['p50']
                  for name in ('trajectory_diffuser', 'dd')]
        assert ratio['p50'] == pytest.approx(totals[1] / totals[0])
        assert ratio['median_per_call'] > 0.0
        # The same bundle under another name, with its own planner options.
        assert run_report['short']['settings'] == {'refine_steps': 1, 'replan_every': 2}
        assert 'short/trajectory_diffuser' in run_report['ratios']
    assert '| onnx | dd | onnx |' in text and '| onnx | short | onnx |' in text

    for versus, message in (('dd', 'NAME=BUNDLE'), (f'x={tmp_path / "none"}', 'no bundle'),
                            (f'ratios={tmp_path / "dd"}', 'reserved'),
                            (f'w={tmp_path / "dd"},warm', 'not key=value'),
                            (f'w={tmp_path / "dd"},k=five', 'not a number')):
        result = subprocess.run([PYTHON, 'tools/benchmark/benchmark_latency.py', '--bundle',
                                 str(bundle), '--versus', versus], cwd=REPO,
                                env=script_env(tmp_path), capture_output=True, text=True)
        assert result.returncode == 2 and message in result.stderr


def test_latency_benchmark_times_untrained_networks_of_other_sizes(tmp_path):
    bundle = write_bundle(tmp_path / 'td')
    derive_bundle(bundle, 'decision_diffuser', tmp_path / 'dd')
    report_path = tmp_path / 'sizes.json'
    sizes = ['prior.n_layer=2', 'unet.dim=16']
    text = run(['tools/benchmark/benchmark_latency.py', '--bundle', str(bundle), '--versus',
                f'dd={tmp_path / "dd"}', '--calls', '4', '--warmup', '1', '--paths', 'eager',
                '--untrained', *sizes, '--json', str(report_path)], tmp_path)
    report = json.loads(report_path.read_text())
    assert report['untrained'] == sizes and 'untrained networks resized by' in text
    run_report = report['paths']['eager']
    # The report names the bundles asked for; the temporary resized copies are gone.
    assert run_report['trajectory_diffuser']['bundle'] == str(bundle)
    assert run_report['dd']['bundle'] == str(tmp_path / 'dd')
    assert run_report['dd']['method'] == 'decision_diffuser'
    assert run_report['ratios']['dd/trajectory_diffuser']['p50'] > 0.0
    result = subprocess.run([PYTHON, 'tools/benchmark/benchmark_latency.py', '--bundle',
                             str(bundle), '--untrained', 'planner.refine_steps=1'], cwd=REPO,
                            env=script_env(tmp_path), capture_output=True, text=True)
    assert result.returncode == 2 and 'not a size' in result.stderr
