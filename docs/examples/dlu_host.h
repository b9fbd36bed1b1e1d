/* The five bus functions a DLU host program needs (docs/programming.md, "Talking to the core").
 *
 * A real host implements them on its AXI4-Lite master and its AXI4-Stream DMA; verilator_shim.cpp
 * implements them on a Verilator model of the generated dlu_core.v, cycle by cycle.
 */
#ifndef DLU_HOST_H
#define DLU_HOST_H

#include <stddef.h>
#include <stdint.h>

#define DLU_RESP_OKAY 0u
#define DLU_RESP_SLVERR 2u

/* Write a 32-bit register (WSTRB = 0b1111); returns BRESP. */
unsigned dlu_write(uint32_t addr, uint32_t value);
/* Read a 32-bit register into *value; returns RRESP. */
unsigned dlu_read(uint32_t addr, uint32_t *value);
/* Queue n scratchpad words for s_axis (LOAD data); word i is words[i * DLU_WORD_BITS / 32 ...], low 32 bits first. */
void dlu_stream_send(const uint32_t *words, size_t n);
/* Take up to max words the core has sent on m_axis (STORE data) so far; returns how many. */
size_t dlu_stream_recv(uint32_t *words, size_t max);

/* The host program: called by the harness after reset; its return value is the exit status. */
int dlu_host_main(void);

#endif /* DLU_HOST_H */
