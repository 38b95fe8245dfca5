"""Fast paths for the planner's stages: a CUDA graph on a GPU, ONNX Runtime on a CPU.

A plan is a handful of small networks run on batch 1, so its time goes to launching kernels and
dispatching ops, not to arithmetic. Both paths remove that overhead by capturing a stage once and
replaying it each tick:

- ``cuda_graph``: the stage's kernels are recorded into a CUDA graph that reads static input
  buffers; a tick copies the inputs in and replays the graph. No host sync until a result is read.
- ``onnx``: the stage is exported to ONNX and run by an ONNX Runtime CPU session (fused kernels,
  no Python between ops). What is exported is a copy rewritten into the ops ONNX Runtime runs
  fastest, the same function to float rounding (models/onnx_friendly.py).
- ``eager``: the stage module itself, under inference mode.

A stage is captured once per input signature (shapes, dtypes, device): a new signature, such as
another horizon, captures again rather than replaying a graph of the wrong shape. If a capture
fails the stage runs eagerly from then on and ``fallback_reason`` says why.

Exporting a stage to ONNX takes seconds (about 13 s for a maze bundle's three stages on a 2-core
CPU, most of a planner node's start), so exported models are kept on disk, keyed by everything
that shapes them (see ``OnnxStage._cache_key``), in ``$DIFFUSION_PLANNER_CACHE_DIR`` (default
``$XDG_CACHE_HOME/diffusion_planner_ros``, else ``~/.cache/diffusion_planner_ros``);
``DIFFUSION_PLANNER_CACHE_DIR=off`` exports every time. The files are ONNX protobufs, not pickles.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from diffusion_planner_ros.config import BACKENDS
from diffusion_planner_ros.models.onnx_friendly import onnx_friendly

LOG = logging.getLogger(__name__)

# Exported ONNX models by content (weights, stage settings, input signature, the code that
# exports them): planners built from the same bundle in one process export once, and on disk
# (onnx_cache_dir) once per machine.
_ONNX_CACHE: dict[str, bytes] = {}
CACHE_ENV = 'DIFFUSION_PLANNER_CACHE_DIR'
# The exported files kept on disk at most; the least recently used go first.
CACHE_LIMIT_BYTES = 1 << 30
# The code whose change changes an exported graph: the stage and network modules, the diffusion
# schedule and sampler they call, and the ONNX rewrite and export here.
_EXPORTED_CODE = ('planning/stages.py', 'planning/accelerate.py', 'models', 'diffusion')
_code_digest: str | None = None


def onnx_cache_dir() -> Path | None:
    """Return the folder of exported ONNX models kept between runs (None: the cache is off)."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen is not None:
        return None if chosen.strip().lower() in ('', 'off') else Path(chosen) / 'onnx'
    base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
    return Path(base) / 'diffusion_planner_ros' / 'onnx'


def _exported_code_digest() -> str:
    """Hash of the package source that an exported graph depends on (computed once)."""
    global _code_digest
    if _code_digest is None:
        package = Path(__file__).resolve().parents[1]
        digest = hashlib.sha256(torch.__version__.encode())
        for entry in _EXPORTED_CODE:
            path = package / entry
            for source in sorted(path.rglob('*.py')) if path.is_dir() else [path]:
                digest.update(str(source.relative_to(package)).encode())
                digest.update(source.read_bytes())
        _code_digest = digest.hexdigest()
    return _code_digest


def _read_cached(key: str) -> bytes | None:
    folder = onnx_cache_dir()
    if folder is None:
        return None
    path = folder / f'{key}.onnx'
    try:
        data = path.read_bytes()
        os.utime(path)  # recently used: pruned last
    except OSError:
        return None
    return data or None


