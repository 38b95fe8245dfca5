"""A planner that runs in a process of its own, behind the planner's own methods.

A node that plans in a thread shares one interpreter lock with the executor that sends each
state's command: while a plan runs Python between its stages, the command waits. A
``PlanProcess`` holds the planner in a child Python process and forwards ``plan``, ``reset``,
``reconfigure`` and ``warm_up_anytime`` to it; the caller blocks on a pipe (no lock held) and
gets the same ``Plan`` back. The child is started with ``python -m`` and speaks a small binary
protocol over its stdin and stdout: a length-prefixed JSON header, then raw float64 arrays. No
pickle crosses the pipe. The child exits when its stdin closes, so it never outlives its
parent.

The child's planner is built from the same bundle and overrides as the caller's, so its plans
are the caller's plans: same seed, same history, same stages.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from diffusion_planner_ros.planning.planner import Plan, SamplingDiverged

# How long the child may take to load its bundle and capture its stages before it is given up.
START_TIMEOUT_S = 120.0
_LENGTH = struct.Struct('<I')
# Errors the planner raises that the caller handles: re-raised as the same class.
_ERRORS = {cls.__name__: cls for cls in (ValueError, RuntimeError, SamplingDiverged)}


def pack(header: dict, arrays: dict | None = None) -> bytes:
    """Frame a message: the JSON header (naming each array's shape) then the arrays' bytes."""
    arrays = {name: np.ascontiguousarray(value, dtype=np.float64)
              for name, value in (arrays or {}).items() if value is not None}
    header = {**header, 'arrays': [[name, list(value.shape)] for name, value in arrays.items()]}
    text = json.dumps(header).encode()
    body = b''.join(value.tobytes() for value in arrays.values())
    return _LENGTH.pack(len(text)) + text + _LENGTH.pack(len(body)) + body


def unpack(read) -> tuple[dict, dict]:
    """Read one framed message with ``read(n)``; EOFError when the stream has ended."""
    header = json.loads(_read_exactly(read, _LENGTH.unpack(_read_exactly(read, 4))[0]))
    body = memoryview(_read_exactly(read, _LENGTH.unpack(_read_exactly(read, 4))[0]))
    arrays, offset = {}, 0
    for name, shape in header.pop('arrays'):
        size = 8 * int(np.prod(shape, dtype=np.int64))
        if offset + size > len(body):
            raise ValueError(f'message too short for array {name!r} of shape {shape}')
        arrays[name] = np.frombuffer(body[offset:offset + size], dtype=np.float64).reshape(shape)
        offset += size
    if offset != len(body):
        raise ValueError(f'message has {len(body) - offset} bytes past its arrays')
    return header, arrays


def _read_exactly(read, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = read(left)
        if not chunk:
            raise EOFError('the stream ended')
        chunks.append(chunk)
        left -= len(chunk)
    return b''.join(chunks)


def plan_message(plan: Plan) -> bytes:
    """Frame a Plan for the pipe."""
    return pack({'ok': True, 'timings_ms': plan.timings_ms, 'refine_steps': plan.refine_steps,
                 'refine_reason': plan.refine_reason},
                {'action': plan.action, 'actions': plan.actions,
                 'prior_states': plan.prior_states, 'refined_states': plan.refined_states})


def plan_from_message(header: dict, arrays: dict) -> Plan:
    """Rebuild the Plan that plan_message framed."""
    return Plan(action=arrays['action'], actions=arrays['actions'],
                prior_states=arrays.get('prior_states'),
                refined_states=arrays['refined_states'], timings_ms=header['timings_ms'],
                refine_steps=header['refine_steps'], refine_reason=header['refine_reason'])


class PlanProcess:
    """A bundle's planner in a child process, with the planner's plan/reset/reconfigure.

    ``options`` are load_planner's keywords (device, backend, threads and PlannerConfig
    overrides). ``nice`` raises the child's nice value (Linux), so the caller's threads and the
    robot's other processes get the CPU first when both are ready. ``anytime`` measures every
    refinement step count before the first plan (warm_up_anytime). Construction returns once
    the child has loaded the bundle and captured its stages; a child that fails to start raises
    RuntimeError with its reason.
    """

    def __init__(self, bundle_path: str | Path, options: dict, nice: int = 0,
                 anytime: bool = False, torch_threads: int = 1):
        spec = {'bundle': str(bundle_path), 'options': options, 'nice': int(nice),
                'anytime': bool(anytime), 'torch_threads': int(torch_threads)}
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env['PYTHONPATH'] = os.pathsep.join(
            [package_root] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
        self._child = subprocess.Popen(
            [sys.executable, '-m', 'diffusion_planner_ros.planning.plan_process',
             json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self._lock = threading.Lock()
        self.pid = self._child.pid
        timer = threading.Timer(START_TIMEOUT_S, self._child.kill)
        timer.start()
        try:
            header, _ = self._receive()
        except EOFError:
            self.close()
            raise RuntimeError(f'the planning process exited while starting (code '
                               f'{self._child.wait()}); its errors are above') from None
        finally:
            timer.cancel()
        if not header.get('ok'):
            self.close()
            raise _ERRORS.get(header.get('error'), RuntimeError)(header.get('message', ''))
        self.backend = header['backend']
        self.backend_reason = header['backend_reason']
        self.fallback_reasons = header['fallback_reasons']
        self.nice = header['nice']

    def _receive(self) -> tuple[dict, dict]:
        return unpack(self._child.stdout.read)

    def _call(self, header: dict, arrays: dict | None = None) -> tuple[dict, dict]:
        with self._lock:
            if self._child.poll() is not None:
                raise RuntimeError(f'the planning process has exited (code '
                                   f'{self._child.returncode})')
            try:
                self._child.stdin.write(pack(header, arrays))
                self._child.stdin.flush()
                reply, reply_arrays = self._receive()
            except (EOFError, BrokenPipeError, OSError) as error:
                raise RuntimeError(f'the planning process stopped answering: {error}') from None
        if not reply.get('ok'):
            raise _ERRORS.get(reply.get('error'), RuntimeError)(reply.get('message', ''))
        return reply, reply_arrays

    def plan(self, observation, goal=None, returns_to_go=None,
             budget_ms: float | None = None) -> Plan:
        """Plan in the child: BasePlanner.plan's arguments and result."""
        arrays = {'observation': np.asarray(observation, dtype=np.float64)}
        if goal is not None:
            arrays['goal'] = np.asarray(goal, dtype=np.float64)
        header = {'call': 'plan', 'budget_ms': budget_ms,
                  'returns_to_go': None if returns_to_go is None else float(returns_to_go)}
        return plan_from_message(*self._call(header, arrays))

    def reset(self) -> None:
        """Forget the child planner's history (an episode or goal starts)."""
        self._call({'call': 'reset'})

    def reconfigure(self, **changes) -> None:
        """Change the child planner's settings (BasePlanner.reconfigure), all or none."""
        self._call({'call': 'reconfigure', 'changes': changes})

    def warm_up_anytime(self) -> None:
        """Measure the child's refinement steps for planning under a budget."""
        self._call({'call': 'warm_up_anytime'})

    def close(self) -> None:
        """End the child: its stdin closes, it exits; killed if it does not within 5 s."""
        if self._child.poll() is None:
            try:
                self._child.stdin.close()
            except OSError:
                pass
            try:
                self._child.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                self._child.kill()
                self._child.wait()
        for stream in (self._child.stdin, self._child.stdout):
            try:
                stream.close()
            except OSError:
                pass


