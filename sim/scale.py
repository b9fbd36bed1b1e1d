"""Timing model of data-parallel training on N DLUs: compute, links, and the three overlap methods.

One training step of a worker is, per parameter layer ``l`` of the network (forward order
``1..L``): forward ``F_l``, backward ``B_l`` (input error and weight gradients, in reverse
order), the exchange of its gradients (an allreduce over the N workers) and the update
``U_l`` (the SGD AXPY chain). This module schedules those tasks event by event on four
resources and reports the steady-state step time, from which throughput and scaling follow.

Resources (each serves one task at a time)
------------------------------------------
``dlu``
    The worker's DLU chip. Program order per iteration: ``F_1..F_L``, ``B_L..B_1``; the
    updates of the previous iteration go before the forward pass (method 2 off: all of them
    first; method 2 on: ``U_l`` just before ``F_l``).
``d2h``, ``net``, ``h2d``
    The exchange pipeline of the host: gradients from the device to the host over PCIe, the
    allreduce across hosts (network plus reduction on the host), the result back to the
    device. Each buffer passes the three stages in order.

The three methods (paper, section 3)
------------------------------------
1. *Exchange during back-propagation*: a layer's exchange is queued as soon as ``B_l`` is
   done (off: all layers are queued when ``B_1`` is done).
2. *Forward pass during exchange*: ``U_l`` waits only for layer l's exchange, and ``F_l``
   only for ``U_l`` (off: the updates wait for every layer's exchange). With method 2 the
   exchange queue serves the layer the next forward pass needs first (lowest layer index;
   at segment granularity when method 3 is on); without it, first come first served. (Fujitsu's
   announcement of the work, 9 August 2016: the scheduling "automatically controls the priority
   order for data transmission so that data needed at the start of the next learning process
   is shared" first.)
3. *Pipelining*: buffers are cut into segments of ``segment_bytes`` that flow through
   ``d2h``, ``net`` and ``h2d`` concurrently, and the host sums with threads and SIMD
   (``host_reduce_bw``), which the paper describes as part of this method (off: one host
   thread does the three stages of a whole buffer one after the other, so the three stages are
   one resource, and sums at ``serial_reduce_bw``).

Costs
-----
Compute: the DLU chip is ``cores`` copies of one core (:class:`reference.config.CoreConfig`)
at ``clock_hz``. Each matrix multiply of a layer, formed as :mod:`reference.layers` forms it
(convolutions through im2col, the input error as a full correlation; grouped convolutions as
one multiply per group), has its result split over the cores (rows first, then columns); each
core's share is cut into legal commands (M, N <= 65535, K <= 2**16, with an ADD per extra K
chunk) whose cycles are :func:`reference.isa.cycles`. On one core this reproduces the compute
cycles of the cycle simulator (:mod:`sim.core`) replaying a trace of the same network, up to
the setup and drain of its row tiles (``tests/sim/test_scale.py``). Bias add, ReLU and
ReLU backward are elementwise commands; the update is three AXPY commands per parameter
tensor (weight decay, momentum, step). Not modelled: data movement into the scratchpads
(LOAD/STORE), pooling, LRN and dropout (host data movement in the golden model). So the
compute time is a lower bound, which makes communication look relatively *more* expensive.

The paper's own setting was GPUs running Caffe in fp32 (2016). :data:`GPUS` holds published
AlexNet training times of GPUs of that era; :func:`gpu_layer_costs` spreads such a time over
the layers in proportion to their multiply-accumulates (forward; backward: weight gradient
plus input error) and charges the SGD update at the GPU's memory bandwidth (20 bytes per
parameter: read weight, gradient and velocity, write weight and velocity).

Scaling: weak (``batch`` images per worker, :func:`sweep`'s default) or strong
(``global_batch=True``: one mini-batch of ``batch`` images split over the workers). The paper
describes the latter: "Processing methods that distribute data in a mini-batch to multiple
computers are called data-parallel methods [...] achieve speed increases by reducing
processing time per computer."

Links (alpha-beta model), for a buffer of ``n`` bytes on ``N`` workers:

- PCIe (each way): ``pcie_latency + n / pcie_bw``.
- ring allreduce: ``2 (N-1) (alpha + n / (N beta)) + (N-1)/N * n / gamma``;
- tree allreduce (binomial reduce then broadcast): ``2 ceil(log2 N) (alpha + n / beta)
  + ceil(log2 N) n / gamma``;

with ``alpha`` the network latency, ``beta`` its bandwidth and ``gamma`` the host's reduction
throughput (threads and SIMD; bytes of incoming data summed per second). In reduced formats
(16 or 8 bits) each parameter tensor first needs its statistics histogram reduced across
workers (to choose the shared point position, see :mod:`reference.parallel`): a latency-bound
recursive-doubling allreduce of ``hist_bins * 4`` bytes, ``ceil(log2 N) (alpha + h / beta)``,
charged to the first segment of the layer's first stage. With one worker there is no
exchange at all.
"""

