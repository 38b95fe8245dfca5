"""Config validation: clear messages for bad values and unknown keys."""

import pytest

from diffusion_planner_ros.config import (DataConfig, ExperimentConfig, UnetConfig,
                                          config_from_dict, config_to_dict, load_config)
from conftest import REPO


SHIPPED = sorted(p.name for p in (REPO / 'config').glob('*.yaml'))


@pytest.mark.parametrize('name', SHIPPED)
def test_shipped_configs_load(name):
    config = load_config(REPO / 'config' / name)
    assert config.data.horizon % config.unet.downsample_factor == 0
    assert config_from_dict(config_to_dict(config)) == config


# The paper's Table A6 returns-to-go targets and D4RL's expert reference returns.
TABLE_A6 = {'hopper_medium_expert': 3700, 'hopper_medium': 3100, 'hopper_medium_replay': 3100,
            'walker2d_medium_expert': 5100, 'walker2d_medium': 4200,
            'walker2d_medium_replay': 4200}
D4RL_EXPERT = {'hopper': 3234.3, 'walker2d': 4592.3}


@pytest.mark.parametrize('name', sorted(TABLE_A6))
def test_locomotion_targets_are_table_a6_in_our_units(name):
    config = load_config(REPO / 'config' / f'{name}.yaml')
    scaled = TABLE_A6[name] / D4RL_EXPERT[name.split('_')[0]] * config.evaluation.reference_return
    assert config.planner.target_return == pytest.approx(scaled, abs=0.1)
    assert config.data.horizon == (16 if name.startswith('hopper') else 32)
    assert (config.planner.refine_steps, config.planner.guidance_scale) == (5, 1.2)


def test_a_base_config_is_updated_key_by_key(tmp_path):
    (tmp_path / 'base.yaml').write_text('data:\n  horizon: 16\n  history: 3\n'
                                        'planner:\n  guidance_scale: 1.5\n')
    (tmp_path / 'sub').mkdir()
    (tmp_path / 'sub' / 'child.yaml').write_text('base: ../base.yaml\ndata:\n  history: 2\n'
                                                 'training:\n')
    config = load_config(tmp_path / 'sub' / 'child.yaml', ['planner.refine_steps=3'])
    assert (config.data.horizon, config.data.history) == (16, 2)
    assert (config.planner.guidance_scale, config.planner.refine_steps) == (1.5, 3)
    (tmp_path / 'base.yaml').write_text('base: sub/child.yaml\n')
    with pytest.raises(ValueError, match='loops back'):
        load_config(tmp_path / 'sub' / 'child.yaml')
    (tmp_path / 'sub' / 'child.yaml').write_text('base: missing.yaml\n')
    with pytest.raises(ValueError, match='missing.yaml does not exist'):
        load_config(tmp_path / 'sub' / 'child.yaml')


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / 'bad.yaml'
    path.write_text('data:\n  horizn: 16\n')
    with pytest.raises(ValueError, match="horizn"):
        load_config(path)


def test_unknown_section_is_named():
    with pytest.raises(ValueError, match='planer'):
        config_from_dict({'planer': {}})


def test_horizon_must_match_the_unet():
    with pytest.raises(ValueError, match=r'horizon 20 must be a multiple of .* = 8'):
        ExperimentConfig(data=DataConfig(horizon=20), unet=UnetConfig(dim_mults=(1, 2, 4, 8)))


@pytest.mark.parametrize('section,values,message', [
    ('data', {'condition': 'reward'}, 'data.condition'),
    ('data', {'discount': 1.5}, 'data.discount'),
    ('data', {'start_fraction': -0.1}, 'data.start_fraction'),
    ('prior', {'n_embd': 130, 'n_head': 4}, 'multiple of prior.n_head'),
    ('training', {'condition_dropout': 1.0}, 'condition_dropout'),
    ('training', {'device': 'cuda:0'}, 'training.device'),
    ('planner', {'refine_steps': -1}, 'refine_steps'),
])
def test_bad_values_say_what_is_wrong(section, values, message):
    with pytest.raises(ValueError, match=message):
        config_from_dict({section: values})


def test_overrides_apply_and_are_checked(tmp_path):
    path = REPO / 'config' / 'pointmaze_umaze.yaml'
    config = load_config(path, ['training.prior_steps=7', 'planner.guidance_scale=2.5'])
    assert config.training.prior_steps == 7 and config.planner.guidance_scale == 2.5
    with pytest.raises(ValueError, match='section.key=value'):
        load_config(path, ['prior_steps=7'])
    with pytest.raises(ValueError, match='bogus'):
        load_config(path, ['training.bogus=1'])


@pytest.mark.parametrize('section,values,message', [
    ('data', {'horizon': 'sixteen'}, r'data.horizon must be int'),
    ('data', {'horizon': 16.5}, r'data.horizon must be int'),
    ('schedule', {'clip_denoised': 'yes'}, r'schedule.clip_denoised must be bool'),
    ('evaluation', {'random_return': 'RANDOM'}, r'evaluation.random_return must be float'),
    ('unet', {'dim_mults': 8}, r'unet.dim_mults must be tuple'),
])
def test_wrong_types_are_named(section, values, message):
    with pytest.raises(ValueError, match=message):
        config_from_dict({section: values})


def test_ints_are_accepted_where_floats_belong():
    config = config_from_dict({'planner': {'guidance_scale': 2}})
    assert config.planner.guidance_scale == 2.0 and isinstance(config.planner.guidance_scale,
                                                               float)
