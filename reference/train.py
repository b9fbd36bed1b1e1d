"""Golden-model training in fp32 or dynamic fixed point, with calibration, metrics and traces.

Precision modes (:class:`Precision`): ``fp32`` is plain float32 NumPy; ``dfp32``, ``dfp16`` and
``dfp8`` run every matrix multiply and elementwise operation of the forward pass, the backward
pass and the SGD update as a command of a :class:`~reference.engine.Engine`. A
:class:`PrecisionSpec` gives each :class:`~reference.layers.TensorClass` a width and a rounding
mode; it is uniform for ``dfpN`` (nearest even everywhere except the weight update, which
rounds stochastically) or read from a TOML file (:func:`load_precision`).

Point positions: a calibration pass (one float32 forward, backward and update on the first
batch; :func:`reference.stats.float_stats` and :func:`reference.stats.next_frac`) sets every
tensor id's initial setting; after every iteration :meth:`Engine.update_formats` (the
POLICY_UPDATE command) moves each auto-update id to the policy's choice. The two host-loaded
tensors (the input images and the loss gradient) are not auto-updated: the host applies the
same policy to the float data of each batch before converting it.

State carried to the next iteration (weights and velocities) is then re-formatted by the host
to its id's new setting (:func:`reformat_state`: round to nearest even, saturate), because the
core reads every operand in the format its settings-register entry holds.
"""

from __future__ import annotations

import enum
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import kernels
from .config import load_config
from .data import Dataset
from .engine import Engine
from .formats import (
    FRAC_MAX,
    FRAC_MIN,
    DfpFormat,
    DfpTensor,
    RoundingMode,
    TensorSetting,
    Width,
    requantize_left,
    round_shift,
    saturate,
    setting_of,
)
from .layers import (
    Backend,
    DfpBackend,
    FloatBackend,
    Layer,
    Param,
    Ref,
    TensorClass,
    sgd_step,
    softmax_cross_entropy,
)
from .models import GradOrder, Model, ModelKind, build_model
from .nets import BUILTIN_NETS
from .rng import MASK32
from .stats import DEFAULT_HEADROOM, DEFAULT_RISE, DEFAULT_THRESHOLD, Database, PolicyParams, float_stats, next_frac
from .trace import Trace, TraceRecorder

#: Default host re-run threshold: a command whose result overflows in more than this many
#: 2**-16 of its values is re-run with a lower point position (:meth:`Engine.run`); 655 ~ 1%.
DEFAULT_RERUN = 655


class Precision(enum.Enum):
    FP32 = "fp32"
    DFP32 = "dfp32"
    DFP16 = "dfp16"
    DFP8 = "dfp8"

    @property
    def width(self) -> Width | None:
        return {"fp32": None, "dfp32": Width.W32, "dfp16": Width.W16, "dfp8": Width.W8}[self.value]


ROUNDING_NAMES: dict[str, RoundingMode] = {
    "nearest-even": RoundingMode.NEAREST_EVEN,
    "floor": RoundingMode.FLOOR,
    "stochastic": RoundingMode.STOCHASTIC,
}

#: Tensor classes a precision config may set (the others follow their operands).
CONFIG_CLASSES = (TensorClass.ACTIVATION, TensorClass.ERROR, TensorClass.WEIGHT, TensorClass.GRADIENT,
                  TensorClass.VELOCITY)


@dataclass(frozen=True)
class ClassSpec:
    width: Width
    rounding: RoundingMode


@dataclass(frozen=True)
class PrecisionSpec:
    """Width and rounding of each configurable tensor class, and the point-position policy.

    ``threshold``, ``headroom`` and ``rise`` are the THRESHOLD register's fields
    (:class:`reference.stats.PolicyParams`); ``rerun`` is the host's re-run threshold in units
    of 2**-16 of a command's values (:attr:`Engine.rerun_threshold`; None: no re-runs).
    """

    activation: ClassSpec
    error: ClassSpec
    weight: ClassSpec
    gradient: ClassSpec
    velocity: ClassSpec
    threshold: int = DEFAULT_THRESHOLD
    headroom: int = DEFAULT_HEADROOM
    rise: int = DEFAULT_RISE
    rerun: int | None = DEFAULT_RERUN

    def __post_init__(self) -> None:
        PolicyParams(self.threshold, self.headroom, self.rise)
        if self.rerun is not None and (isinstance(self.rerun, bool) or not isinstance(self.rerun, int)
                                       or not 0 <= self.rerun < 1 << 16):
            raise ValueError(f"precision: rerun={self.rerun!r}: must be None or an integer in [0, 65536)")

    @property
    def policy(self) -> PolicyParams:
        return PolicyParams(self.threshold, self.headroom, self.rise)

    def for_class(self, cls: TensorClass) -> ClassSpec:
        return getattr(self, cls.value)

    @classmethod
    def uniform(cls, width: Width, threshold: int = DEFAULT_THRESHOLD, headroom: int = DEFAULT_HEADROOM,
                rise: int = DEFAULT_RISE, rerun: int | None = DEFAULT_RERUN) -> PrecisionSpec:
        """One width everywhere; nearest even except the weight update (stochastic)."""
        ne = ClassSpec(width, RoundingMode.NEAREST_EVEN)
        return cls(ne, ne, ClassSpec(width, RoundingMode.STOCHASTIC), ne, ne, threshold, headroom, rise, rerun)

    def to_dict(self) -> dict[str, Any]:
        names = {v: k for k, v in ROUNDING_NAMES.items()}
        d: dict[str, Any] = {c.value: {"width": self.for_class(c).width.bits,
                                       "rounding": names[self.for_class(c).rounding]} for c in CONFIG_CLASSES}
        d["threshold"] = self.threshold
        d["headroom"] = self.headroom
        d["rise"] = self.rise
        d["rerun"] = self.rerun
        return d