from __future__ import annotations

import enum
import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from reference.config import CoreConfig
from reference.formats import MAX_K, DfpFormat, RoundingMode, TensorSetting, Width
from reference.isa import MAX_DIM, Command, cycles
from reference.nets import LayerKind, Net, alexnet, infer_shapes
from reference.ops import Op


class Allreduce(enum.Enum):
    """Allreduce algorithm of the ``net`` stage."""

    RING = "ring"
    TREE = "tree"


@dataclass(frozen=True)
class Methods:
    """Which of the paper's three overlap methods are on."""

    backprop_overlap: bool = False
    forward_overlap: bool = False
    pipelining: bool = False

    @classmethod
    def none(cls) -> Methods:
        return cls()

    @classmethod
    def all(cls) -> Methods:
        return cls(True, True, True)

    @property
    def label(self) -> str:
        on = [str(i + 1) for i, v in enumerate((self.backprop_overlap, self.forward_overlap, self.pipelining)) if v]
        if not on:
            return "no overlap"
        if len(on) == 3:
            return "methods 1+2+3"
        return "method " + "+".join(on)


@dataclass(frozen=True)
class Chip:
    """A DLU chip: ``cores`` cores of ``core`` at ``clock_hz``, computing at ``compute_bits``.

    The default, 256 cores of 8 lanes, mirrors the organisation Fujitsu disclosed for its DLU
    (16 processing units of 16 elements, each an 8-wide SIMD unit); the 1 GHz clock is an
    assumption. Both are parameters: see ``docs/parallel.md`` for the sensitivity.
    """

    core: CoreConfig = field(default_factory=CoreConfig)
    cores: int = 256
    clock_hz: float = 1e9
    compute_bits: int = 16

    def __post_init__(self) -> None:
        if isinstance(self.cores, bool) or not isinstance(self.cores, int) or self.cores < 1:
            raise ValueError(f"chip: cores={self.cores!r}: must be an integer >= 1")
        if not self.clock_hz > 0:
            raise ValueError(f"chip: clock_hz={self.clock_hz!r}: must be > 0")
        Width.from_bits(self.compute_bits)  # raises naming the bad width


