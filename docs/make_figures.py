"""Draw docs/_static/scan_graph.png: the task graph of a 2-layer GRU over 6 time chunks
and 2 batch chunks, coloured by the earliest wave in which each scan task can run.

Run: python docs/make_figures.py
"""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

NT, NL, NB = 6, 2, 2


def draw(path):
    fig, ax = plt.subplots(figsize=(9, 5.2))
    cmap = plt.get_cmap("viridis", NT + NL - 1)
    w, h = 0.62, 0.42
    for j in range(NB):
        y0 = j * (NL + 1.35)
        for k in range(NT):
            # input projections: no dependency along time, all in wave 0
            ax.add_patch(FancyBboxPatch((k - w / 2, y0 - 0.9 - h / 2), w, h,
                                        boxstyle="round,pad=0.02", fc="0.88", ec="0.5"))
            ax.text(k, y0 - 0.9, "proj", ha="center", va="center", fontsize=7, color="0.3")
            for l in range(NL):
                wave = k + l
                y = y0 + l * 0.95
                ax.add_patch(FancyBboxPatch((k - w / 2, y - h / 2), w, h,
                                            boxstyle="round,pad=0.02", fc=cmap(wave), ec="k"))
                ax.text(k, y, f"scan\nl{l} k{k}", ha="center", va="center", fontsize=6.5,
                        color="w" if wave < NT else "k")
                below = y0 - 0.9 if l == 0 else y - 0.95
                ax.add_patch(FancyArrowPatch((k, below + h / 2), (k, y - h / 2),
                                             arrowstyle="-|>", mutation_scale=8, color="0.4"))
                if k + 1 < NT:
                    ax.add_patch(FancyArrowPatch((k + w / 2, y), (k + 1 - w / 2, y),
                                                 arrowstyle="-|>", mutation_scale=9,
                                                 color="C3", lw=1.6))
        ax.text(-0.75, y0 + 0.45, f"batch\nchunk {j}", ha="right", va="center", fontsize=9)
    ax.text(NT / 2 - 0.5, -1.75, "time chunks  →   (red arrows: boundary state h passed on)",
            ha="center", fontsize=9)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(-0.5, NT + NL - 1.5))
    cb = fig.colorbar(sm, ax=ax, fraction=0.03, pad=0.01, ticks=range(NT + NL - 1))
    cb.set_label("earliest wave (k + layer)")
    ax.set_xlim(-1.9, NT - 0.4)
    ax.set_ylim(-2.0, NB * (NL + 1.35) - 0.9)
    ax.axis("off")
    ax.set_title("scan tasks of a 2-layer GRU: chains along time,\n"
                 "a wavefront over layers, independent batch chunks", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    draw(os.path.join(os.path.dirname(os.path.abspath(__file__)), "_static", "scan_graph.png"))
