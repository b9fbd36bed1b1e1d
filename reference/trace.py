"""Training traces: the engine commands of chosen iterations, on disk, and their reference replay.

A trace is a directory with ``manifest.json`` (everything but the integer arrays) and
``arrays.npz`` (the input and output integer arrays of every command). The format is
specified in ``docs/trace-format.md``; :data:`TRACE_VERSION` is bumped on any change.

Each traced iteration is complete: it starts right after the previous POLICY_UPDATE and holds
every command up to and including its own POLICY_UPDATE, plus the state at its start (the
settings register, the database entries and the generator state). Every compute record also
carries the generator state before and after it, so a replay can start at any record
(:func:`replay_record`), and :func:`replay_reference` re-executes whole iterations on a fresh
:class:`~reference.engine.Engine`, checking outputs, statistics, generator states and
policy results bit for bit.
"""

from __future__ import annotations

import copy
import enum
import json
import shutil
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import CoreConfig
from .engine import ARITY, Engine
from .formats import DfpFormat, DfpTensor, TensorSetting, Width, same_array
from .ops import Op
from .stats import POLICY_BITS, OpStats

TRACE_FORMAT = "dlu-trace"
TRACE_VERSION = 1
MANIFEST = "manifest.json"
ARRAYS = "arrays.npz"


class TraceError(ValueError):
    """A malformed trace file, or a replay that does not match the trace."""


class RecordKind(enum.Enum):
    OP = "op"
    LOAD = "load"
    SETTING = "setting"
    POLICY_UPDATE = "policy_update"


@dataclass(frozen=True, eq=False)
class OpRecord:
    """One compute command: operands, destination setting, result, statistics, generator states."""

    op: Op
    dst: int
    setting: TensorSetting
    srcs: tuple[DfpTensor, ...]
    src_tids: tuple[int, ...]
    alpha: tuple[int, int] | None
    out: DfpTensor
    stats: OpStats
    rng_before: np.ndarray
    rng_after: np.ndarray
    kind: RecordKind = RecordKind.OP


@dataclass(frozen=True, eq=False)
class LoadRecord:
    """The host wrote ``out`` (already converted to ``setting.fmt``) into tensor id ``dst``."""

    dst: int
    setting: TensorSetting
    out: DfpTensor
    kind: RecordKind = RecordKind.LOAD


@dataclass(frozen=True)
class SettingRecord:
    """The host wrote one entry of the settings register."""

    tid: int
    setting: TensorSetting
    kind: RecordKind = RecordKind.SETTING


@dataclass(frozen=True)
class PolicyRecord:
    """POLICY_UPDATE and the settings it rewrote (tensor id -> new setting)."""

    changed: dict[int, TensorSetting]
    kind: RecordKind = RecordKind.POLICY_UPDATE


Record = OpRecord | LoadRecord | SettingRecord | PolicyRecord


@dataclass(eq=False)
class IterationTrace:
    iteration: int
    settings_at_start: dict[int, TensorSetting]
    db_at_start: dict[int, OpStats]
    rng_at_start: np.ndarray
    records: list[Record] = field(default_factory=list)


def rerun_records(it: IterationTrace) -> frozenset[int]:
    """Indices of the compute records of ``it`` that are host re-runs (:meth:`Engine.run`).

    A re-run is a compute record ``k`` whose op, destination, source ids and alpha equal those
    of an earlier compute record ``j`` such that every record between them is a setting write of
    that destination (at least one): the command, the new setting, the command again.
    """
    out = set()
    last: int | None = None  # the last compute record, while only its destination's settings followed
    wrote = False
    for k, rec in enumerate(it.records):
        if isinstance(rec, OpRecord):
            prev = it.records[last] if last is not None else None
            if wrote and isinstance(prev, OpRecord) and (prev.op, prev.dst, prev.src_tids, prev.alpha) == \
                    (rec.op, rec.dst, rec.src_tids, rec.alpha):
                out.add(k)
            last, wrote = k, False
        elif isinstance(rec, SettingRecord) and last is not None and rec.tid == it.records[last].dst:
            wrote = True
        else:
            last, wrote = None, False
    return frozenset(out)


