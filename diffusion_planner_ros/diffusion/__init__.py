"""Noise schedule and sampling loops: pure torch, no networks owned."""

from diffusion_planner_ros.diffusion.sampling import (denoise, draw_noise, guided_epsilon,
                                                      refine, sample)
from diffusion_planner_ros.diffusion.schedule import DDPMSchedule, StepOutput

__all__ = ['DDPMSchedule', 'StepOutput', 'denoise', 'draw_noise', 'guided_epsilon', 'refine',
           'sample']
