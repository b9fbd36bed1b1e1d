// dlu_host.h on a Verilator model of the generated dlu_core.v: every bus function advances the
// clock until its AXI handshakes complete; LOAD words queued by dlu_stream_send go out on s_axis
// whenever the core is ready, and STORE words from m_axis (always ready) are kept for
// dlu_stream_recv. main() resets the core (rst is active high, synchronous) and calls
// dlu_host_main(). Build: docs/programming.md, "The worked programs".
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <vector>

#include "Vdlu_core.h"
#include "verilated.h"

extern "C" {
#include "dlu_host.h"
#include "dlu_regs.h"
}

static const int WORD_U32 = DLU_WORD_BITS / 32;
static VerilatedContext* vctx;
static Vdlu_core* top;
static std::deque<std::vector<uint32_t>> to_core, from_core;
static uint64_t cycles;

static void put(uint32_t& p, const std::vector<uint32_t>& w) { p = w[0]; }
static void put(uint64_t& p, const std::vector<uint32_t>& w) { p = (uint64_t)w[1] << 32 | w[0]; }
template <std::size_t N> static void put(VlWide<N>& p, const std::vector<uint32_t>& w) {
    for (std::size_t i = 0; i < N; i++) p[i] = w[i];
}
static std::vector<uint32_t> get(uint32_t p) { return {p}; }
static std::vector<uint32_t> get(uint64_t p) { return {(uint32_t)p, (uint32_t)(p >> 32)}; }
template <std::size_t N> static std::vector<uint32_t> get(const VlWide<N>& p) {
    std::vector<uint32_t> w(N);
    for (std::size_t i = 0; i < N; i++) w[i] = p[i];
    return w;
}

static void drive_stream() {
    top->s_axis_tvalid = !to_core.empty();
    top->s_axis_tlast = to_core.size() == 1;  // ignored by the core (docs/programming.md)
    if (!to_core.empty()) put(top->s_axis_tdata, to_core.front());
    top->m_axis_tready = 1;
}

// One clock cycle: inputs are set; handshakes are sampled before the rising edge.
static void tick() {
    drive_stream();
    top->eval();
    bool in_hs = top->s_axis_tvalid && top->s_axis_tready;
    bool out_hs = top->m_axis_tvalid && top->m_axis_tready;
    std::vector<uint32_t> got;
    if (out_hs) got = get(top->m_axis_tdata);
    top->clk = 1;
    top->eval();
    vctx->timeInc(1);
    top->clk = 0;
    top->eval();
    vctx->timeInc(1);
    cycles++;
    if (in_hs) to_core.pop_front();
    if (out_hs) from_core.push_back(got);
}

extern "C" unsigned dlu_write(uint32_t addr, uint32_t value) {
    top->s_axil_awaddr = addr;
    top->s_axil_awvalid = 1;
    top->s_axil_wdata = value;
    top->s_axil_wstrb = 0xF;
    top->s_axil_wvalid = 1;
    top->s_axil_bready = 1;
    for (int i = 0; i < 1000; i++) {
        drive_stream();
        top->eval();
        bool aw = top->s_axil_awvalid && top->s_axil_awready;
        bool w = top->s_axil_wvalid && top->s_axil_wready;
        bool b = top->s_axil_bvalid;
        unsigned resp = top->s_axil_bresp;
        tick();
        if (aw) top->s_axil_awvalid = 0;
        if (w) top->s_axil_wvalid = 0;
        if (b) {
            top->s_axil_bready = 0;
            return resp;
        }
    }
    std::fprintf(stderr, "dlu_write(%#x): no response in 1000 cycles\n", addr);
    std::exit(3);
}

extern "C" unsigned dlu_read(uint32_t addr, uint32_t* value) {
    top->s_axil_araddr = addr;
    top->s_axil_arvalid = 1;
    top->s_axil_rready = 1;
    for (int i = 0; i < 1000; i++) {
        drive_stream();
        top->eval();
        bool ar = top->s_axil_arvalid && top->s_axil_arready;
        bool r = top->s_axil_rvalid;
        uint32_t data = top->s_axil_rdata;
        unsigned resp = top->s_axil_rresp;
        tick();
        if (ar) top->s_axil_arvalid = 0;
        if (r) {
            top->s_axil_rready = 0;
            *value = data;
            return resp;
        }
    }
    std::fprintf(stderr, "dlu_read(%#x): no response in 1000 cycles\n", addr);
    std::exit(3);
}

extern "C" void dlu_stream_send(const uint32_t* words, size_t n) {
    for (size_t i = 0; i < n; i++) to_core.emplace_back(words + i * WORD_U32, words + (i + 1) * WORD_U32);
}

extern "C" size_t dlu_stream_recv(uint32_t* words, size_t max) {
    size_t n = 0;
    for (; n < max && !from_core.empty(); n++) {
        for (int j = 0; j < WORD_U32; j++) words[n * WORD_U32 + j] = from_core.front()[j];
        from_core.pop_front();
    }
    return n;
}

int main(int argc, char** argv) {
    vctx = new VerilatedContext;
    vctx->commandArgs(argc, argv);
    top = new Vdlu_core{vctx};
    top->clk = 0;
    top->rst = 1;
    for (int i = 0; i < 4; i++) tick();
    top->rst = 0;
    int rc = dlu_host_main();
    std::printf("cycles %llu\n", (unsigned long long)cycles);
    top->final();
    delete top;
    delete vctx;
    return rc;
}