@dataclass(frozen=True)
class Links:
    """Link and host figures; defaults are of the paper's era (FDR InfiniBand, PCIe 3.0 x16).

    Parameters
    ----------
    net_bw, net_latency
        Network bandwidth (bytes/s; 56 Gbit/s = 7e9) and per-message latency (s).
    pcie_bw, pcie_latency
        Device-host bandwidth each way (bytes/s, ~12 GB/s achievable on PCIe 3.0 x16) and latency.
    host_reduce_bw
        Bytes of incoming gradients the host sums per second with threads and SIMD (method 3;
        memory bound).
    serial_reduce_bw
        The same for one host thread (method 3 off). The sum ``acc += in`` moves three bytes of
        memory per incoming byte (read both, write one), so it is a third of a core's memory
        bandwidth: 20 GB/s STREAM triad on one Haswell-EP core (Xeon E5-2697 v3, Puget Systems'
        measurement) gives 6.7 GB/s. ``host_reduce_bw`` stays below a third of a whole socket's
        (about 51 GB/s, so 17 GB/s), leaving room for the NIC's and the GPU's DMA.
    algorithm
        Ring or tree allreduce.
    segment_bytes
        Segment size of method 3.
    """

    net_bw: float = 56e9 / 8
    net_latency: float = 1e-6
    pcie_bw: float = 12e9
    pcie_latency: float = 5e-6
    host_reduce_bw: float = 10e9
    serial_reduce_bw: float = 20e9 / 3
    algorithm: Allreduce = Allreduce.RING
    segment_bytes: int = 4 << 20

    def __post_init__(self) -> None:
        for name in ("net_bw", "pcie_bw", "host_reduce_bw", "serial_reduce_bw"):
            if not getattr(self, name) > 0:
                raise ValueError(f"links: {name}={getattr(self, name)!r}: must be > 0")
        for name in ("net_latency", "pcie_latency"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"links: {name}={getattr(self, name)!r}: must be >= 0")
        if isinstance(self.segment_bytes, bool) or not isinstance(self.segment_bytes, int) or self.segment_bytes < 1:
            raise ValueError(f"links: segment_bytes={self.segment_bytes!r}: must be an integer >= 1")
        if not isinstance(self.algorithm, Allreduce):
            raise ValueError(f"links: algorithm={self.algorithm!r}: must be one of {[a.value for a in Allreduce]}")

    def pcie(self, nbytes: float) -> float:
        return self.pcie_latency + nbytes / self.pcie_bw

    def allreduce(self, nbytes: float, workers: int, gather_bytes: float | None = None,
                  threaded: bool = True) -> float:
        """Seconds of one allreduce of ``nbytes`` over ``workers`` (0 for one worker).

        With ``gather_bytes`` the result travels in another width than the partial sums: the
        reduce phase (ring: reduce-scatter; tree: reduce) moves ``nbytes``, the gather phase
        (ring: allgather; tree: broadcast) ``gather_bytes``. The host sums at
        ``host_reduce_bw`` (``threaded``) or ``serial_reduce_bw``.
        """
        n = workers
        if n <= 1:
            return 0.0
        g = nbytes if gather_bytes is None else gather_bytes
        gamma = self.host_reduce_bw if threaded else self.serial_reduce_bw
        if self.algorithm is Allreduce.RING:
            return ((n - 1) * (2 * self.net_latency + (nbytes + g) / (n * self.net_bw))
                    + (n - 1) / n * nbytes / gamma)
        d = math.ceil(math.log2(n))
        return d * (2 * self.net_latency + (nbytes + g) / self.net_bw) + d * nbytes / gamma

    def small_allreduce(self, nbytes: float, workers: int) -> float:
        """Latency-bound recursive doubling (the histograms of reduced-format gradients)."""
        if workers <= 1:
            return 0.0
        return math.ceil(math.log2(workers)) * (self.net_latency + nbytes / self.net_bw)


# ---------------------------------------------------------------------------------------
# Compute cycles of a network's layers


def _settings(width: Width) -> dict[int, TensorSetting]:
    s = TensorSetting(DfpFormat(width, 0), RoundingMode.NEAREST_EVEN, False)
    return {0: s, 1: s, 2: s}


