"""Where the package's data files (launch, config, models) are: a checkout or an install."""

from __future__ import annotations

from pathlib import Path

PACKAGE = 'diffusion_planner_ros'


def share_directory() -> Path:
    """Return the folder that holds launch/, config/ and models/.

    In a source checkout (or an editable or --symlink-install build) it is the checkout; in a
    colcon install or a pip install it is <prefix>/share/diffusion_planner_ros, where the prefix
    is the one the Python package was installed under.
    """
    package = Path(__file__).resolve().parent
    checkout = package.parent
    if (checkout / 'launch' / 'sim.launch.py').is_file():
        return checkout
    # <prefix>/lib/pythonX.Y/site-packages/diffusion_planner_ros
    installed = package.parents[3] / 'share' / PACKAGE
    if (installed / 'launch' / 'sim.launch.py').is_file():
        return installed
    raise RuntimeError(f'cannot find launch/sim.launch.py in the checkout {checkout} or under '
                       f'{installed}')