def _class_spec(table: Any, base: ClassSpec, where: str) -> ClassSpec:
    if not isinstance(table, dict):
        raise ValueError(f"precision config: [{where}] must be a table, got {table!r}")
    unknown = set(table) - {"width", "rounding"}
    if unknown:
        raise ValueError(f"precision config: [{where}]: unknown field(s) {sorted(unknown)}; known: rounding, width")
    width, rounding = base.width, base.rounding
    if "width" in table:
        w = table["width"]
        if isinstance(w, bool) or w not in (8, 16, 32):
            raise ValueError(f"precision config: [{where}] width={w!r}: must be 8, 16 or 32")
        width = Width.from_bits(w)
    if "rounding" in table:
        r = table["rounding"]
        if r not in ROUNDING_NAMES:
            raise ValueError(f"precision config: [{where}] rounding={r!r}: must be one of {sorted(ROUNDING_NAMES)}")
        rounding = ROUNDING_NAMES[r]
    return ClassSpec(width, rounding)


def parse_precision(data: dict, base_width: Width = Width.W16, where: str = "config") -> PrecisionSpec:
    """A :class:`PrecisionSpec` from a parsed TOML document (see ``docs/training.md``).

    ``[precision]`` may set ``width`` and ``rounding`` for every class and ``threshold``;
    ``[precision.<class>]`` tables (activation, error, weight, gradient, velocity) override them.
    Weights round stochastically unless their table (not the top level) says otherwise.
    """
    if "precision" not in data or not isinstance(data["precision"], dict):
        raise ValueError(f"precision config: {where}: needs a [precision] table")
    table = dict(data["precision"])
    extra = set(data) - {"precision"}
    if extra:
        raise ValueError(f"precision config: {where}: unknown table(s) {sorted(extra)}; known: precision")
    threshold = table.pop("threshold", DEFAULT_THRESHOLD)
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not 0 <= threshold < 1 << 16:
        raise ValueError(f"precision config: [precision] threshold={threshold!r}: must be an integer in [0, 65536)")
    policy: dict[str, Any] = {}
    for key, default, hi in (("headroom", DEFAULT_HEADROOM, 4), ("rise", DEFAULT_RISE, 4),
                             ("rerun", DEFAULT_RERUN, 1 << 16)):
        v = table.pop(key, default)
        if key == "rerun" and v is False:
            v = None
        elif isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < hi:
            raise ValueError(f"precision config: [precision] {key}={v!r}: must be an integer in [0, {hi})"
                             + (" or false" if key == "rerun" else ""))
        policy[key] = v
    per_class = {c.value: table.pop(c.value) for c in CONFIG_CLASSES if c.value in table}
    for k, v in per_class.items():
        if not isinstance(v, dict):
            raise ValueError(f"precision config: {where}: {k} = {v!r}: [precision.{k}] must be a table "
                             f"(e.g. [precision.{k}] width = 16)")
    top = _class_spec(table, ClassSpec(base_width, RoundingMode.NEAREST_EVEN), "precision")
    specs = {}
    for c in CONFIG_CLASSES:
        base = top
        if c == TensorClass.WEIGHT and "rounding" not in per_class.get(c.value, {}):
            base = ClassSpec(top.width, RoundingMode.STOCHASTIC)
        specs[c.value] = _class_spec(per_class.get(c.value, {}), base, f"precision.{c.value}")
    return PrecisionSpec(**specs, threshold=threshold, **policy)


def load_precision(path: str | Path, base_width: Width = Width.W16) -> PrecisionSpec:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"precision config: {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"precision config: {path}: malformed TOML: {exc}") from exc
    return parse_precision(data, base_width, str(path))


