// Pure C++ (Verilator --binary --timing) replay of an RTL-engine program: the speed baseline.
//
// sim/rtl_engine.py (cpp_baseline) writes the program as $readmemh lines of
// {op[3:0], addr[31:0], data[W-1:0]} and builds this bench with the generated dlu_core.v.
// It performs the same bus operations as sim/rtl_bench.py (the cocotb driver) with no
// Python at all: AXI4-Lite writes and reads, LOAD beats on s_axis, STORE beats on m_axis,
// a wait of the predicted cycles, STATUS polls. Inputs change on the falling edge; a
// handshake is decided from the settled values before the next rising edge.
`timescale 1ns/1ps
module dlu_replay_tb #(
    parameter int W = 256,            // lanes * 32
    parameter int AW = 16,            // AXI4-Lite address bits
    parameter int N = 1,              // program entries
    parameter int STATUS = 'h14,      // STATUS register address
    parameter int DONE_BIT = 1,
    parameter int BUSY_BIT = 0
);
    localparam int OP_END = 0, OP_WR = 1, OP_RD = 2, OP_IN = 3, OP_OUT = 4, OP_POLL = 5, OP_WAIT = 6;

    logic clk = 0, rst = 1;
    logic [AW-1:0] awaddr = 0, araddr = 0;
    logic awvalid = 0, wvalid = 0, arvalid = 0;
    logic [31:0] wdata = 0;
    logic awready, wready, bvalid, arready, rvalid;
    logic [1:0] bresp, rresp;
    logic [31:0] rdata;
    logic [W-1:0] s_tdata = 0, m_tdata;
    logic s_tvalid = 0, s_tlast = 0, s_tready, m_tvalid, m_tlast, m_tready = 0;
    logic irq, cmd_start, busy;

    dlu_core dut (
        .clk(clk), .rst(rst),
        .s_axil_awaddr(awaddr), .s_axil_awprot(3'd0), .s_axil_awvalid(awvalid), .s_axil_awready(awready),
        .s_axil_wdata(wdata), .s_axil_wstrb(4'hf), .s_axil_wvalid(wvalid), .s_axil_wready(wready),
        .s_axil_bresp(bresp), .s_axil_bvalid(bvalid), .s_axil_bready(1'b1),
        .s_axil_araddr(araddr), .s_axil_arprot(3'd0), .s_axil_arvalid(arvalid), .s_axil_arready(arready),
        .s_axil_rdata(rdata), .s_axil_rresp(rresp), .s_axil_rvalid(rvalid), .s_axil_rready(1'b1),
        .s_axis_tdata(s_tdata), .s_axis_tvalid(s_tvalid), .s_axis_tlast(s_tlast), .s_axis_tready(s_tready),
        .m_axis_tdata(m_tdata), .m_axis_tvalid(m_tvalid), .m_axis_tlast(m_tlast), .m_axis_tready(m_tready),
        .irq(irq), .cmd_start(cmd_start), .busy(busy)
    );

    always #5 clk = ~clk;
    longint cycles = 0;
    always @(posedge clk) cycles <= cycles + 1;

    logic [W+35:0] prog [0:N-1];
    logic [31:0] checksum = 0;  // of every word read, so nothing is optimised away

    task automatic wr(input logic [31:0] a, input logic [31:0] d);
        logic aw_left = 1, w_left = 1, aw_fire, w_fire;
        awaddr = a[AW-1:0]; wdata = d; awvalid = 1; wvalid = 1;
        while (aw_left || w_left) begin
            #1;
            aw_fire = awvalid && awready;
            w_fire = wvalid && wready;
            @(negedge clk);
            if (aw_fire) begin awvalid = 0; aw_left = 0; end
            if (w_fire) begin wvalid = 0; w_left = 0; end
        end
        forever begin
            #1;
            if (bvalid) begin @(negedge clk); break; end
            @(negedge clk);
        end
    endtask

    task automatic rd(input logic [31:0] a, output logic [31:0] d);
        araddr = a[AW-1:0]; arvalid = 1;
        forever begin
            #1;
            if (arready) begin @(negedge clk); arvalid = 0; break; end
            @(negedge clk);
        end
        forever begin
            #1;
            if (rvalid) begin d = rdata; @(negedge clk); break; end
            @(negedge clk);
        end
        checksum = checksum ^ d;
    endtask

    initial begin
        int pc;
        logic [3:0] op;
        logic [31:0] a, d;
        string path;
        longint c0;
        if (!$value$plusargs("program=%s", path)) $fatal(1, "dlu_replay_tb: +program=FILE missing");
        $readmemh(path, prog);
        repeat (4) @(negedge clk);
        rst = 0;
        @(negedge clk);
        c0 = cycles;
        pc = 0;
        forever begin
            op = prog[pc][W+35:W+32];
            a = prog[pc][W+31:W];
            case (op)
                OP_END: break;
                OP_WR: wr(a, prog[pc][31:0]);
                OP_RD: rd(a, d);
                OP_IN: begin  // a = beats; the next a entries hold the data
                    for (int i = 1; i <= int'(a); i++) begin
                        s_tdata = prog[pc + i][W-1:0]; s_tlast = (i == int'(a)); s_tvalid = 1;
                        forever begin
                            #1;
                            if (s_tready) begin @(negedge clk); break; end
                            @(negedge clk);
                        end
                    end
                    s_tvalid = 0; s_tlast = 0;
                    pc += int'(a);
                end
                OP_OUT: begin
                    m_tready = 1;
                    for (int i = 0; i < int'(a); ) begin
                        #1;
                        if (m_tvalid) begin checksum = checksum ^ m_tdata[31:0]; i++; end
                        @(negedge clk);
                    end
                    m_tready = 0;
                end
                OP_POLL: forever begin
                    rd(STATUS, d);
                    if (d[DONE_BIT] && !d[BUSY_BIT]) break;
                end
                OP_WAIT: repeat (int'(a)) @(negedge clk);
                default: $fatal(1, "dlu_replay_tb: bad op %0d at entry %0d", op, pc);
            endcase
            pc++;
        end
        $display("dlu_replay_tb: cycles %0d checksum %08x", cycles - c0, checksum);
        $finish;
    end
endmodule
