"""``DLUCore``: the top level. Wiring only; every block's logic lives in its own file.

::

              s_axil_*                    s_axis_* (LOAD)      m_axis_* (STORE)
                 |                              |                    ^
          +------v------+  cmds   +-----------+ |  +-------------+  |
   irq <--| AxiLiteSlave|-------->| Sequencer |<+--| AxiStream-  |--+
          |  (regmap)   |<--ctl-->| FIFO,     |--->|   Bridge    |
          +--+-------+--+         | decode,   |    +-------------+
   settings  |       | db window  | checks,   |--rd a/b, wr--> Scratchpad (banks)
     window  v       v            | addresses,|
  +----------------+ +---------+  | (un)pack  |<==operands/results==> ComputeUnit
  |SettingsRegister| |Distrib- |<-|           |                      (SIMD MACs,
  |  + valid bits  | |ution    |  +-----------+                       requantizer,
  +-------^--------+ |Database |<----commit/clear                     statistics,
          |          +----^----+                                      xorshift bank)
          +--PolicyController--+   (POLICY_UPDATE, started by the sequencer)

A CONTROL.soft_reset write resets every block but the register interface.
"""

from __future__ import annotations

from amaranth.hdl import Module, ResetInserter
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from reference.config import CoreConfig

from . import regmap
from .axi_lite import AxiLiteSlave, axil_members
from .axi_stream import AxiStreamBridge
from .database import DistributionDatabase
from .rng import RngHostSignature
from .scratchpad import Scratchpad
from .sequencer import ComputeControlSignature, Sequencer
from .settings import PolicyController, SettingsRegister, check_config


class DLUCore(wiring.Component):
    """One DLU core with its AXI4-Lite register interface and AXI4-Stream data ports.

    Parameters
    ----------
    cfg
        Core configuration (one netlist per configuration).
    with_compute_unit
        ``True`` (the core): instantiate :class:`hw.compute_unit.ComputeUnit`. ``False``: leave
        it out and bring the sequencer's compute-unit port out to the top level as ``cu`` (and
        the generator seed as ``cu_seed``/``cu_seed_load`` and the RNG_STATE window's port as
        ``cu_rng``), for testing the system around an external or modelled datapath.

    Members
    -------
    s_axil_* :
        AXI4-Lite slave (registers of :func:`hw.regmap.register_map`).
    s_axis_tdata, s_axis_tvalid, s_axis_tready, s_axis_tlast :
        LOAD data in, one scratchpad word (``lanes * 32`` bits) per beat.
    m_axis_tdata, m_axis_tvalid, m_axis_tready, m_axis_tlast :
        STORE data out.
    irq : Out(1)
        Interrupt.
    cmd_start : Out(1)
        High in the cycle a command leaves the FIFO (observability for timing checks).
    busy : Out(1)
        STATUS.busy: high from that cycle until the core can start the next command.

    Raises
    ------
    TypeError
        ``cfg`` is not a ``CoreConfig``, or ``with_compute_unit`` is not a bool.
    """

    def __init__(self, cfg: CoreConfig, with_compute_unit: bool = True) -> None:
        self.cfg = check_config(cfg)
        if not isinstance(with_compute_unit, bool):
            raise TypeError(f"with_compute_unit: expected a bool, got {with_compute_unit!r}")
        self.with_compute_unit = with_compute_unit
        w = cfg.word_bits
        members = axil_members(regmap.address_bits(cfg)) | {
            "s_axis_tdata": In(w), "s_axis_tvalid": In(1), "s_axis_tready": Out(1), "s_axis_tlast": In(1),
            "m_axis_tdata": Out(w), "m_axis_tvalid": Out(1), "m_axis_tready": In(1), "m_axis_tlast": Out(1),
            "irq": Out(1),
            "cmd_start": Out(1),
            "busy": Out(1),
        }
        if not with_compute_unit:
            members |= {"cu": Out(ComputeControlSignature(cfg)), "cu_seed": Out(32), "cu_seed_load": Out(1),
                        "cu_rng": Out(RngHostSignature(cfg.rng_slots))}
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        axil = AxiLiteSlave(cfg)
        seq = Sequencer(cfg)
        spad = Scratchpad(cfg)
        settings = SettingsRegister(cfg)
        db = DistributionDatabase(cfg)
        policy = PolicyController(cfg)
        bridge = AxiStreamBridge(cfg)
        soft = ResetInserter(axil.ctl.soft_reset)
        m.submodules.axil = axil
        m.submodules.seq = soft(seq)
        m.submodules.spad = spad
        m.submodules.settings = soft(settings)
        m.submodules.db = db
        m.submodules.policy = soft(policy)
        m.submodules.bridge = soft(bridge)

        # Flat top-level bus ports to the blocks that implement them.
        for name, member in self.signature.members.items():
            if name.startswith("s_axil_"):
                ours, theirs = getattr(self, name), getattr(axil, name)
            elif name.startswith(("s_axis_", "m_axis_")):
                ours, theirs = getattr(self, name), getattr(bridge, name)
            else:
                continue
            m.d.comb += theirs.eq(ours) if member.flow == In else ours.eq(theirs)
        m.d.comb += [self.irq.eq(axil.irq), self.cmd_start.eq(seq.cmd_start), self.busy.eq(seq.ctl.busy)]

        wiring.connect(m, axil.cmds, seq.cmds)
        wiring.connect(m, axil.ctl, seq.ctl)
        wiring.connect(m, axil.settings, settings.host)
        wiring.connect(m, axil.db, db.host)
        for i in range(len(seq.settings_rd)):
            wiring.connect(m, seq.settings_rd[i], settings.rd[i])
        for i in range(len(seq.spad_rd)):
            wiring.connect(m, seq.spad_rd[i], spad.rd[i])
        wiring.connect(m, seq.spad_wr, spad.wr)
        wiring.connect(m, seq.db_commit, db.commit)
        wiring.connect(m, seq.db_clear, db.clear)
        wiring.connect(m, policy.settings, settings.policy)
        wiring.connect(m, policy.db, db.policy)
        wiring.connect(m, bridge.load, seq.load)
        wiring.connect(m, seq.store, bridge.store)
        m.d.comb += [
            policy.start.eq(seq.policy_start),
            policy.threshold.eq(axil.threshold),
            seq.policy_done.eq(policy.done),
            seq.store_level.eq(bridge.store_level),
        ]

        if self.with_compute_unit:
            from .compute_unit import ComputeUnit

            cu = ComputeUnit(cfg)
            m.submodules.cu = soft(cu)
            for name, member in seq.cu.signature.members.items():
                if member.is_signature:
                    wiring.connect(m, getattr(seq.cu, name), getattr(cu, name))
                elif member.flow == Out:
                    m.d.comb += getattr(cu, name).eq(getattr(seq.cu, name))
                else:
                    m.d.comb += getattr(seq.cu, name).eq(getattr(cu, name))
            m.d.comb += [cu.seed.eq(axil.seed), cu.seed_load.eq(axil.seed_load)]
            wiring.connect(m, axil.rng, cu.rng)
        else:
            wiring.connect(m, wiring.flipped(self.cu), seq.cu)
            m.d.comb += [self.cu_seed.eq(axil.seed), self.cu_seed_load.eq(axil.seed_load)]
            wiring.connect(m, axil.rng, wiring.flipped(self.cu_rng))
        return m
