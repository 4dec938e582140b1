"""The machine at hand: CPU model, instruction sets, and how long this process has run.

Plain Python (no TensorFlow), so benchmarks can record the machine from any process.
"""

import os
import platform
import time
from pathlib import Path

# The instruction sets that decide float32 and bfloat16 speed on a CPU.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
CPU_NUMBERS = (("family", "cpu family"), ("model", "model"))  # /proc/cpuinfo's fields


def cpu_info(field):
    """The first `field` value of /proc/cpuinfo (e.g. "model name", "flags"), or ""."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return ""


def cpu_flags():
    """The CPU's instruction-set flags from /proc/cpuinfo (e.g. "avx2", "amx_bf16")."""
    return set(cpu_info("flags").split())


def isa_flags():
    """Which of ISA_FLAGS this CPU has, in ISA_FLAGS' order (e.g. ["avx2", "avx512f"])."""
    flags = cpu_flags()
    return [flag for flag in ISA_FLAGS if flag in flags]


def describe_cpu():
    """ "AMD EPYC (family 25, model 17; avx2 avx512f avx512_bf16), 2 cores": the CPU's name,
    its family and model numbers where /proc/cpuinfo has them (a virtual machine's "AMD EPYC"
    names several generations), and the instruction sets that decide its speed here."""
    name = cpu_info("model name") or platform.processor() or platform.machine()
    numbers = [f"{key} {value}" for key, field in CPU_NUMBERS if (value := cpu_info(field))]
    isa = " ".join(isa_flags()) or "no AVX2"
    return f"{name} ({'; '.join(filter(None, [', '.join(numbers), isa]))}), {os.cpu_count()} cores"


def seconds_since_process_start():
    """Wall seconds since this Python process started, imports included.

    Read from /proc on Linux; elsewhere counted from this module's import, which misses the
    interpreter's start-up (a second or two).
    """
    try:
        stat = Path("/proc/self/stat").read_text()
        now = time.clock_gettime(time.CLOCK_BOOTTIME)  # the clock `starttime` counts on
    except (OSError, AttributeError):
        return round(time.monotonic() - _IMPORTED, 2)
    start_ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, `starttime`
    return round(max(now - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0), 2)


_IMPORTED = time.monotonic()
