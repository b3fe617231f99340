"""What the benchmark scripts print about the machine they ran on."""
import os
import platform


def cpu_name() -> str:
    """The CPU model (Linux: /proc/cpuinfo's "model name", with family and model numbers,
    which tell generations apart where the name does not), else what platform knows."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first CPU is enough
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        pass
    if "model name" in info:
        return (f"{info['model name']} (family {info.get('cpu family', '?')}, model "
                f"{info.get('model', '?')})")
    return platform.processor() or platform.machine()


# Seconds of quiet before a timed call on a dask.distributed cluster: the client sends its
# messages to the scheduler in batches at most every 10 ms, so a graph submitted right after
# the previous call's results were released waited for the batch (the row on a
# 2-worker cluster, Zen 5: the first task started 11 ms after the submission, 5.7 ms after
# 20 ms of quiet). Outside the timing, for every contender alike.
QUIET = 0.02


def describe() -> str:
    """``"<CPU model>, <n> CPUs"``."""
    return f"{cpu_name()}, {os.cpu_count()} CPUs"


def warm_memory(mib: int) -> None:
    """Touch ``mib`` MiB of fresh memory and free it: the next allocations of this process
    reuse pages the machine has just backed. On a virtual machine that hands memory freed
    for a few seconds back to its host (free page reporting), a first touch of such memory
    costs about a millisecond or more per MiB (``python benchmarks/machine.py``), which a
    benchmark would otherwise count against whichever contender allocates most."""
    if mib > 0:
        import numpy as np

        block = np.empty((int(mib) << 20) // 4, np.float32)
        block[:] = 0
        del block


def fresh_memory_cost(mib: int = 256, idle=(0.0, 3.0, 6.0)) -> dict:
    """Milliseconds to allocate and fill ``mib`` MiB of float32, right after the same amount
    was freed and after ``idle`` seconds of rest (the first: warm pages; later ones show
    whether the machine takes idle freed memory back)."""
    import time

    import numpy as np

    def fill():
        t = time.perf_counter()
        block = np.empty((mib << 20) // 4, np.float32)
        block[:] = 1
        del block
        return (time.perf_counter() - t) * 1e3

    fill()
    out = {}
    for s in idle:
        time.sleep(s)
        out[s] = fill()
    return out


if __name__ == "__main__":
    print(describe())
    mib = 256
    for s, ms in fresh_memory_cost(mib).items():
        print(f"allocate and fill {mib} MiB after {s:.0f} s of rest: {ms:7.1f} ms "
              f"({ms / mib:.2f} ms/MiB)")