def _error(error: Exception) -> bytes:
    name = type(error).__name__ if type(error).__name__ in _ERRORS else 'RuntimeError'
    return pack({'ok': False, 'error': name, 'message': str(error)})


def serve(spec: dict, read, write) -> None:
    """Run the child: build the planner, say it is ready, answer calls until EOF."""
    # Import here: the parent's import of this module needs neither torch nor the models.
    from diffusion_planner_ros.planning import load_planner
    from diffusion_planner_ros.planning.threads import configure_threads, lower_thread_priority

    from diffusion_planner_ros.scheduling import rank_planning_threads

    # Threads created from here on (ONNX Runtime's, torch's) inherit the nice value, and the
    # planning priority: one below the node's SCHED_FIFO priority (thread_priority).
    nice = lower_thread_priority(spec['nice']) if spec['nice'] else None
    rank_planning_threads()
    try:
        configure_threads(spec['torch_threads'])
        planner = load_planner(spec['bundle'], **spec['options'])
        planner.warm_up()
        if spec['anytime'] and hasattr(planner, 'warm_up_anytime'):
            planner.warm_up_anytime()
    except Exception as error:  # noqa: B902 - the parent reports whatever stopped the start
        write(_error(error))
        return
    write(pack({'ok': True, 'backend': planner.backend, 'backend_reason': planner.backend_reason,
                'fallback_reasons': list(planner.fallback_reasons), 'nice': nice}))
    while True:
        try:
            header, arrays = unpack(read)
        except EOFError:
            return
        try:
            if header['call'] == 'plan':
                reply = plan_message(planner.plan(
                    arrays['observation'], goal=arrays.get('goal'),
                    returns_to_go=header['returns_to_go'], budget_ms=header['budget_ms']))
            elif header['call'] == 'reset':
                planner.reset()
                reply = pack({'ok': True})
            elif header['call'] == 'reconfigure':
                planner.reconfigure(**header['changes'])
                reply = pack({'ok': True})
            elif header['call'] == 'warm_up_anytime':
                if hasattr(planner, 'warm_up_anytime'):
                    planner.warm_up_anytime()
                reply = pack({'ok': True})
            else:
                reply = pack({'ok': False, 'error': 'ValueError',
                              'message': f'unknown call {header["call"]!r}'})
        except (ValueError, RuntimeError) as error:
            reply = _error(error)
        write(reply)


def main() -> None:
    """Run as the child: the spec as JSON in argv[1], the protocol on stdin and stdout."""
    # The child ends when its parent closes the pipe, not on the terminal's Ctrl-C, which
    # reaches the whole process group: the parent stops planning first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The protocol owns the real stdout; anything printed (by a library) goes to stderr.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), 'wb', buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    stdin = sys.stdin.buffer.raw

    def write(message: bytes) -> None:
        view = memoryview(message)
        while view:
            view = view[protocol.write(view):]

    serve(json.loads(sys.argv[1]), stdin.read, write)


if __name__ == '__main__':
    main()