@dataclass(eq=False)
class Trace:
    """A whole trace: core config, seed and threshold registers, traced iterations, free metadata."""

    cfg: CoreConfig
    seed: int
    threshold: int
    iterations: list[IterationTrace]
    meta: dict[str, Any] = field(default_factory=dict)


class TraceRecorder:
    """Engine recorder (see :class:`reference.engine.Recorder`) that keeps chosen iterations.

    Call :meth:`begin_iteration` right after the previous POLICY_UPDATE and :meth:`end_iteration`
    after the iteration's own; commands outside an open iteration are ignored.
    """

    def __init__(self) -> None:
        self.iterations: list[IterationTrace] = []
        self._cur: IterationTrace | None = None

    @property
    def active(self) -> bool:
        return self._cur is not None

    def begin_iteration(self, iteration: int, engine: Engine) -> None:
        if self._cur is not None:
            raise RuntimeError("trace: begin_iteration while another iteration is open")
        self._cur = IterationTrace(iteration, dict(engine.settings), engine.snapshot_db(), engine.rng.copy())

    def end_iteration(self) -> None:
        if self._cur is None:
            raise RuntimeError("trace: end_iteration without begin_iteration")
        self.iterations.append(self._cur)
        self._cur = None

    def on_op(self, engine, op, dst, setting, srcs, src_tids, alpha, out, stats, rng_before) -> None:
        if self._cur is not None:
            self._cur.records.append(OpRecord(op, dst, setting, tuple(srcs), tuple(src_tids), alpha, out,
                                              copy.deepcopy(stats), rng_before.copy(), engine.rng.copy()))

    def on_load(self, engine, dst, setting, out) -> None:
        if self._cur is not None:
            self._cur.records.append(LoadRecord(dst, setting, out))

    def on_setting(self, engine, tid, setting) -> None:
        if self._cur is not None:
            self._cur.records.append(SettingRecord(tid, setting))

    def on_policy(self, engine, changed) -> None:
        if self._cur is not None:
            self._cur.records.append(PolicyRecord(dict(changed)))

    def trace(self, engine: Engine, meta: dict[str, Any] | None = None) -> Trace:
        return Trace(engine.cfg, engine.seed, engine.threshold, list(self.iterations), dict(meta or {}))


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------


_STORE_DTYPE = {Width.W8: np.int8, Width.W16: np.int16, Width.W32: np.int32}


def _stats_json(s: OpStats) -> dict:
    return s.as_dict()


def _settings_json(d: dict[int, TensorSetting]) -> dict[str, int]:
    return {str(t): s.encode() for t, s in sorted(d.items())}


