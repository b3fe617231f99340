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


def describe() -> str:
    """``"<CPU model>, <n> CPUs"``."""
    return f"{cpu_name()}, {os.cpu_count()} CPUs"