def _split(m: int, n: int, cores: int) -> tuple[int, int]:
    """Per-core result shape when an [m, n] result is spread over ``cores`` (rows first)."""
    cm = min(cores, m)
    cn = max(1, min(cores // cm, n))
    return -(-m // cm), -(-n // cn)


def matmul_cycles(m: int, k: int, n: int, width: Width, chip: Chip) -> int:
    """Cycles of ``[m, k] x [k, n]`` on the chip: per-core share cut into legal commands."""
    st = _settings(width)
    mm, nn = _split(m, n, chip.cores)
    total = 0
    for m0 in range(0, mm, MAX_DIM):
        mt = min(MAX_DIM, mm - m0)
        for n0 in range(0, nn, MAX_DIM):
            nt = min(MAX_DIM, nn - n0)
            chunks = [min(MAX_K, k - k0) for k0 in range(0, k, MAX_K)]
            for kt in chunks:
                total += cycles(Command(Op.MATMUL, m=mt, n=nt, k=kt), st, chip.core)
            total += (len(chunks) - 1) * cycles(Command(Op.ADD, m=mt, n=nt), st, chip.core)
    return total


def elementwise_cycles(op: Op, m: int, n: int, width: Width, chip: Chip) -> int:
    """Cycles of one elementwise command family over an [m, n] tensor spread on the chip."""
    st = _settings(width)
    mm, nn = _split(m, n, chip.cores)
    total = 0
    for m0 in range(0, mm, MAX_DIM):
        for n0 in range(0, nn, MAX_DIM):
            total += cycles(Command(op, m=min(MAX_DIM, mm - m0), n=min(MAX_DIM, nn - n0), k=1), st, chip.core)
    return total


@dataclass(frozen=True)
class LayerCost:
    """Per-worker costs of one parameter layer for one step.

    ``forward``/``backward``/``update`` in seconds; ``params`` the number of gradient values
    exchanged; ``tensors`` the number of parameter tensors (weights, bias).
    """

    name: str
    forward: float
    backward: float
    update: float
    params: int
    tensors: int = 2


def layer_costs(net: Net, batch: int, chip: Chip) -> tuple[LayerCost, ...]:
    """Costs of the parameter layers of ``net`` at per-worker ``batch``.

    Non-parameter layers are folded into the preceding parameter layer: a ReLU adds a RELU
    (forward) and a RELU_BACKWARD command; pooling, LRN, dropout and flatten are not timed.
    The first parameter layer computes no input error.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"scale: batch={batch!r}: must be an integer >= 1")
    w = Width.from_bits(chip.compute_bits)
    hz = chip.clock_hz
    out: list[list] = []  # [name, fwd cycles, bwd cycles, upd cycles, params]
    first = True
    for s in infer_shapes(net):
        lay = s.layer
        if lay.kind is LayerKind.CONV:
            c, _, _ = s.in_shape
            o, ho, wo = s.out_shape
            g = lay.groups
            m, kk, nn = batch * ho * wo, lay.kernel * lay.kernel * c // g, o // g
            fwd = g * matmul_cycles(m, kk, nn, w, chip) + elementwise_cycles(Op.ADD, m, o, w, chip)
            bwd = g * matmul_cycles(kk, m, nn, w, chip) + matmul_cycles(1, m, o, w, chip)
            if not first:
                # As reference.layers.Conv2d computes it: the full correlation of the padded
                # output error with the flipped kernel, one multiply per group of
                # [B*H*W, k*k*O/g] x [k*k*O/g, C/g] (exact for stride 1).
                _, h, wd = s.in_shape
                bwd += g * matmul_cycles(batch * h * wd, lay.kernel * lay.kernel * nn, c // g, w, chip)
            upd = 3 * (elementwise_cycles(Op.AXPY, kk * g, nn, w, chip) + elementwise_cycles(Op.AXPY, 1, o, w, chip))
            out.append([lay.name, fwd, bwd, upd, s.weights + s.biases])
            first = False
        elif lay.kind is LayerKind.LINEAR:
            f, o = s.in_count, lay.out_features
            fwd = matmul_cycles(batch, f, o, w, chip) + elementwise_cycles(Op.ADD, batch, o, w, chip)
            bwd = matmul_cycles(f, batch, o, w, chip) + matmul_cycles(1, batch, o, w, chip)
            if not first:
                bwd += matmul_cycles(batch, o, f, w, chip)
            upd = 3 * (elementwise_cycles(Op.AXPY, f, o, w, chip) + elementwise_cycles(Op.AXPY, 1, o, w, chip))
            out.append([lay.name, fwd, bwd, upd, s.weights + s.biases])
            first = False
        elif lay.kind is LayerKind.RELU and out:
            rows = batch * (s.out_shape[1] * s.out_shape[2] if len(s.out_shape) == 3 else 1)
            cols = s.out_shape[0]
            out[-1][1] += elementwise_cycles(Op.RELU, rows, cols, w, chip)
            out[-1][2] += elementwise_cycles(Op.RELU_BACKWARD, rows, cols, w, chip)
    return tuple(LayerCost(n, f / hz, b / hz, u / hz, p) for n, f, b, u, p in out)


@dataclass(frozen=True)
class Gpu:
    """A GPU of the paper's era, described by a published AlexNet fp32 training measurement.

    ``forward_s``/``backward_s`` are seconds per image of AlexNet (forward; backward with
    weight gradients and input errors); ``mem_bw`` is the memory bandwidth (bytes/s) that the
    SGD update is charged at. Other networks are timed at the same multiply-accumulate rates.
    """

    name: str
    forward_s: float
    backward_s: float
    mem_bw: float
    source: str

    def __post_init__(self) -> None:
        for f in ("forward_s", "backward_s", "mem_bw"):
            if not getattr(self, f) > 0:
                raise ValueError(f"gpu: {f}={getattr(self, f)!r}: must be > 0")


#: Published AlexNet training times of GPUs of the paper's era (fp32), per image.
GPUS: dict[str, Gpu] = {
    "k40-caffe": Gpu(
        "NVIDIA Tesla K40, Caffe", 5.18e-3 / 3, 2 * 5.18e-3 / 3, 288e9,
        "BVLC Caffe docs/performance_hardware.md: 26.5 s per 20 iterations of 256 images (CaffeNet, "
        "ECC off, boost clock), update and data layer included; split 1:2 as the multiply-accumulates"),
    "titanx-caffe": Gpu(
        "NVIDIA GeForce GTX Titan X (Maxwell), Caffe", 121e-3 / 128, 203e-3 / 128, 336.5e9,
        "soumith/convnet-benchmarks README: AlexNet (One Weird Trick), batch 128, Caffe native "
        "ConvolutionLayer: forward 121 ms, backward 203 ms"),
    "titanx-cudnn": Gpu(
        "NVIDIA GeForce GTX Titan X (Maxwell), cuDNN R4", 27e-3 / 128, 53e-3 / 128, 336.5e9,
        "soumith/convnet-benchmarks README: AlexNet (One Weird Trick), batch 128, cuDNN R4 fp32: "
        "forward 27 ms, backward 53 ms"),
}


def layer_macs(net: Net) -> tuple[tuple[str, int, int, int], ...]:
    """Per image and parameter layer: (name, forward MACs, backward MACs, parameters).

    Backward is the weight gradient (as many MACs as the forward pass) plus the input error
    (as many again), except in the first parameter layer, which computes no input error.
    """
    out = []
    for s in infer_shapes(net):
        lay = s.layer
        if lay.kind is LayerKind.CONV:
            c = s.in_shape[0]
            o, ho, wo = s.out_shape
            f = ho * wo * lay.kernel * lay.kernel * (c // lay.groups) * o
        elif lay.kind is LayerKind.LINEAR:
            f = s.in_count * lay.out_features
        else:
            continue
        out.append((lay.name, f, f if not out else 2 * f, s.weights + s.biases))
    return tuple(out)


def gpu_layer_costs(net: Net, batch: int, gpu: Gpu) -> tuple[LayerCost, ...]:
    """Costs of the parameter layers of ``net`` at per-worker ``batch`` on ``gpu``.

    The forward and backward multiply-accumulate rates are those of ``gpu``'s AlexNet
    measurement (its seconds per image over AlexNet's MACs per image); each layer takes its
    share of MACs at that rate. The update moves 20 bytes per parameter at ``gpu.mem_bw``.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"scale: batch={batch!r}: must be an integer >= 1")
    ref = layer_macs(alexnet())
    fwd_rate = sum(r[1] for r in ref) / gpu.forward_s
    bwd_rate = sum(r[2] for r in ref) / gpu.backward_s
    return tuple(LayerCost(name, batch * f / fwd_rate, batch * b / bwd_rate, 20 * p / gpu.mem_bw, p)
                 for name, f, b, p in layer_macs(net))


# ---------------------------------------------------------------------------------------
# Event-level schedule


@dataclass(frozen=True)
class StepResult:
    """Steady-state step time (s), compute time per step (s), exchanged bytes per worker per step
    (gradients plus, in reduced formats, histograms) and the exposed (not hidden) step time beyond compute."""

    step_time: float
    compute_time: float
    payload_bytes: int
    exposed_comm: float


def _segments(nbytes: int, seg: int, pipelined: bool) -> list[int]:
    if not pipelined or nbytes <= seg:
        return [nbytes]
    return [seg] * (nbytes // seg) + ([nbytes % seg] if nbytes % seg else [])


def simulate(costs: Iterable[LayerCost], workers: int, links: Links, methods: Methods, grad_bits: int = 32,
             hist_bins: int = 64, iterations: int = 6, partial_bits: int | None = None) -> StepResult:
    """Schedule ``iterations`` training steps and return the steady-state step.

    The step time is the mean interval between the ends of the backward pass of the last
    ``iterations - 2`` steps (the first one fills the pipeline).

    ``partial_bits`` (> ``grad_bits``): gradients cross PCIe and are gathered in ``grad_bits``
    but summed in ``partial_bits`` (``reference.parallel``'s ``dfp8-rs`` exchange); the second
    shared-exponent exchange of each tensor (for the sum) is charged to its layer's last segment.
    """
    costs = tuple(costs)
    if not costs:
        raise ValueError("scale: the network has no parameter layer")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"scale: workers={workers!r}: must be an integer >= 1")
    Width.from_bits(grad_bits)
    if iterations < 3:
        raise ValueError(f"scale: iterations={iterations!r}: must be >= 3")
    L = len(costs)
    if partial_bits is not None and (partial_bits <= grad_bits or Width.from_bits(partial_bits) is None):
        raise ValueError(f"scale: partial_bits={partial_bits!r}: must be a width above grad_bits={grad_bits}")
    nbytes = [c.params * grad_bits // 8 for c in costs]
    exchange = workers > 1
    m = methods
    hist_t = [c.tensors * links.small_allreduce(hist_bins * 4, workers) if grad_bits < 32 else 0.0 for c in costs]
    widen = 1 if partial_bits is None else partial_bits // grad_bits

    # Stage durations of one segment. Method 3 off: one resource doing the three in turn.
    def stage_times(layer: int, b: int, first: bool, last: bool) -> list[float]:
        extra = hist_t[layer] if first else 0.0
        if partial_bits is None:
            net = links.allreduce(b, workers, threaded=m.pipelining)
        else:
            net = (links.allreduce(b * widen, workers, gather_bytes=b, threaded=m.pipelining)
                   + (hist_t[layer] if last else 0.0))
        d2h, h2d = links.pcie(b) + extra, links.pcie(b)
        return [d2h, net, h2d] if m.pipelining else [d2h + net + h2d]

    nstages = 3 if m.pipelining else 1
    segs = [_segments(nb, links.segment_bytes, m.pipelining) for nb in nbytes]

    # Compute program: list of (kind, layer, iteration).
    prog: list[tuple[str, int, int]] = []
    for it in range(iterations):
        if m.forward_overlap:
            for lay in range(L):
                if it > 0:
                    prog.append(("U", lay, it - 1))
                prog.append(("F", lay, it))
        else:
            if it > 0:
                prog += [("U", lay, it - 1) for lay in range(L)]
            prog += [("F", lay, it) for lay in range(L)]
        prog += [("B", lay, it) for lay in reversed(range(L))]

    events: list[tuple[float, int, str, tuple]] = []
    seq = 0

    def push(t: float, kind: str, payload: tuple) -> None:
        nonlocal seq
        heapq.heappush(events, (t, seq, kind, payload))
        seq += 1

    exchanged: dict[tuple[int, int], float] = {}  # (layer, it) -> time its exchange finished
    seg_left: dict[tuple[int, int], int] = {}
    queues: list[list[tuple]] = [[] for _ in range(nstages)]
    busy = [False] * nstages
    arrival = 0
    pc = 0
    dlu_busy = False
    b1_done: list[float] = []
    compute_busy_time = 0.0

    def ready(task: tuple[str, int, int]) -> bool:
        kind, lay, it = task
        if kind != "U" or not exchange:
            return True
        if m.forward_overlap:
            return (lay, it) in exchanged
        return all((j, it) in exchanged for j in range(L))

    def try_compute(now: float) -> None:
        nonlocal pc, dlu_busy, compute_busy_time
        if dlu_busy or pc >= len(prog) or not ready(prog[pc]):
            return
        kind, lay, it = prog[pc]
        c = costs[lay]
        dur = {"F": c.forward, "B": c.backward, "U": c.update}[kind]
        compute_busy_time += dur
        dlu_busy = True
        push(now + dur, "compute", prog[pc])
        pc += 1

    def enqueue(stage: int, item: tuple) -> None:
        nonlocal arrival
        lay, it, j = item
        prio = (it, lay, j) if m.forward_overlap else (arrival,)
        arrival += 1
        heapq.heappush(queues[stage], (prio, item))

    def try_stage(stage: int, now: float) -> None:
        if busy[stage] or not queues[stage]:
            return
        _, item = heapq.heappop(queues[stage])
        lay, it, j = item
        dur = stage_times(lay, segs[lay][j], j == 0, j == len(segs[lay]) - 1)[stage]
        busy[stage] = True
        push(now + dur, "stage", (stage, item))

    def queue_exchange(lay: int, it: int) -> None:
        seg_left[(lay, it)] = len(segs[lay])
        for j in range(len(segs[lay])):
            enqueue(0, (lay, it, j))

    try_compute(0.0)
    while events:
        now, _, kind, payload = heapq.heappop(events)
        if kind == "compute":
            dlu_busy = False
            k, lay, it = payload
            if k == "B":
                if lay == 0:
                    b1_done.append(now)
                if exchange:
                    if m.backprop_overlap:
                        queue_exchange(lay, it)
                    elif lay == 0:
                        for j in reversed(range(L)):
                            queue_exchange(j, it)
                    try_stage(0, now)  # after queueing all of them, so the priority rule applies
        else:
            stage, item = payload
            busy[stage] = False
            lay, it, j = item
            if stage + 1 < nstages:
                enqueue(stage + 1, item)
                try_stage(stage + 1, now)
            else:
                seg_left[(lay, it)] -= 1
                if seg_left[(lay, it)] == 0:
                    exchanged[(lay, it)] = now
            try_stage(stage, now)
        try_compute(now)
    if pc != len(prog):
        raise RuntimeError(f"scale: schedule deadlocked at {prog[pc]} (a bug in the model)")
    steady = b1_done[1:]
    step = (steady[-1] - steady[0]) / (len(steady) - 1)
    compute = sum(c.forward + c.backward + c.update for c in costs)
    hist_bytes = sum(c.tensors for c in costs) * hist_bins * 4 * (1 if partial_bits is None else 2)
    gather = 0 if partial_bits is None else sum(nbytes) // workers  # the own chunk of the allgather
    xbytes = sum(nbytes) * widen + gather + (hist_bytes if grad_bits < 32 else 0) if exchange else 0
    return StepResult(step, compute, xbytes, max(0.0, step - compute))


# ---------------------------------------------------------------------------------------
# Sweeps


def standard_configs() -> list[tuple[str, Methods, int, int | None]]:
    """Configurations of the scaling table: (label, methods, gradient bits, partial-sum bits)."""
    return [
        ("no overlap, 32-bit", Methods.none(), 32, None),
        ("method 1, 32-bit", Methods(True, False, False), 32, None),
        ("method 2, 32-bit", Methods(False, True, False), 32, None),
        ("method 3, 32-bit", Methods(False, False, True), 32, None),
        ("methods 1+2+3, 32-bit", Methods.all(), 32, None),
        ("methods 1+2+3, 16-bit", Methods.all(), 16, None),
        ("methods 1+2+3, 8-bit", Methods.all(), 8, None),
        ("methods 1+2+3, 8-bit in 16-bit sums", Methods.all(), 8, 16),
        ("no overlap, 8-bit", Methods.none(), 8, None),
    ]


@dataclass(frozen=True)
class ScaleRow:
    label: str
    workers: int
    step_time: float
    images_per_s: float
    efficiency: float
    payload_bytes: int


def compute_costs(net: Net, batch: int, chip: Chip, gpu: Gpu | None = None) -> tuple[LayerCost, ...]:
    """Per-layer costs on ``gpu`` if given (:func:`gpu_layer_costs`), else on ``chip`` (:func:`layer_costs`)."""
    return layer_costs(net, batch, chip) if gpu is None else gpu_layer_costs(net, batch, gpu)


def sweep(net: Net, workers: Iterable[int], batch: int, chip: Chip, links: Links,
          configs: list[tuple[str, Methods, int, int | None]] | None = None, gpu: Gpu | None = None,
          global_batch: bool = False) -> list[ScaleRow]:
    """Throughput of each configuration at each worker count.

    Weak scaling (default): ``batch`` images per worker. Strong scaling (``global_batch``): one
    mini-batch of ``batch`` images split evenly over the workers (each count must divide it).
    Compute on ``gpu`` if given, else on ``chip``. Efficiency is throughput over ``workers``
    times the one-worker throughput (one worker exchanges nothing, so it is the same for every
    configuration).

    Raises
    ------
    ValueError
        A worker count below 1, or (strong scaling) one that does not divide ``batch``.
    """
    configs = configs or standard_configs()
    ws = sorted(set(workers))
    if not ws or ws[0] < 1:
        raise ValueError(f"scale: workers={ws!r}: need one or more counts >= 1")
    if global_batch and any(batch % n for n in ws):
        raise ValueError(f"scale: global batch={batch} is not divisible by the worker counts "
                         f"{[n for n in ws if batch % n]}")

    def per_worker(n: int) -> int:
        return batch // n if global_batch else batch

    costs = {n: compute_costs(net, per_worker(n), chip, gpu) for n in {1, *ws}}
    single = simulate(costs[1], 1, links, Methods.none()).step_time
    rows = []
    for label, meth, bits, partial in configs:
        for n in ws:
            r = simulate(costs[n], n, links, meth, bits, chip.core.hist_bins, partial_bits=partial)
            ips = n * per_worker(n) / r.step_time
            rows.append(ScaleRow(label, n, r.step_time, ips, ips / (n * per_worker(1) / single), r.payload_bytes))
    return rows