@dataclass(frozen=True)
class IterSpec:
    """Which iterations to trace: ``all``, or iteration indices and inclusive ranges (kept as ranges)."""

    all: bool = False
    iters: frozenset[int] = frozenset()
    ranges: tuple[tuple[int, int], ...] = ()

    def __contains__(self, it: int) -> bool:
        return self.all or it in self.iters or any(a <= it <= b for a, b in self.ranges)

    @property
    def empty(self) -> bool:
        return not self.all and not self.iters and not self.ranges

    @property
    def last(self) -> int | None:
        """The largest index named (None for ``all`` or none)."""
        ends = [*self.iters, *(b for _, b in self.ranges)]
        return None if self.all or not ends else max(ends)

    def indices(self, n: int) -> list[int]:
        """The selected indices below ``n``, ascending (work bounded by ``n`` and the spec's length)."""
        if self.all:
            return list(range(n))
        out = {i for i in self.iters if i < n}
        for a, b in self.ranges:
            out.update(range(a, min(b, n - 1) + 1))
        return sorted(out)

    def to_json(self) -> str | list[int | list[int]]:
        """``"all"``, or the ascending indices, a range of more than 16 written ``[first, last]``."""
        if self.all:
            return "all"
        big = [(a, b) for a, b in self.ranges if b - a >= 16]
        ints = {i for i in self.iters if not any(a <= i <= b for a, b in big)}
        for a, b in self.ranges:
            if b - a < 16:
                ints.update(range(a, b + 1))
        return [*sorted(ints), *([a, b] for a, b in big)]

    def check_within(self, n: int, what: str = "trace-iters") -> None:
        """ValueError if an index is ``>= n`` (a run of ``n`` iterations)."""
        last = self.last
        if last is not None and last >= n:
            raise ValueError(f"{what}: iteration {last} is past the end: this run has {n} iterations "
                             f"(0-{n - 1}; 'all' selects every one)")

    @classmethod
    def parse(cls, spec: str | None) -> IterSpec:
        """``"all"``, ``""``/``"none"``, or comma-separated indices and ranges (``0,5,10-12``).

        Ranges stay ranges: parsing ``0-1000000000`` takes no memory.
        """
        if spec is None or spec.strip() in ("", "none"):
            return cls()
        s = spec.strip()
        if s == "all":
            return cls(all=True)
        single: set[int] = set()
        ranges: list[tuple[int, int]] = []
        for part in s.split(","):
            part = part.strip()
            try:
                if "-" in part[1:]:
                    a, b = (int(v) for v in part.split("-", 1))
                    if a > b:
                        raise ValueError
                    ranges.append((a, b))
                else:
                    single.add(int(part))
            except ValueError:
                raise ValueError(f"trace-iters: {part!r} in {spec!r} is not an iteration index or range a-b") from None
        if any(i < 0 for i in single) or any(a < 0 for a, _ in ranges):
            raise ValueError(f"trace-iters: {spec!r}: iteration indices must be >= 0")
        return cls(iters=frozenset(single), ranges=tuple(sorted(set(ranges))))


