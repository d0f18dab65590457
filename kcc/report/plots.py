"""PNG plots of `--report`: per-layer quantization error and per-node latency.

matplotlib is imported here only, lazily, and through its object-oriented API with the Agg canvas
(no pyplot, no global backend switch): the report works headless and `import kcc` stays light.
Each function returns PNG bytes so that the caller writes them atomically.
"""

from __future__ import annotations

import io

import numpy as np

from kcc.alloc.names import model_name, short_name
from kcc.latency import LatencyEstimate
from kcc.report.quant_error import QuantErrorReport

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


def _fmt(db: float) -> str:
    return "exact" if np.isinf(db) else f"{db:.1f}"


def _note(e) -> str:
    """What follows a layer's bar: its cosine, and its clipped share, said to be deliberate when it is
    (then the bar is the SQNR in range, and the SQNR over all values is given too)."""
    text = f"cos {e.cosine:.4f}"
    if e.clipping:
        text += (f"; {100 * e.clipped_fraction:.1f}% clipped on purpose ({e.clipping}), "
                 f"{_fmt(e.sqnr_db)} dB over all values")
    elif e.clipped:
        text += f"; {100 * e.clipped_fraction:.1f}% clipped"
    return text


def quant_error_png(qe: QuantErrorReport) -> bytes:
    """Horizontal bars of SQNR (dB) per KPU layer in network order, coloured by severity, with the
    cosine similarity (and any clipping) written at the end of each bar. The bars are the figure the
    layers are ranked by (`LayerError.ranked_sqnr_db`), so the worst bar is the report's worst layer;
    a deliberately clipped range (softmax logits) is hatched."""
    layers = sorted(qe.layers, key=lambda e: e.index)
    fig = _figure(len(layers))
    ax = fig.add_subplot(1, 1, 1)
    finite = [e.ranked_sqnr_db for e in layers if np.isfinite(e.ranked_sqnr_db)]
    cap = (max(finite) if finite else 60.0) + 5.0
    values = [e.ranked_sqnr_db if np.isfinite(e.ranked_sqnr_db) else cap for e in layers]
    colors = ["#c0392b" if v < 20 else "#e67e22" if v < 30 else "#27ae60" for v in values]
    y = np.arange(len(layers))
    bars = ax.barh(y, values, color=colors)
    for bar, e in zip(bars, layers):
        if e.clipping:
            bar.set_hatch("//")
    worst = qe.layers[0] if qe.layers else None
    labels = [f"{e.index:>3}{'*' if e is worst else ' '} {_label(model_name(e.name))}" for e in layers]
    ax.set_yticks(y, _aligned(labels), fontsize=8, family="monospace")
    ax.invert_yaxis()
    for yi, v, e in zip(y, values, layers):
        ax.text(v + cap * 0.01, yi, _note(e), va="center", fontsize=7)
    ax.set_xlim(0, cap * 1.6 if any(e.clipping for e in layers) else cap * 1.18)
    ax.set_xlabel("SQNR of the layer output, dB (float evaluator vs simulated uint8 kmodel; "
                  "higher is better)\n"
                  "hatched: the range clips on purpose, SQNR over the values it holds")
    ax.axvline(20, color="#c0392b", lw=0.8, ls="--")
    ax.axvline(30, color="#e67e22", lw=0.8, ls="--")
    title = f"Per-layer quantization error, {qe.samples} calibration sample(s); red < 20 dB, orange < 30 dB"
    if worst is not None:
        title += (f"\nworst (*): node {worst.index}, {_label(model_name(worst.name))}, "
                  f"{_fmt(worst.ranked_sqnr_db)} dB")
    ax.set_title(title, fontsize=10)
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
