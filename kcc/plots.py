"""PNG plots of `--report`: per-layer quantization error and per-node latency.

matplotlib is imported here only, lazily, and through its object-oriented API with the Agg canvas
(no pyplot, no global backend switch): the report works headless and `import kcc` stays light.
Each function returns PNG bytes so that the caller writes them atomically.
"""

from __future__ import annotations

import io

import numpy as np

from kcc.alloc.names import short_name
from kcc.latency import LatencyEstimate
from kcc.quant_error import QuantErrorReport

KPU_COLOR, CPU_COLOR = "#2a7ab0", "#d9822b"
LABEL_CHARS = 48
TOP_NODES = 30


def _figure(rows: int, width: float = 10.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, max(3.0, 1.4 + 0.28 * rows)), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _label(name: str) -> str:
    return short_name(name, LABEL_CHARS)


def _aligned(labels: list[str]) -> list[str]:
    """Pad to one width: tick labels are right-aligned, so monospace columns then line up."""
    width = max((len(s) for s in labels), default=0)
    return [s.ljust(width) for s in labels]


def quant_error_png(qe: QuantErrorReport) -> bytes:
    """Horizontal bars of SQNR (dB) per KPU layer in network order, coloured by severity,
    with the cosine similarity written at the end of each bar."""
    layers = sorted(qe.layers, key=lambda e: e.index)
    fig = _figure(len(layers))
    ax = fig.add_subplot(1, 1, 1)
    finite = [e.sqnr_db for e in layers if np.isfinite(e.sqnr_db)]
    cap = (max(finite) if finite else 60.0) + 5.0
    values = [e.sqnr_db if np.isfinite(e.sqnr_db) else cap for e in layers]
    colors = ["#c0392b" if v < 20 else "#e67e22" if v < 30 else "#27ae60" for v in values]
    y = np.arange(len(layers))
    ax.barh(y, values, color=colors)
    ax.set_yticks(y, _aligned([f"{e.index:>3}  {_label(e.name)}" for e in layers]), fontsize=8, family="monospace")
    ax.invert_yaxis()
    for yi, v, e in zip(y, values, layers):
        ax.text(v + cap * 0.01, yi, f"cos {e.cosine:.4f}", va="center", fontsize=7)
    ax.set_xlim(0, cap * 1.18)
    ax.set_xlabel("SQNR of the layer output, dB (float evaluator vs simulated uint8 kmodel; higher is better)")
    ax.axvline(20, color="#c0392b", lw=0.8, ls="--")
    ax.axvline(30, color="#e67e22", lw=0.8, ls="--")
    ax.set_title(f"Per-layer quantization error, {qe.samples} calibration sample(s); red < 20 dB, orange < 30 dB",
                 fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def latency_png(est: LatencyEstimate, names: list[str]) -> bytes:
    """The slowest nodes as horizontal bars (KPU blue, CPU orange), with the total in the title."""
    nodes = sorted(est.nodes, key=lambda n: -n.ms)[:TOP_NODES]
    fig = _figure(len(nodes))
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(nodes))
    ax.barh(y, [n.kpu_ms for n in nodes], color=KPU_COLOR, label="KPU")
    ax.barh(y, [n.cpu_ms for n in nodes], left=[n.kpu_ms for n in nodes], color=CPU_COLOR, label="CPU")
    labels = [f"{n.index:>3} {n.opcode:<16} {_label(names[n.index]) if n.index < len(names) else ''}" for n in nodes]
    ax.set_yticks(y, _aligned(labels), fontsize=8, family="monospace")
    ax.invert_yaxis()
    ax.set_xlabel("estimated time on the K210, ms")
    shown = "" if len(nodes) == len(est.nodes) else f" ({len(nodes)} slowest of {len(est.nodes)} nodes)"
    ax.set_title(f"Estimated latency {est.total_ms:.1f} ms: KPU {est.kpu_ms:.1f} ms, CPU {est.cpu_ms:.1f} ms at "
                 f"{est.kpu_mhz:g}/{est.cpu_mhz:g} MHz{shown}", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)