class LrSchedule(enum.Enum):
    """Learning rate per epoch ``e`` of ``E``: constant, or cosine ``lr * (1 + cos(pi * e / E)) / 2``."""

    CONSTANT = "constant"
    COSINE = "cosine"

    def at(self, lr: float, epoch: int, epochs: int) -> float:
        if self == LrSchedule.CONSTANT:
            return lr
        return float(lr * 0.5 * (1.0 + np.cos(np.pi * epoch / epochs)))


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (with the data set)."""

    #: The network: a built-in name (``cnn``, ``mlp``, ``lenet5``, ...; a :class:`ModelKind` is taken as its
    #: name) or a network file (:mod:`reference.nets`).
    model: str = "cnn"
    precision: Precision = Precision.DFP16
    spec: PrecisionSpec | None = None
    epochs: int = 15
    batch: int = 32
    lr: float = 0.05
    lr_schedule: LrSchedule = LrSchedule.COSINE
    momentum: float = 0.9
    weight_decay: float = 1e-4
    seed: int = 0
    trace_iters: IterSpec = IterSpec()
    grad_order: GradOrder = GradOrder.INPUT_FIRST
    core: str = "default"
    #: An ONNX file whose initializers seed the weights (instead of He-normal), see reference.onnx_import.
    init_from: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.model, ModelKind):
            object.__setattr__(self, "model", self.model.value)
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"train: model={self.model!r}: must be a network name or file")
        if self.model not in BUILTIN_NETS and not Path(self.model).is_file():
            raise ValueError(f"train: net {self.model!r}: not a built-in ({', '.join(sorted(BUILTIN_NETS))}) "
                             "and no such file")
        for name in ("epochs", "batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"train: {name}={v!r}: must be an integer >= 1")
        for name in ("lr", "momentum", "weight_decay"):
            v = getattr(self, name)
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"train: {name}={v!r}: must be finite and >= 0")
        if self.lr == 0:
            raise ValueError("train: lr=0: the learning rate must be > 0")
        if self.momentum >= 1:
            raise ValueError(f"train: momentum={self.momentum!r}: must be < 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MASK32:
            raise ValueError(f"train: seed={self.seed!r}: must be an integer in [0, 2**32)")
        try:
            load_config(self.core)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"train: core={self.core!r}: {exc}") from None
        if self.precision == Precision.FP32 and (self.spec is not None or not self.trace_iters.empty):
            raise ValueError("train: precision=fp32 takes no precision config and no trace (use a dfp mode)")
        self._check_core_widths()

    def _check_core_widths(self) -> None:
        """ValueError if the precision uses a width the core has no datapath for (up front, not mid-run)."""
        spec = self.precision_spec()
        if spec is None:
            return
        core = load_config(self.core)
        need = {spec.for_class(c).width.bits for c in CONFIG_CLASSES}
        lacking = sorted(need - set(core.widths))
        if lacking:
            raise ValueError(f"train: core={self.core!r} has widths {list(core.widths)}; the precision needs "
                             f"{'/'.join(map(str, lacking))}-bit data (choose a core with it, or another precision)")

    def precision_spec(self) -> PrecisionSpec | None:
        if self.precision == Precision.FP32:
            return None
        return self.spec if self.spec is not None else PrecisionSpec.uniform(self.precision.width)

    def to_dict(self) -> dict[str, Any]:
        spec = self.precision_spec()
        return {
            "model": self.model, "precision": self.precision.value,
            "precision_spec": None if spec is None else spec.to_dict(),
            "epochs": self.epochs, "batch": self.batch, "lr": self.lr, "lr_schedule": self.lr_schedule.value,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay, "seed": self.seed, "grad_order": self.grad_order.value,
            "core": self.core,
            "trace_iters": self.trace_iters.to_json(),
            **({"init_from": self.init_from} if self.init_from else {}),
        }


@dataclass
class TrainResult:
    """Metrics (JSON-ready), the trace (dfp modes with traced iterations) and the final state."""

    metrics: dict[str, Any]
    trace: Trace | None
    model: Model
    engine: Engine | None
    epoch_times: list[float] = field(default_factory=list)
    epoch_cpu: list[float] = field(default_factory=list)


# ---------------------------------------------------------------------------------------


def _host_setting(engine: Engine, tid: int, x: np.ndarray, threshold: int) -> None:
    """The host picks the point position of data it is about to load, by the same policy."""
    s = engine.setting(tid)
    frac = next_frac(float_stats(x, engine.cfg), s.fmt.width, s.fmt.frac, engine.cfg, threshold)
    engine.set_setting(tid, setting_of(s.fmt.width, frac, s.rounding, False))


def calibrate(model: Model, values: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, cfg: TrainConfig,
              engine: Engine, spec: PrecisionSpec) -> dict[int, int]:
    """Initial settings of every tensor id from one float32 step on the first batch; returns tid -> F."""
    db = Database(engine.cfg)

    def observe(tid: int, v: np.ndarray) -> None:
        if tid >= 0:
            db.accumulate(tid, float_stats(v, engine.cfg))

    be = FloatBackend(np.float32, observe)
    model.bind(be, values)
    logits = model.forward(be, be.load(model.input_tid, model.input_matrix(x)))
    _, g, _ = softmax_cross_entropy(be.to_float(logits), y)
    model.backward(be, be.load(model.logits_err_tid, g), cfg.grad_order)
    sgd_step(be, model.params(), cfg.lr, cfg.momentum, cfg.weight_decay)
    fracs = {}
    host = {model.input_tid, model.logits_err_tid}
    for info in model.ids.infos:
        cs = spec.for_class(info.cls)
        default = int(np.clip(cs.width.bits - 2, FRAC_MIN, FRAC_MAX))  # range about +-2 until measured
        frac = next_frac(db.read(info.tid), cs.width, default, engine.cfg, spec.threshold,
                         spec.headroom if info.tid not in host else 0)
        engine.set_setting(info.tid, TensorSetting(DfpFormat(cs.width, frac), cs.rounding, info.tid not in host))
        fracs[info.tid] = frac
    return fracs


def _evaluate(model: Model, be: Backend, engine: Engine | None, x: np.ndarray, y: np.ndarray,
              threshold: int, batch: int = 512) -> float:
    from .isa import MAX_DIM

    h, w, _ = model.image_hwc
    batch = max(1, min(batch, MAX_DIM // (h * w)))  # a CNN's rows are N*H*W: keep commands legal
    correct = 0
    model.training = False
    try:
        for i in range(0, len(x), batch):
            xm = model.input_matrix(x[i:i + batch])
            if engine is not None:
                _host_setting(engine, model.input_tid, xm, threshold)
            logits = model.forward(be, be.load(model.input_tid, xm))
            correct += int(np.count_nonzero(np.argmax(be.to_float(logits), axis=1) == y[i:i + batch]))
    finally:
        model.training = True
    return correct / len(x)


def train(cfg: TrainConfig, data: Dataset, progress: bool = False,
          on_grads_ready: Callable[[Layer], None] | None = None,
          warn: Callable[[str], None] | None = None) -> TrainResult:
    """Train ``cfg.model`` on ``data``; deterministic for ``cfg.seed`` (wall times aside).

    ``train_acc`` of an epoch is the running accuracy of the training forward passes of that
    epoch; ``test_acc`` is measured after the epoch. ``time_s`` and ``cpu_s`` are the wall and
    CPU time of the epoch's training iterations (evaluation excluded).

    BLAS runs single-threaded: the matrices are small, and on a shared, loaded machine
    OpenBLAS's worker threads spin, inflating an fp32 epoch up to 30-fold.

    ``warn`` receives the overflow monitor's warning lines (:class:`TensorLog`); they are also
    in ``metrics["monitor"]``.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return _train(cfg, data, progress, on_grads_ready, warn)


