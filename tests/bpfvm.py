"""A classic BPF interpreter (the subset our filters use), to test programs offline.

It runs a program on one frame the way the kernel's ``sk_run_filter`` would:
loads past the end of the frame reject the packet, the return value is the
number of bytes to keep. Only for tests: it is slow (pure Python).
"""

from __future__ import annotations

from k8spacket.capture.bpf import Program

M32 = 0xFFFFFFFF


def run(program: Program, pkt: bytes) -> int:
    """The program's verdict on ``pkt`` (0: rejected, else the bytes to keep)."""
    a = x = 0
    mem = [0] * 16
    pc = 0
    n = len(pkt)

    def load(off: int, size: int) -> int | None:
        if off < 0 or off + size > n:
            return None
        return int.from_bytes(pkt[off : off + size], "big")

    while True:
        code, jt, jf, k = program[pc]
        pc += 1
        cls = code & 0x07
        if cls in (0x00, 0x01):  # LD, LDX
            mode, size = code & 0xE0, {0x00: 4, 0x08: 2, 0x10: 1}[code & 0x18]
            if cls == 0x01 and mode == 0xA0:  # ldxb 4*([k]&0xf)
                v = load(k, 1)
                if v is None:
                    return 0
                x = (v & 0xF) << 2
                continue
            if mode == 0x60:  # MEM
                v = mem[k]
            elif mode == 0x00:  # IMM
                v = k
            else:
                v = load(k + (x if mode == 0x40 else 0), size)
                if v is None:
                    return 0
            if cls == 0x00:
                a = v
            else:
                x = v
        elif cls == 0x02:
            mem[k] = a
        elif cls == 0x03:
            mem[k] = x
        elif cls == 0x04:  # ALU
            op, src = code & 0xF0, (x if code & 0x08 else k)
            if op == 0x00:
                a = a + src
            elif op == 0x10:
                a = a - src
            elif op == 0x20:
                a = a * src
            elif op == 0x40:
                a = a | src
            elif op == 0x50:
                a = a & src
            elif op == 0x60:
                a = a << src
            elif op == 0x70:
                a = a >> src
            else:
                raise ValueError(f"ALU opcode {code:#x} not supported")
            a &= M32
        elif cls == 0x05:  # JMP
            op, src = code & 0xF0, (x if code & 0x08 else k)
            if op == 0x00:
                pc += k
                continue
            cond = {0x10: a == src, 0x20: a > src, 0x30: a >= src, 0x40: bool(a & src)}[op]
            pc += jt if cond else jf
        elif cls == 0x06:
            return int(k)
        elif cls == 0x07:
            if code == 0x07:
                x = a
            else:
                a = x
        else:
            raise ValueError(f"opcode {code:#x} not supported")
