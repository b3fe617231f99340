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