def _train(cfg: TrainConfig, data: Dataset, progress: bool,
           on_grads_ready: Callable[[Layer], None] | None,
           warn: Callable[[str], None] | None = None) -> TrainResult:
    cfg.trace_iters.check_within(cfg.epochs * (len(data.x_train) // cfg.batch))
    s = open_session(cfg, data)
    if s.engine is not None and not cfg.trace_iters.empty:
        s.recorder = TraceRecorder()
        s.engine.recorder = s.recorder
    log = TensorLog({i.tid: i.name for i in s.model.ids.infos}, warn) if s.engine is not None else None
    epochs = run_epochs(s, Hooks(on_grads_ready), log, progress)
    core = load_config(cfg.core)
    epoch_times = [e.time_s for e in epochs]
    epoch_cpu = [e.cpu_s for e in epochs]
    metrics: dict[str, Any] = {
        "train_config": cfg.to_dict(),
        "data": {"name": data.name, "train": int(s.n), "test": int(len(data.x_test)),
                 "image_hwc": list(data.image_hwc)},
        "net": s.model.net.to_dict(),
        "core": core.to_dict(), "core_digest": core.digest(),
        "iterations_per_epoch": s.steps,
        "epochs": [e.to_dict() for e in epochs],
        "final": {"test_acc": epochs[-1].test_acc, "loss": epochs[-1].loss,
                  "mean_epoch_time_s": float(np.mean(epoch_times)),
                  "mean_epoch_cpu_s": float(np.mean(epoch_cpu))},
        "tensors": log.to_dict(s.model, s.engine) if log is not None else {},
    }
    if log is not None:
        metrics["monitor"] = {"level": log.level, "iters": log.iters, "warnings": log.warnings}
    trace = None
    if s.recorder is not None:
        trace = s.recorder.trace(s.engine, {"train_config": cfg.to_dict(), "data": data.name,
                                            "image_hwc": list(data.image_hwc), "classes": int(data.classes),
                                            "net": s.model.net.to_dict(),
                                            "tensor_names": {str(i.tid): i.name for i in s.model.ids.infos}})
    return TrainResult(metrics, trace, s.model, s.engine, epoch_times, epoch_cpu)


# ---------------------------------------------------------------------------------------
# The training loop in pieces: reference.parallel runs the same loop with its own Hooks
# ---------------------------------------------------------------------------------------


@dataclass
class Session:
    """One run's state: the model bound to its training backend, the engine (dfp modes), the data.

    Members
    -------
    threshold
        The policy threshold the host applies to the data it loads (input, loss gradient).
    steps
        Training iterations per epoch (the last partial batch is dropped).
    recorder
        Trace recorder of the engine, when iterations are traced.
    """

    cfg: TrainConfig
    data: Dataset
    model: Model
    be: Backend
    engine: Engine | None
    threshold: int
    steps: int
    recorder: TraceRecorder | None = None

    @property
    def n(self) -> int:
        return len(self.data.x_train)


def open_session(cfg: TrainConfig, data: Dataset,
                 backend: Callable[[Model, Engine | None], Backend] | None = None) -> Session:
    """Build and initialise ``cfg.model``, calibrate it (dfp modes) and bind it to its training backend.

    ``backend(model, engine)`` makes that backend (after calibration); by default a float32
    :class:`FloatBackend` (fp32) or a :class:`DfpBackend` on the engine.

    Raises
    ------
    ValueError
        The batch exceeds the training set.
    """
    core = load_config(cfg.core)
    spec = cfg.precision_spec()
    model = build_session_model(cfg, data, core.tensor_ids)
    init_rng = np.random.default_rng([cfg.seed, 1])
    shuffle_rng = np.random.default_rng([cfg.seed, 2])
    values = initial_values(cfg, model, init_rng)
    n = len(data.x_train)
    if n < cfg.batch:
        raise ValueError(f"train: batch={cfg.batch} exceeds the {n} training images")
    engine: Engine | None = None
    if spec is not None:
        engine = Engine(core, cfg.seed, spec.policy.encode())
        engine.rerun_threshold = spec.rerun
        first = shuffle_rng.permutation(n)[: cfg.batch]  # calibration batch (does not advance shuffling)
        calibrate(model, values, data.x_train[first], data.y_train[first], cfg, engine, spec)
    if backend is not None:
        be = backend(model, engine)
    else:
        be = FloatBackend(np.float32) if engine is None else DfpBackend(engine, model.ids)
    model.bind(be, values)
    return Session(cfg, data, model, be, engine, spec.threshold if spec else DEFAULT_THRESHOLD, n // cfg.batch)


def build_session_model(cfg: TrainConfig, data: Dataset, tensor_ids: int) -> Model:
    """The model of ``cfg.model`` for ``data`` (dropout masks seeded by ``cfg.seed``)."""
    return build_model(cfg.model, data.image_hwc, data.classes, tensor_ids, seed=cfg.seed)


def initial_values(cfg: TrainConfig, model: Model, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Float parameter values to start from: He-normal (``rng``), or ``cfg.init_from``'s initializers."""
    values = model.init_params(rng)
    if cfg.init_from:
        from .onnx_import import initial_weights

        values = initial_weights(cfg.init_from, {p.name: p.shape for p in model.params()})
    return values


class Hooks:
    """The points where data-parallel training departs from one process; these defaults are one process.

    :mod:`reference.parallel` overrides them: a shard of each batch, a forward pass that waits
    per layer for that layer's exchange, gathered logits, per-layer updates after the exchange,
    statistics summed across ranks, step timings, evaluation on one rank.

    Parameters
    ----------
    on_grads_ready
        Passed to :meth:`Model.backward`: called with each parameter layer once its gradients are set.
    """

    #: This worker's sample positions in each mini-batch (None: all of them).
    shard: slice | None = None

    def __init__(self, on_grads_ready: Callable[[Layer], None] | None = None) -> None:
        self.on_grads_ready = on_grads_ready

    def begin_epoch(self, lr: float) -> None:
        """Called before the epoch's first step with its learning rate."""

    def begin_step(self, it: int) -> None:
        """Called before iteration ``it`` (counted over all epochs)."""

    def forward(self, s: Session, x: Ref) -> Ref:
        return s.model.forward(s.be, x)

    def gather_logits(self, local: np.ndarray) -> np.ndarray:
        """The whole batch's logits (float) from this worker's rows."""
        return local

    def update(self, s: Session, lr: float) -> None:
        """After back-propagation: the SGD update of every parameter."""
        sgd_step(s.be, s.model.params(), lr, s.cfg.momentum, s.cfg.weight_decay)

    def update_formats(self, engine: Engine) -> None:
        """At the end of a dfp step: POLICY_UPDATE (point positions from the step's statistics)."""
        engine.update_formats()

    def end_step(self) -> None:
        """Called after each step, before its loss is checked."""

    def end_epoch(self) -> None:
        """Called after the epoch's last step, before its time is taken and the evaluation."""

    def evaluate(self, s: Session) -> float | None:
        """Test accuracy after an epoch (None: not measured here)."""
        return evaluate_session(s)


#: The monitor: a tensor whose overflow rate exceeds OVERFLOW_WARN_LEVEL in OVERFLOW_WARN_ITERS
#: consecutive iterations gets one warning line (naming it and the iteration), again only after it recovered.
OVERFLOW_WARN_LEVEL = 0.01
OVERFLOW_WARN_ITERS = 3


class TensorLog:
    """Point position and overflow/underflow rates of every tensor id per iteration; histograms at epoch ends.

    Parameters
    ----------
    names
        Tensor id -> name, for the warnings.
    warn
        Called with each warning line of the overflow monitor (None: warnings are only recorded).
    level, iters
        The monitor's overflow-rate level and run length (:data:`OVERFLOW_WARN_LEVEL`, :data:`OVERFLOW_WARN_ITERS`).
    """

    def __init__(self, names: dict[int, str] | None = None, warn: Callable[[str], None] | None = None,
                 level: float = OVERFLOW_WARN_LEVEL, iters: int = OVERFLOW_WARN_ITERS) -> None:
        self.tensors: dict[int, dict[str, list]] = {}
        self.hists: dict[int, list[list[int]]] = {}
        self.names = dict(names or {})
        self.warn = warn
        self.level, self.iters = level, iters
        self.streak: dict[int, int] = {}
        self.warnings: list[dict[str, Any]] = []

    def _monitor(self, tid: int, it: int, rate: float) -> None:
        n = self.streak[tid] = self.streak.get(tid, 0) + 1 if rate > self.level else 0
        if n == self.iters:
            name = self.names.get(tid, f"tid {tid}")
            self.warnings.append({"tensor": name, "iteration": it, "overflow_rate": rate})
            if self.warn is not None:
                self.warn(f"warning: iteration {it}: {name} overflowed in more than {100 * self.level:g}% of its "
                          f"values for {self.iters} iterations (now {100 * rate:.1f}%)")

    def record(self, engine: Engine, it: int, epoch_end: bool, tids: set[int] | None = None) -> None:
        """Read the step's statistics database and settings (before POLICY_UPDATE), and its re-runs.

        ``overflow_rate`` is that of the results the step kept: the overflow and value counts of
        results the host discarded and re-ran (:attr:`Engine.reruns`) are taken out, and the
        re-runs are counted in ``reruns``. The engine's re-run counts are reset. ``tids``: only
        these ids (data-parallel runs record a layer's parameters at its own update).
        """
        for tid, st in engine.db.entries.items():
            if tids is not None and tid not in tids:
                continue
            rec = self.tensors.setdefault(tid, {"frac": [], "iteration": [], "overflow_rate": [], "underflow_rate": [],
                                                "reruns": []})
            n_re, ov_re, tot_re = engine.reruns.get(tid, (0, 0, 0))
            total = max(st.total - tot_re, 1)
            rec["iteration"].append(it)
            rec["frac"].append(engine.settings[tid].fmt.frac)
            rate = max(st.overflow - ov_re, 0) / total
            rec["overflow_rate"].append(rate)
            self._monitor(tid, it, rate)
            rec["underflow_rate"].append(st.underflow / max(st.total, 1))
            rec["reruns"].append(n_re)
            if epoch_end:
                self.hists.setdefault(tid, []).append(st.hist.tolist())
            engine.reruns.pop(tid, None)

    def to_dict(self, model: Model, engine: Engine) -> dict[str, Any]:
        names = {i.tid: i for i in model.ids.infos}
        return {names[t].name: {"tid": t, "class": names[t].cls.value, "width": engine.settings[t].fmt.bits,
                                **self.tensors[t], "hist_at_epoch_end": self.hists.get(t, [])}
                for t in sorted(self.tensors)}


def reformat(t: DfpTensor, fmt: DfpFormat) -> DfpTensor:
    """``t`` in format ``fmt`` (same width): rounded to nearest even, saturated; exact when ``fmt`` has more
    fraction bits and the values fit."""
    if fmt.width != t.fmt.width:
        raise ValueError(f"reformat: {t.fmt} -> {fmt} changes the width; the policy never does")
    shift = t.fmt.frac - fmt.frac
    if t.data.ndim == 2:  # the conversion kernel of every command (statistics unused)
        q = kernels.convert(kernels.ACC, t.data, shift, RoundingMode.NEAREST_EVEN, None, fmt.bits, 0, 1)[0]
        return DfpTensor._trusted(q, fmt)
    return _reformat_numpy(t, fmt)


def _reformat_numpy(t: DfpTensor, fmt: DfpFormat) -> DfpTensor:
    """:func:`reformat` in NumPy (the definition the kernel path is tested against)."""
    shift = t.fmt.frac - fmt.frac
    if shift > 0:
        q, _ = saturate(round_shift(t.data, shift, RoundingMode.NEAREST_EVEN, t.fmt.bits), fmt)
    else:
        q, _ = requantize_left(t.data, -shift, fmt)
    return DfpTensor(q, fmt)


def reformat_state(params: list[Param], engine: Engine) -> int:
    """After POLICY_UPDATE: the weights and velocities of ``params`` whose id's point position moved, re-formatted.

    The core reads an operand in the format of its settings-register entry, so a value carried
    into the next iteration must be in that format when it is next read. The host holds these
    values between iterations (the scratchpad empties; see docs/simulator.md) and re-formats its
    copy: an arithmetic right shift rounded to nearest even, or an exact left shift, saturated.
    Returns how many tensors it re-formatted.
    """
    n = 0
    for p in params:
        for attr in ("value", "velocity"):
            r: Ref | None = getattr(p, attr)
            if r is None or not isinstance(r.t, DfpTensor):
                continue
            fmt = engine.settings[r.tid].fmt
            if r.t.fmt is not fmt and r.t.fmt != fmt:
                setattr(p, attr, Ref(reformat(r.t, fmt), r.tid))
                n += 1
    return n


def train_step(s: Session, idx: np.ndarray, lr: float, it: int, hooks: Hooks, log: TensorLog | None = None,
               epoch_end: bool = False) -> tuple[float, int]:
    """Iteration ``it`` on the mini-batch ``s.data.x_train[idx]``; returns its loss and correct predictions.

    The host picks the point positions of the input and of the loss gradient from the whole
    batch; the worker loads its ``hooks.shard`` of both.
    """
    cfg, model, be, engine = s.cfg, s.model, s.be, s.engine
    xm, yb = model.input_matrix(s.data.x_train[idx]), s.data.y_train[idx]
    tracing = s.recorder is not None and it in cfg.trace_iters
    if tracing:
        s.recorder.begin_iteration(it, engine)
    if engine is not None:
        _host_setting(engine, model.input_tid, xm, s.threshold)
    if hooks.shard is not None:
        xm = model.input_matrix(s.data.x_train[idx[hooks.shard]])
    logits = hooks.forward(s, be.load(model.input_tid, xm))
    loss, g, c = softmax_cross_entropy(hooks.gather_logits(be.to_float(logits)), yb)
    if engine is not None:
        _host_setting(engine, model.logits_err_tid, g, s.threshold)
    dy = be.load(model.logits_err_tid, g if hooks.shard is None else g[hooks.shard])
    model.backward(be, dy, cfg.grad_order, hooks.on_grads_ready)
    hooks.update(s, lr)
    if engine is not None:
        if log is not None:
            log.record(engine, it, epoch_end)
        hooks.update_formats(engine)
        reformat_state(model.params(), engine)
    if tracing:
        s.recorder.end_iteration()
    return loss, c


@dataclass(frozen=True)
class EpochStats:
    """One epoch: mean training loss, running training accuracy, test accuracy, wall and CPU time of its steps."""

    epoch: int  # from 1
    lr: float
    loss: float
    train_acc: float
    test_acc: float | None
    time_s: float
    cpu_s: float

    def to_dict(self, times: bool = True) -> dict[str, Any]:
        d = {"epoch": self.epoch, "lr": self.lr, "loss": self.loss, "train_acc": self.train_acc,
             "test_acc": self.test_acc}
        return {**d, "time_s": self.time_s, "cpu_s": self.cpu_s} if times else d


def run_epochs(s: Session, hooks: Hooks, log: TensorLog | None = None, progress: bool = False) -> list[EpochStats]:
    """The training loop: ``cfg.epochs`` shuffled passes of :func:`train_step`, each followed by an evaluation.

    Raises
    ------
    ValueError
        The loss became infinite or NaN.
    """
    from tqdm import tqdm

    cfg = s.cfg
    shuffle_rng = np.random.default_rng([cfg.seed, 3])
    out: list[EpochStats] = []
    it = 0
    for ep in range(cfg.epochs):
        perm = shuffle_rng.permutation(s.n)
        lr = cfg.lr_schedule.at(cfg.lr, ep, cfg.epochs)
        hooks.begin_epoch(lr)
        loss_sum, correct = 0.0, 0
        t0, c0 = time.perf_counter(), time.process_time()
        bar = tqdm(range(s.steps), desc=f"epoch {ep + 1}/{cfg.epochs} {cfg.precision.value}", disable=not progress,
                   leave=False)
        for st in bar:
            hooks.begin_step(it)
            loss, c = train_step(s, perm[st * cfg.batch:(st + 1) * cfg.batch], lr, it, hooks, log,
                                 st == s.steps - 1)
            hooks.end_step()
            loss_sum += loss
            correct += c
            it += 1
            if not np.isfinite(loss):
                raise ValueError(f"train: loss became {loss} at iteration {it - 1}")
        hooks.end_epoch()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        test_acc = hooks.evaluate(s)
        e = EpochStats(ep + 1, lr, loss_sum / s.steps, correct / (s.steps * cfg.batch), test_acc, elapsed, cpu)
        out.append(e)
        if progress:
            tqdm.write(f"epoch {e.epoch}: loss {e.loss:.4f}  train {e.train_acc:.4f}  test {test_acc:.4f}  "
                       f"({elapsed:.2f} s)")
    return out


def evaluate_session(s: Session) -> float:
    """Test accuracy of the current parameters (dfp: on a fork of the engine, leaving the run's state alone)."""
    if s.engine is not None:
        ev_engine: Engine | None = s.engine.fork()
        ev_be: Backend = s.be.with_engine(ev_engine)
    else:
        ev_engine, ev_be = None, s.be
    return _evaluate(s.model, ev_be, ev_engine, s.data.x_test, s.data.y_test, s.threshold)


# ---------------------------------------------------------------------------------------
# Run directories and benchmarks
# ---------------------------------------------------------------------------------------


def check_run_name(name: str) -> None:
    """ValueError unless ``name`` is a plain directory name (no path, not hidden)."""
    if not name or "/" in name or name.startswith(".") or name in ("..",):
        raise ValueError(f"train: run name {name!r} must be a plain directory name")


def write_run(result: TrainResult, out: str | Path, name: str, force: bool = False, plots: bool = True) -> Path:
    """Write ``out/name/`` (metrics.json, PNG plots, trace/) atomically: temp dir, then rename.

    With ``force`` an existing run is swapped out atomically (:func:`reference.outputs.publish_dir`):
    a SIGKILL at any moment leaves the old or the new run complete. Without it, FileExistsError if
    the run directory exists before, and OutputError if it appears while writing (a concurrent run).
    """
    import json
    import shutil

    from .outputs import publish_dir, temp_dir_beside, writing
    from .plots import plot_run
    from .trace import write_trace

    check_run_name(name)
    final = Path(out) / name
    if final.exists() and not force:
        raise FileExistsError(f"train: run directory {final} exists (choose another --name or pass --force)")
    tmp = temp_dir_beside(final)
    try:
        with writing(final, "train: run directory"):
            (tmp / "metrics.json").write_text(json.dumps(result.metrics, indent=1))
            if plots:
                plot_run(result.metrics, tmp)
            if result.trace is not None:
                write_trace(result.trace, tmp / "trace")
            publish_dir(tmp, final, replace=force, what="train: run directory")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


@dataclass(frozen=True)
class BenchRow:
    """Final test accuracy per seed; median wall and CPU seconds per training epoch."""

    precision: str
    accs: tuple[float, ...]
    epoch_time_s: float
    epoch_cpu_s: float
    #: dfp modes: per seed, the share of iterations after the first 10 in which every tensor's
    #: overflow rate is <= 1% (:func:`overflow_ok_share`); empty for fp32.
    overflow_ok: tuple[float, ...] = ()

    @property
    def mean(self) -> float:
        return float(np.mean(self.accs))

    @property
    def std(self) -> float:
        return float(np.std(self.accs))


def overflow_ok_share(metrics: dict[str, Any], skip: int = 10, level: float = 0.01) -> float:
    """Share of the iterations from ``skip`` on in which every tensor's overflow rate is <= ``level``."""
    worst: dict[int, float] = {}
    for t in metrics["tensors"].values():
        for it, r in zip(t["iteration"], t["overflow_rate"], strict=True):
            if it >= skip:
                worst[it] = max(worst.get(it, 0.0), r)
    return float(np.mean([w <= level for w in worst.values()])) if worst else 1.0


def benchmark(data: Dataset, model: ModelKind | str = "cnn", precisions: tuple[Precision, ...] = tuple(Precision),
              seeds: tuple[int, ...] = (0, 1, 2, 3, 4), epochs: int = 15, batch: int = 32, lr: float = 0.05,
              progress: Callable[[str], None] | None = None) -> list[BenchRow]:
    """Final test accuracy (one value per seed) and median epoch times of each precision mode."""
    rows = []
    for prec in precisions:
        accs, times, cpus, oks = [], [], [], []
        for seed in seeds:
            r = train(TrainConfig(model=model, precision=prec, epochs=epochs, batch=batch, lr=lr, seed=seed), data)
            accs.append(r.metrics["final"]["test_acc"])
            if r.metrics["tensors"]:
                oks.append(overflow_ok_share(r.metrics))
            times.extend(r.epoch_times)
            cpus.extend(r.epoch_cpu)
            if progress is not None:
                progress(f"{prec.value} seed {seed}: test accuracy {accs[-1]:.4f}, "
                         f"{np.median(r.epoch_times):.3f} s/epoch wall, {np.median(r.epoch_cpu):.3f} s CPU")
        rows.append(BenchRow(prec.value, tuple(accs), float(np.median(times)), float(np.median(cpus)), tuple(oks)))
    return rows


def bench_markdown(rows: list[BenchRow], header: str) -> str:
    """A markdown table; differences and time ratios are relative to the fp32 row (if present).

    The time ratio uses CPU time (``time.process_time``), which a shared, loaded machine distorts
    far less than wall time; both are listed.
    """
    ref = next((r for r in rows if r.precision == "fp32"), None)
    lines = [header, "",
             "| precision | test accuracy % (mean +- std) | vs fp32 (points) | worst seed vs fp32 (paired) | per seed "
             "| iterations >= 10 with every tensor's overflow <= 1% (worst seed) | s/epoch wall "
             "| s/epoch CPU | CPU time vs fp32 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        diff = "" if ref is None else f"{100 * (r.mean - ref.mean):+.2f}"
        paired = "" if ref is None or len(ref.accs) != len(r.accs) else \
            f"{100 * min(a - b for a, b in zip(r.accs, ref.accs, strict=True)):+.2f}"
        ok = f"{100 * min(r.overflow_ok):.1f}%" if r.overflow_ok else ""
        ratio = "" if ref is None else f"{r.epoch_cpu_s / ref.epoch_cpu_s:.1f}x"
        per = ", ".join(f"{100 * a:.2f}" for a in r.accs)
        lines.append(f"| {r.precision} | {100 * r.mean:.2f} +- {100 * r.std:.2f} | {diff} | {paired} | {per} | {ok} | "
                     f"{r.epoch_time_s:.3f} | {r.epoch_cpu_s:.3f} | {ratio} |")
    return "\n".join(lines) + "\n"