def _to_manifest(trace: Trace) -> tuple[dict, dict[str, np.ndarray]]:
    arrays: dict[str, np.ndarray] = {}
    # A tensor that is the very object of an earlier record (an operand that an earlier command
    # produced, a weight carried to the next iteration) names that record's array instead of
    # storing it again. The trace keeps every tensor alive, so the ids are stable here.
    stored: dict[tuple[int, DfpFormat], str] = {}

    def tensor(t: DfpTensor, key: str) -> dict:
        name = stored.setdefault((id(t.data), t.fmt), key)
        if name == key:
            arrays[key] = t.data.astype(_STORE_DTYPE[t.fmt.width])
        return {"array": name, "shape": list(t.shape), "width": t.fmt.bits, "frac": t.fmt.frac}

    iters = []
    for it in trace.iterations:
        recs = []
        for k, r in enumerate(it.records):
            key = f"i{it.iteration}_r{k}"
            if isinstance(r, OpRecord):
                recs.append({
                    "kind": r.kind.value, "op": r.op.name, "dst": r.dst, "setting": r.setting.encode(),
                    "src_tids": list(r.src_tids),
                    "srcs": [tensor(t, f"{key}_s{j}") for j, t in enumerate(r.srcs)],
                    "alpha": None if r.alpha is None else list(r.alpha),
                    "out": tensor(r.out, f"{key}_out"), "stats": _stats_json(r.stats),
                    "rng_before": [int(v) for v in r.rng_before], "rng_after": [int(v) for v in r.rng_after],
                })
            elif isinstance(r, LoadRecord):
                recs.append({"kind": r.kind.value, "dst": r.dst, "setting": r.setting.encode(),
                             "out": tensor(r.out, f"{key}_out")})
            elif isinstance(r, SettingRecord):
                recs.append({"kind": r.kind.value, "tid": r.tid, "setting": r.setting.encode()})
            else:
                recs.append({"kind": r.kind.value, "changed": _settings_json(r.changed)})
        iters.append({
            "iteration": it.iteration,
            "settings_at_start": _settings_json(it.settings_at_start),
            "db_at_start": {str(t): _stats_json(s) for t, s in sorted(it.db_at_start.items())},
            "rng_at_start": [int(v) for v in it.rng_at_start],
            "records": recs,
        })
    manifest = {
        "format": TRACE_FORMAT, "version": TRACE_VERSION,
        "config": trace.cfg.to_dict(), "config_digest": trace.cfg.digest(),
        "seed": trace.seed, "threshold": trace.threshold, "meta": trace.meta,
        "iterations": iters,
    }
    return manifest, arrays


def write_trace(trace: Trace, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``trace`` as directory ``path`` atomically (temp directory, then rename)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"trace: {path} already exists")
    manifest, arrays = _to_manifest(trace)
    from .outputs import publish_dir, temp_dir_beside

    tmp = temp_dir_beside(path)
    try:
        np.savez_compressed(tmp / ARRAYS, **arrays)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        publish_dir(tmp, path, replace=overwrite, what="trace")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