def _write_cached(key: str, data: bytes) -> None:
    """Keep an exported model on disk (atomically; a cache that cannot be written is skipped)."""
    folder = onnx_cache_dir()
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, suffix='.part', delete=False) as handle:
            handle.write(data)
        os.replace(handle.name, folder / f'{key}.onnx')
        files = sorted(((f.stat(), f) for f in folder.glob('*.onnx')),
                       key=lambda entry: entry[0].st_mtime, reverse=True)
        kept = 0
        for stat, file in files:
            kept += stat.st_size
            if kept > CACHE_LIMIT_BYTES:
                file.unlink(missing_ok=True)
    except OSError as error:
        LOG.info('ONNX export cache %s not written: %s', folder, error)


def _forget_cached(key: str) -> None:
    """Drop an exported model from memory and disk (one ONNX Runtime could not load)."""
    _ONNX_CACHE.pop(key, None)
    folder = onnx_cache_dir()
    if folder is not None:
        (folder / f'{key}.onnx').unlink(missing_ok=True)


def onnxruntime_available() -> bool:
    """Whether the optional ONNX Runtime dependency (the ``fast`` extra) is installed."""
    return (importlib.util.find_spec('onnxruntime') is not None
            and importlib.util.find_spec('onnx') is not None)


def choose_backend(requested: str, device: torch.device) -> tuple[str, str]:
    """Resolve 'auto' to the fastest path available on ``device``; returns (backend, reason).

    An explicit request that cannot run on ``device`` is an error; 'auto' falls back to eager
    and says why.
    """
    if requested not in BACKENDS:
        raise ValueError(f'planner backend {requested!r} must be one of {BACKENDS}')
    if requested == 'cuda_graph' and device.type != 'cuda':
        raise ValueError(f"backend 'cuda_graph' needs a CUDA device, the planner is on {device}")
    if requested == 'onnx':
        if device.type != 'cpu':
            raise ValueError(f"backend 'onnx' runs on the CPU, the planner is on {device}")
        if not onnxruntime_available():
            raise ImportError("backend 'onnx' needs onnx and onnxruntime: "
                              "pip install 'diffusion_planner_ros[fast]'")
    if requested != 'auto':
        return requested, 'asked for'
    if device.type == 'cuda':
        return 'cuda_graph', 'CUDA device'
    if device.type == 'cpu':
        if onnxruntime_available():
            return 'onnx', 'CPU with onnxruntime'
        return 'eager', ("onnxruntime is not installed (pip install 'diffusion_planner_ros[fast]' "
                         'for the faster CPU path)')
    return 'eager', f'no captured path for device type {device.type!r}'


def _signature(inputs: tuple) -> tuple:
    return tuple((tuple(x.shape), x.dtype, str(x.device)) for x in inputs)


class Stage:
    """A stage module run eagerly: the reference every captured path must reproduce."""

    backend = 'eager'

    def __init__(self, module: nn.Module):
        self.module = module.eval()
        self.fallback_reason: str | None = None

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Run the stage on tensors; returns its output tensor."""
        with torch.inference_mode():
            return self.module(*inputs)


class CapturedStage(Stage):
    """A stage captured once per input signature and replayed; eager if capture fails."""

    def __init__(self, module: nn.Module):
        super().__init__(module)
        self._captures: dict[tuple, object] = {}

    @property
    def captures(self) -> int:
        """How many input signatures have been captured so far."""
        return len(self._captures)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Replay the capture for these inputs' signature, capturing it first if new."""
        if self.fallback_reason is not None:
            return super().__call__(*inputs)
        key = _signature(inputs)
        if key not in self._captures:
            try:
                self._captures[key] = self._capture(inputs)
            except Exception as error:  # noqa: BLE001 - any capture failure means: run eagerly
                self.fallback_reason = (f'{self.backend} capture of {type(self.module).__name__} '
                                        f'failed ({type(error).__name__}: {error}); running eager')
                LOG.warning(self.fallback_reason)
                return super().__call__(*inputs)
        return self._replay(self._captures[key], inputs)

    def _capture(self, inputs: tuple):
        raise NotImplementedError

    def _replay(self, capture, inputs: tuple) -> torch.Tensor:
        raise NotImplementedError


