"""Read launch/sim.launch.py without launch_ros: the launch-equivalent runner and its contract.

launch and launch_ros have no wheels for machines without a ROS install, so `sim_graph` (and
`make demo`) interpret the launch file's small vocabulary directly: DeclareLaunchArgument,
LaunchConfiguration, PathJoinSubstitution, FindPackageShare, IfCondition and Node. Anything else
in the file is an error here, which keeps the file and the runner equal.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = 'diffusion_planner_ros'


@dataclass
class NodeSpec:
    """One Node action, with launch configurations resolved."""

    package: str
    executable: str
    name: str
    enabled: bool
    params_files: list = field(default_factory=list)
    parameters: dict = field(default_factory=dict)
    remappings: list = field(default_factory=list)
    arguments: list = field(default_factory=list)

    def ros_args(self) -> list[str]:
        """Build the command-line arguments `ros2 launch` would give this node."""
        args = [*self.arguments, '--ros-args', '-r', f'__node:={self.name}']
        for path in self.params_files:
            args += ['--params-file', path]
        for key, value in self.parameters.items():
            args += ['-p', f'{key}:={value}']
        for source, target in self.remappings:
            args += ['-r', f'{source}:={target}']
        return args


class LaunchFileError(ValueError):
    """The launch file uses something the runner cannot interpret."""


def _concatenated(value):
    """Join a list of substitutions into one string, as launch does (SomeSubstitutionsType)."""
    return ''.join(map(str, value)) if isinstance(value, list) else value


class _Interpreter:
    def __init__(self, share_dir: Path, overrides: dict[str, str]):
        self.share_dir, self.overrides = share_dir, overrides
        self.arguments: dict[str, str] = {}
        self.nodes: list[NodeSpec] = []

    def value(self, node: ast.AST):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.List):
            return [self.value(item) for item in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(self.value(item) for item in node.elts)
        if isinstance(node, ast.Dict):
            return {self.value(k): self.value(v) for k, v in zip(node.keys, node.values)}
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            args = [self.value(a) for a in node.args]
            kwargs = {k.arg: k.value for k in node.keywords}
            name = node.func.id
            if name == 'LaunchConfiguration':
                if args[0] not in self.arguments:
                    raise LaunchFileError(f'LaunchConfiguration {args[0]!r} is not declared')
                return self.arguments[args[0]]
            if name == 'PathJoinSubstitution':
                if any(isinstance(part, list) for part in args[0]):
                    raise LaunchFileError(
                        f'line {node.lineno}: a list inside PathJoinSubstitution needs launch '
                        f'>= 3.4.5 (not every Jazzy release): concatenate outside it, '
                        f"[PathJoinSubstitution([...]), '.yaml']")
                return str(Path(*map(str, args[0])))
            if name == 'FindPackageShare':
                if args[0] != PACKAGE:
                    raise LaunchFileError(f'FindPackageShare({args[0]!r}): only {PACKAGE}')
                return str(self.share_dir)
            if name == 'IfCondition':
                return str(args[0]).lower() in ('true', '1')
            if name == 'DeclareLaunchArgument':
                default = self.value(kwargs['default_value']) if 'default_value' in kwargs \
                    else None
                self.arguments[args[0]] = self.overrides.get(args[0], _concatenated(default))
                return None
            if name == 'Node':
                values = {k: self.value(v) for k, v in kwargs.items()}
                params = values.get('parameters', [])
                self.nodes.append(NodeSpec(
                    package=values['package'], executable=values['executable'],
                    name=values.get('name', values['executable']),
                    enabled=values.get('condition', True),
                    params_files=[p for p in params if isinstance(p, str)],
                    parameters={k: v for p in params if isinstance(p, dict)
                                for k, v in p.items()},
                    remappings=[tuple(r) for r in values.get('remappings', [])],
                    arguments=[_concatenated(a) for a in values.get('arguments', [])]))
                return None
            if name == 'LaunchDescription':
                return None
        raise LaunchFileError(f'line {getattr(node, "lineno", "?")}: '
                              f'{ast.dump(node)[:80]} is not supported by the runner')


def read_launch_file(path: str | Path, share_dir: str | Path,
                     overrides: dict[str, str] | None = None) -> tuple[dict, list[NodeSpec]]:
    """Launch arguments (after overrides) and Node specs of a launch file."""
    tree = ast.parse(Path(path).read_text())
    function = next((n for n in tree.body if isinstance(n, ast.FunctionDef)
                     and n.name == 'generate_launch_description'), None)
    if function is None:
        raise LaunchFileError(f'{path} has no generate_launch_description()')
    returned = next(n for n in ast.walk(function) if isinstance(n, ast.Return))
    call = returned.value
    if not (isinstance(call, ast.Call) and getattr(call.func, 'id', '') == 'LaunchDescription'):
        raise LaunchFileError(f'{path} must return LaunchDescription([...])')
    overrides = dict(overrides or {})
    interpreter = _Interpreter(Path(share_dir), overrides)
    # Declarations first, in order, so later actions can resolve them.
    for action in call.args[0].elts:
        interpreter.value(action)
    unknown = sorted(set(overrides) - set(interpreter.arguments))
    if unknown:
        raise LaunchFileError(f'unknown launch argument(s) {unknown}; known: '
                              f'{sorted(interpreter.arguments)}')
    return interpreter.arguments, interpreter.nodes