def _need(d: Any, key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise TraceError(f"trace: {where}: missing field {key!r}")
    v = d[key]
    if typ is int and (isinstance(v, bool) or not isinstance(v, int)):
        raise TraceError(f"trace: {where}.{key}: expected an integer, got {v!r}")
    if typ is not int and not isinstance(v, typ):
        raise TraceError(f"trace: {where}.{key}: expected {typ}, got {type(v).__name__} {v!r}")
    return v


def _setting(word: Any, where: str) -> TensorSetting:
    if isinstance(word, bool) or not isinstance(word, int) or not 0 <= word < (1 << 12):
        raise TraceError(f"trace: {where}: setting word {word!r} is not a 12-bit integer")
    try:
        return TensorSetting.decode(word)
    except ValueError as exc:
        raise TraceError(f"trace: {where}: {exc}") from exc


class _Reader:
    def __init__(self, manifest: dict, arrays: Any, cfg: CoreConfig):
        self.arrays, self.cfg = arrays, cfg
        # one tensor object per (array, format): records naming the same array share it, so
        # readers can tell by identity that an operand is an earlier result (sim._analyse)
        self.tensors: dict[tuple[str, DfpFormat], DfpTensor] = {}

    def tid(self, v: Any, where: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < self.cfg.tensor_ids:
            raise TraceError(f"trace: {where}: tensor id {v!r} is outside [0, {self.cfg.tensor_ids})")
        return v

    def settings(self, d: Any, where: str) -> dict[int, TensorSetting]:
        if not isinstance(d, dict):
            raise TraceError(f"trace: {where}: expected an object of tensor id -> setting word")
        out = {}
        for k, w in d.items():
            try:
                tid = int(k)
            except ValueError:
                raise TraceError(f"trace: {where}: key {k!r} is not a tensor id") from None
            out[self.tid(tid, f"{where}[{k}]")] = _setting(w, f"{where}[{k}]")
        return out

    def rng(self, v: Any, where: str) -> np.ndarray:
        if not isinstance(v, list) or len(v) != self.cfg.rng_slots or not all(
                isinstance(x, int) and not isinstance(x, bool) and 0 < x <= 0xFFFFFFFF for x in v):
            raise TraceError(f"trace: {where}: expected {self.cfg.rng_slots} non-zero 32-bit generator states")
        return np.array(v, dtype=np.uint32)

    def stats(self, d: Any, where: str) -> OpStats:
        hist = _need(d, "hist", list, where)
        if len(hist) != self.cfg.hist_bins or not all(isinstance(x, int) and x >= 0 for x in hist):
            raise TraceError(f"trace: {where}.hist: expected {self.cfg.hist_bins} non-negative integers")
        vals = {k: _need(d, k, int, where) for k in ("zeros", "overflow", "underflow", "total")}
        return OpStats(np.array(hist, dtype=np.int64), **vals)

    def tensor(self, d: Any, where: str) -> DfpTensor:
        key = _need(d, "array", str, where)
        shape = _need(d, "shape", list, where)
        bits = _need(d, "width", int, where)
        frac = _need(d, "frac", int, where)
        try:
            fmt = DfpFormat(Width.from_bits(bits), frac)
        except (ValueError, TypeError) as exc:
            raise TraceError(f"trace: {where}: {exc}") from exc
        known = self.tensors.get((key, fmt))
        if known is not None:
            if list(known.shape) != shape:
                raise TraceError(f"trace: {where}: array {key!r} has shape {list(known.shape)}, manifest says {shape}")
            return known
        if key not in self.arrays:
            raise TraceError(f"trace: {where}: array {key!r} is missing from {ARRAYS}")
        try:
            a = self.arrays[key]
        except _NPZ_ERRORS as exc:  # a truncated or bit-flipped member
            raise TraceError(f"trace: {where}: array {key!r} of {ARRAYS} is unreadable (corrupt file?): "
                             f"{exc}") from None
        if list(a.shape) != shape or a.ndim != 2:
            raise TraceError(f"trace: {where}: array {key!r} has shape {list(a.shape)}, manifest says {shape}")
        if a.dtype.kind not in "iu":
            raise TraceError(f"trace: {where}: array {key!r} has dtype {a.dtype}, expected integers")
        try:
            t = self.tensors[(key, fmt)] = DfpTensor(a.astype(np.int64), fmt)
        except ValueError as exc:
            raise TraceError(f"trace: {where}: array {key!r}: {exc}") from exc
        return t

    def record(self, r: Any, where: str) -> Record:
        kind_s = _need(r, "kind", str, where)
        try:
            kind = RecordKind(kind_s)
        except ValueError:
            raise TraceError(f"trace: {where}.kind: {kind_s!r} is not one of "
                             f"{[k.value for k in RecordKind]}") from None
        if kind == RecordKind.SETTING:
            return SettingRecord(self.tid(_need(r, "tid", int, where), f"{where}.tid"),
                                 _setting(_need(r, "setting", int, where), f"{where}.setting"))
        if kind == RecordKind.POLICY_UPDATE:
            return PolicyRecord(self.settings(_need(r, "changed", dict, where), f"{where}.changed"))
        dst = self.tid(_need(r, "dst", int, where), f"{where}.dst")
        setting = _setting(_need(r, "setting", int, where), f"{where}.setting")
        out = self.tensor(_need(r, "out", dict, where), f"{where}.out")
        if kind == RecordKind.LOAD:
            return LoadRecord(dst, setting, out)
        op_s = _need(r, "op", str, where)
        if op_s not in Op.__members__:
            raise TraceError(f"trace: {where}.op: {op_s!r} is not one of {list(Op.__members__)}")
        op = Op[op_s]
        src_tids = _need(r, "src_tids", list, where)
        srcs = _need(r, "srcs", list, where)
        if len(srcs) != ARITY[op] or len(src_tids) != ARITY[op]:
            raise TraceError(f"trace: {where}: {op.name} takes {ARITY[op]} operands, record has "
                             f"{len(srcs)} arrays and {len(src_tids)} tensor ids")
        alpha = r.get("alpha")
        if op == Op.AXPY:
            if not (isinstance(alpha, list) and len(alpha) == 2 and all(isinstance(a, int) for a in alpha)):
                raise TraceError(f"trace: {where}.alpha: AXPY needs [raw, frac], got {alpha!r}")
            alpha = (alpha[0], alpha[1])
        elif alpha is not None:
            raise TraceError(f"trace: {where}.alpha: {op.name} takes no alpha, got {alpha!r}")
        return OpRecord(
            op, dst, setting,
            tuple(self.tensor(s, f"{where}.srcs[{j}]") for j, s in enumerate(srcs)),
            tuple(self.tid(t, f"{where}.src_tids[{j}]") for j, t in enumerate(src_tids)),
            alpha, out, self.stats(_need(r, "stats", dict, where), f"{where}.stats"),
            self.rng(_need(r, "rng_before", list, where), f"{where}.rng_before"),
            self.rng(_need(r, "rng_after", list, where), f"{where}.rng_after"),
        )


#: What reading a damaged .npz member can raise.
_NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError)


def _check_meta(meta: Any) -> dict[str, Any]:
    """The free metadata, with the fields readers use type-checked (TraceError naming the field)."""
    if not isinstance(meta, dict):
        raise TraceError(f"trace: manifest.meta: expected an object, got {type(meta).__name__} {meta!r}")
    names = meta.get("tensor_names", {})
    if not isinstance(names, dict) or not all(
            isinstance(k, str) and k.isdigit() and isinstance(v, str) for k, v in names.items()):
        raise TraceError(f"trace: manifest.meta.tensor_names: expected an object of tensor id -> name, got "
                         f"{names!r:.80}")
    hwc = meta.get("image_hwc")
    if hwc is not None and not (isinstance(hwc, list) and len(hwc) == 3 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in hwc)):
        raise TraceError(f"trace: manifest.meta.image_hwc: expected [height, width, channels], got {hwc!r:.80}")
    classes = meta.get("classes", 10)
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise TraceError(f"trace: manifest.meta.classes: expected an integer >= 2, got {classes!r:.80}")
    tc = meta.get("train_config", {})
    if not isinstance(tc, dict):
        raise TraceError(f"trace: manifest.meta.train_config: expected an object, got {tc!r:.80}")
    for key, typ in (("model", str), ("precision", str), ("batch", int), ("momentum", (int, float)),
                     ("precision_spec", (dict, type(None)))):
        if key in tc and (isinstance(tc[key], bool) or not isinstance(tc[key], typ)):
            raise TraceError(f"trace: manifest.meta.train_config.{key}: unexpected value {tc[key]!r:.80}")
    if isinstance(tc.get("batch"), int) and tc["batch"] < 1:
        raise TraceError(f"trace: manifest.meta.train_config.batch: must be >= 1, got {tc['batch']}")
    return meta