class CudaGraphStage(CapturedStage):
    """Replay a CUDA graph recorded from the stage with static input and output buffers.

    The returned tensor is the graph's output buffer: read it (or copy it into another stage's
    input) before this stage runs again.
    """

    backend = 'cuda_graph'

    def _capture(self, inputs: tuple):
        static_inputs = [x.detach().clone() for x in inputs]
        # Warm up on a side stream (lazy initialisations must not be recorded), then record.
        stream = torch.cuda.Stream(device=static_inputs[0].device)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):
                self.module(*static_inputs)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            static_output = self.module(*static_inputs)
        return graph, static_inputs, static_output

    def _replay(self, capture, inputs: tuple) -> torch.Tensor:
        graph, static_inputs, static_output = capture
        for buffer, value in zip(static_inputs, inputs):
            buffer.copy_(value)
        graph.replay()
        return static_output


class OnnxStage(CapturedStage):
    """Run the stage as an ONNX Runtime CPU session exported from the module."""

    backend = 'onnx'

    def __init__(self, module: nn.Module, threads: int = 1):
        super().__init__(module)
        self.threads = threads

    def _cache_key(self, inputs: tuple) -> str:
        """Hash of what shapes the exported graph: code, torch, settings, signature, weights."""
        digest = hashlib.sha256(_exported_code_digest().encode())
        digest.update(repr(self.module).encode())
        digest.update(repr(_signature(inputs)).encode())
        for name, tensor in self.module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def _capture(self, inputs: tuple):
        key = self._cache_key(inputs)
        model = _ONNX_CACHE.get(key) or _read_cached(key)
        session = None
        if model is not None:
            try:
                session = self._session(model)
            except Exception as error:  # noqa: BLE001 - a damaged cached file: export again
                LOG.warning('cached ONNX model %s could not be loaded (%s); exporting again',
                            key[:12], error)
                _forget_cached(key)
        if session is None:
            model = self._export(inputs)
            _write_cached(key, model)
            session = self._session(model)
        _ONNX_CACHE[key] = model
        # The exporter drops inputs the graph does not read (noise at noise_scale 0).
        kept = [int(arg.name.split('_')[1]) for arg in session.get_inputs()]
        return session, kept

    def _export(self, inputs: tuple) -> bytes:
        """Export the stage (rewritten into ONNX Runtime's fastest ops) for these inputs."""
        names = [f'input_{index}' for index in range(len(inputs))]
        # The same function in the ops ONNX Runtime runs fastest (models/onnx_friendly.py).
        module = onnx_friendly(self.module)
        buffer = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter('ignore')
            try:
                # The TorchScript exporter: seconds per stage where torch.export takes tens.
                torch.onnx.export(module, tuple(inputs), buffer, input_names=names,
                                  output_names=['output'], dynamo=False)
            except Exception as error:  # noqa: BLE001 - deprecated since torch 2.9
                LOG.info('TorchScript ONNX export failed (%s); using torch.export', error)
                buffer = io.BytesIO()
                torch.onnx.export(module, tuple(inputs), buffer, input_names=names,
                                  output_names=['output'], dynamo=True)
        return buffer.getvalue()

    def _session(self, model: bytes):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        return onnxruntime.InferenceSession(model, options, providers=['CPUExecutionProvider'])

    def _replay(self, capture, inputs: tuple) -> torch.Tensor:
        session, kept = capture
        feed = {f'input_{index}': inputs[index].detach().numpy() for index in kept}
        return torch.from_numpy(session.run(None, feed)[0])


def make_stage(module: nn.Module, backend: str, threads: int = 1) -> Stage:
    """Wrap a stage module for a resolved backend (see choose_backend)."""
    if backend == 'cuda_graph':
        return CudaGraphStage(module)
    if backend == 'onnx':
        return OnnxStage(module, threads)
    if backend == 'eager':
        return Stage(module)
    raise ValueError(f'unknown backend {backend!r}')