def read_trace(path: str | Path) -> Trace:
    """Read and validate a trace directory; raises :class:`TraceError` naming the bad field."""
    path = Path(path)
    mpath, apath = path / MANIFEST, path / ARRAYS
    if not mpath.is_file():
        raise TraceError(f"trace: {mpath} does not exist")
    if not apath.is_file():
        raise TraceError(f"trace: {apath} does not exist")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise TraceError(f"trace: {mpath}: malformed JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != TRACE_FORMAT:
        raise TraceError(f"trace: {mpath}: field 'format' is not {TRACE_FORMAT!r}")
    version = manifest.get("version")
    if version != TRACE_VERSION:
        raise TraceError(f"trace: {mpath}: version {version!r} is not supported (this reader reads "
                         f"version {TRACE_VERSION})")
    cdict = _need(manifest, "config", dict, "manifest")
    try:
        cfg = CoreConfig(**cdict)
    except (TypeError, ValueError) as exc:
        raise TraceError(f"trace: manifest.config: {exc}") from exc
    digest = _need(manifest, "config_digest", str, "manifest")
    if digest != cfg.digest():
        raise TraceError(f"trace: manifest.config_digest {digest!r} does not match the config ({cfg.digest()})")
    seed = _need(manifest, "seed", int, "manifest")
    if not 0 <= seed < 1 << 32:
        raise TraceError(f"trace: manifest.seed: {seed} does not fit the 32-bit seed register")
    threshold = _need(manifest, "threshold", int, "manifest")
    if not 0 <= threshold < 1 << POLICY_BITS:  # the THRESHOLD register word (reference.stats.PolicyParams)
        raise TraceError(f"trace: manifest.threshold: {threshold} is outside [0, 2**{POLICY_BITS})")
    meta = _check_meta(manifest.get("meta", {}))
    its = _need(manifest, "iterations", list, "manifest")
    if not its:
        raise TraceError(f"trace: {mpath}: manifest.iterations is empty (a trace holds at least one iteration)")
    try:
        arrays = np.load(apath, allow_pickle=False)
    except (*_NPZ_ERRORS,) as exc:
        raise TraceError(f"trace: {apath}: not a readable .npz file: {exc}") from exc
    with arrays:
        rd = _Reader(manifest, arrays, cfg)
        iters = []
        seen: dict[int, int] = {}
        for i, it in enumerate(its):
            where = f"iterations[{i}]"
            num = _need(it, "iteration", int, where)
            if num in seen:
                raise TraceError(f"trace: {where}.iteration: iteration {num} is listed twice (also at "
                                 f"iterations[{seen[num]}])")
            if seen and num < max(seen):
                raise TraceError(f"trace: {where}.iteration: iteration {num} follows {max(seen)}; the "
                                 "iterations must be in training order")
            seen[num] = i
            db = {}
            for k, s in _need(it, "db_at_start", dict, where).items():
                tid = rd.tid(int(k) if str(k).isdigit() else k, f"{where}.db_at_start[{k}]")
                db[tid] = rd.stats(s, f"{where}.db_at_start[{k}]")
            iters.append(IterationTrace(
                _need(it, "iteration", int, where),
                rd.settings(_need(it, "settings_at_start", dict, where), f"{where}.settings_at_start"),
                db,
                rd.rng(_need(it, "rng_at_start", list, where), f"{where}.rng_at_start"),
                [rd.record(r, f"{where}.records[{k}]") for k, r in enumerate(_need(it, "records", list, where))],
            ))
    return Trace(cfg, seed, threshold, iters, meta)


# ---------------------------------------------------------------------------------------
# Replay
# ---------------------------------------------------------------------------------------


class _Capture:
    """Recorder keeping the last compute command's statistics."""

    def __init__(self) -> None:
        self.stats: OpStats | None = None

    def on_op(self, engine, op, dst, setting, srcs, src_tids, alpha, out, stats, rng_before) -> None:
        self.stats = stats

    def on_load(self, *a) -> None: ...

    def on_setting(self, *a) -> None: ...

    def on_policy(self, *a) -> None: ...


def _compare_op(rec: OpRecord, out: DfpTensor, stats: OpStats, rng_after: np.ndarray, where: str) -> None:
    if out.fmt != rec.out.fmt:
        raise TraceError(f"replay: {where} ({rec.op.name}): output format {out.fmt}, trace has {rec.out.fmt}")
    if not same_array(out.data, rec.out.data):
        bad = "shape" if out.shape != rec.out.shape else f"{int(np.count_nonzero(out.data != rec.out.data))} values"
        raise TraceError(f"replay: {where} ({rec.op.name} -> tid {rec.dst}): output differs ({bad})")
    if stats != rec.stats:
        raise TraceError(f"replay: {where} ({rec.op.name} -> tid {rec.dst}): statistics differ")
    if not same_array(np.asarray(rng_after), rec.rng_after):
        raise TraceError(f"replay: {where} ({rec.op.name}): generator state after the op differs")


def replay_record(rec: OpRecord, cfg: CoreConfig, engine_cls: type[Engine] = Engine) -> None:
    """Re-execute one compute record on its own (state taken from the record); raises on mismatch."""
    eng = engine_cls(cfg)
    cap = _Capture()
    eng.recorder = cap
    eng.settings[rec.dst] = rec.setting
    eng.rng = rec.rng_before.copy()
    out = eng.run(rec.op, rec.dst, list(rec.srcs), list(rec.src_tids), rec.alpha)
    _compare_op(rec, out, cap.stats, eng.rng, "record")


@dataclass(frozen=True)
class ReplayReport:
    iterations: int
    ops: int
    loads: int
    settings: int
    policy_updates: int


def replay_reference(trace: Trace, engine_cls: type[Engine] = Engine) -> ReplayReport:
    """Re-execute every traced iteration on a fresh engine and check it bit for bit.

    Per iteration the engine starts from the recorded settings, database entries and generator
    state; then every record is applied in order and checked: the destination's setting and
    the generator state before each command (state flow), its output, statistics and generator
    state after, the format of each LOAD, and the settings each POLICY_UPDATE rewrites (which
    checks the database the iteration accumulated). Raises :class:`TraceError` at the first
    mismatch, naming the iteration and record.
    """
    n_ops = n_loads = n_set = n_pol = 0
    for it in trace.iterations:
        eng = engine_cls(trace.cfg, trace.seed, trace.threshold)
        cap = _Capture()
        eng.settings = dict(it.settings_at_start)
        eng.db.entries = {t: copy.deepcopy(s) for t, s in it.db_at_start.items()}
        eng.rng = it.rng_at_start.copy()
        eng.recorder = cap
        for k, rec in enumerate(it.records):
            where = f"iteration {it.iteration} record {k}"
            if isinstance(rec, SettingRecord):
                eng.set_setting(rec.tid, rec.setting)
                n_set += 1
            elif isinstance(rec, LoadRecord):
                cur = eng.settings.get(rec.dst)
                if cur != rec.setting or rec.out.fmt != rec.setting.fmt:
                    raise TraceError(f"replay: {where} (LOAD tid {rec.dst}): setting {cur} in the register, "
                                     f"trace has {rec.setting} and data in {rec.out.fmt}")
                n_loads += 1
            elif isinstance(rec, OpRecord):
                cur = eng.settings.get(rec.dst)
                if cur != rec.setting:
                    raise TraceError(f"replay: {where} ({rec.op.name}): tid {rec.dst} has setting {cur} in the "
                                     f"register, trace has {rec.setting}")
                if not same_array(eng.rng, rec.rng_before):
                    raise TraceError(f"replay: {where} ({rec.op.name}): generator state before the op differs")
                out = eng.run(rec.op, rec.dst, list(rec.srcs), list(rec.src_tids), rec.alpha)
                _compare_op(rec, out, cap.stats, eng.rng, where)
                n_ops += 1
            else:
                changed = eng.update_formats()
                got = {t: s.encode() for t, s in changed.items()}
                want = {t: s.encode() for t, s in rec.changed.items()}
                if got != want:
                    diff = sorted(t for t in set(got) | set(want) if got.get(t) != want.get(t))
                    raise TraceError(f"replay: {where} (POLICY_UPDATE): settings differ for tensor ids {diff}")
                n_pol += 1
    return ReplayReport(len(trace.iterations), n_ops, n_loads, n_set, n_pol)
