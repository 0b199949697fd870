"""What every plot shares: bounded sizes, readable labels, numbers without float noise, legends outside the data."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.transforms import ScaledTranslation

#: Largest figure a plot makes for itself, in inches (width, height): a page, or a notebook cell without scrolling.
MAX_SIZE = (18.0, 12.0)
#: Smallest font a tick label is drawn at; rows too dense for it get every k-th label instead.
MIN_FONT = 6.0


def axes(ax: plt.Axes | None, size: tuple[float, float]) -> plt.Axes:
    """The given Axes, or a new figure's of ``size`` inches, bounded by :data:`MAX_SIZE`."""
    if ax is None:
        _, ax = plt.subplots(figsize=bounded(size))
    return ax


def bounded(size: tuple[float, float]) -> tuple[float, float]:
    """``size`` clipped to :data:`MAX_SIZE` (and at least 2 inches each way)."""
    return (float(np.clip(size[0], 2, MAX_SIZE[0])), float(np.clip(size[1], 2, MAX_SIZE[1])))


def number(value: float, digits: int = 3) -> str:
    """A number as a reader writes it: integers as integers, others to ``digits`` significant digits, never in
    scientific notation below a million (``2.3720000000000003`` → ``2.37``, ``119.615`` → ``120``, ``2.0`` → ``2``).

    Examples
    --------
    >>> [number(v) for v in (2.3720000000000003, 119.615, 2.0, -0.001, 12345.6, 0.000123)]
    ['2.37', '120', '2', '-0.001', '12,346', '0.000123']
    """
    if value is None or not np.isfinite(value):
        return "n/a"
    value = float(value)
    if abs(value) >= 1000 or value.is_integer():
        return f"{value:,.0f}" if abs(value) >= 10_000 else f"{value:.0f}"
    return np.format_float_positional(value, precision=digits, fractional=False, trim="-")


def annotation_format(values) -> str:
    """One format for every annotated number of a heatmap: as many decimals as three significant digits of the
    largest magnitude need (so 0.082 and 0.0733 print as 0.0820 and 0.0733, 287 and 120 as 287 and 120).

    Examples
    --------
    >>> annotation_format([0, 0.082, 0.0346]), annotation_format([0, 287.2, 120.4]), annotation_format([0, 0.74, 1])
    ('.4f', '.0f', '.2f')
    """
    finite = np.abs(np.asarray(values, dtype=float))
    finite = finite[np.isfinite(finite) & (finite > 0)]
    if not len(finite):
        return ".0f"
    return f".{int(np.clip(2 - math.floor(math.log10(finite.max())), 0, 4))}f"


def label_layout(ax: plt.Axes, n: int, *, axis: str = "y", largest: float = 9.0) -> tuple[float, int]:
    """Font size and stride for ``n`` category labels along an axis of ``ax``: the font fills at most 70% of a
    row's pitch (so neighbouring labels never touch), between :data:`MIN_FONT` and ``largest`` points; rows too
    dense for :data:`MIN_FONT` are labelled every ``stride``-th."""
    fig = ax.figure
    box = ax.get_position()
    length = (box.height * fig.get_figheight() if axis == "y" else box.width * fig.get_figwidth()) * 72
    pitch = length / max(n, 1)
    size = min(largest, 0.7 * pitch)
    if size >= MIN_FONT:
        return size, 1
    return MIN_FONT, math.ceil(MIN_FONT / (0.7 * pitch))


def row_labels(ax: plt.Axes, positions, labels, *, axis: str = "y", largest: float = 9.0) -> None:
    """Category tick labels that never touch: sized by :func:`label_layout`, every k-th when rows are too dense
    (the axis label then says which are shown)."""
    positions, labels = list(positions), list(labels)
    size, stride = label_layout(ax, len(labels), axis=axis, largest=largest)
    setter = ax.set_yticks if axis == "y" else ax.set_xticks
    setter(positions[::stride], labels[::stride], fontsize=size)
    if stride > 1:
        (ax.set_ylabel if axis == "y" else ax.set_xlabel)(f"every {stride}th of {len(labels)} labels shown")


def legend_outside(ax: plt.Axes, *, where: str = "right", **options) -> None:
    """A legend beside the Axes (``where="right"``) or under it (``"below"``), never over the data."""
    if not ax.get_legend_handles_labels()[0]:
        return
    options = {"fontsize": "small", "frameon": False, **options}
    if where == "right":
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **options)
    else:  # under the x label, however tall the tick labels are
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), **options)
        _below_ticks(ax)


def _below_ticks(ax: plt.Axes) -> None:
    """Anchor a legend under ``ax`` below its x tick labels and x label, at a distance in inches (measured now),
    so it stays clear of them when a layout later resizes the Axes."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    axis_box = ax.get_window_extent(renderer)
    ticks = ax.xaxis.get_tightbbox(renderer)  # tick labels and axis label, placed as they will be drawn
    bottom = min(ticks.y0, axis_box.y0) if ticks is not None else axis_box.y0
    drop = (axis_box.y0 - bottom) / fig.dpi + 0.08
    shift = ScaledTranslation(0, -drop, fig.dpi_scale_trans)
    ax.get_legend().set_bbox_to_anchor((0.5, 0.0), transform=ax.transAxes + shift)


def robust_limits(values, *, quantile: float = 0.98, always=()) -> tuple[float, float, int, int]:
    """Axis limits that a few outliers cannot flatten: the range of the central ``quantile`` of ``values`` with a
    margin (widened to include ``always``, e.g. the binned means drawn). Returns ``(low, high, n_below,
    n_above)``: how many values lie beyond each limit."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return 0.0, 1.0, 0, 0
    tail = (1 - quantile) / 2
    lo, hi = np.quantile(v, [tail, 1 - tail])
    extra = np.asarray(list(always), dtype=float)
    extra = extra[np.isfinite(extra)]
    if len(extra):
        lo, hi = min(lo, extra.min()), max(hi, extra.max())
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    lo, hi = lo - 0.08 * span, hi + 0.08 * span
    if v.min() >= lo and v.max() <= hi:  # nothing would be cut: the plain range
        span = (v.max() - v.min()) or max(abs(v.max()), 1.0)
        return v.min() - 0.05 * span, v.max() + 0.05 * span, 0, 0
    return lo, hi, int((v < lo).sum()), int((v > hi).sum())


def place_labels(ax: plt.Axes, xs, ys, texts, *, fontsize: float = 7, gap: float = 1.0) -> list:
    """Annotate points with texts that overlap neither each other nor the axes' edge: each label tries eight
    positions around its point and is dropped when none is free. Returns the annotations drawn."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    placed, drawn = [], []
    offsets = [(4, 4), (4, -10), (-4, 4), (-4, -10), (6, -3), (-6, -3), (0, 7), (0, -12)]
    for x, y, text in zip(xs, ys, texts, strict=True):
        for dx, dy in offsets:
            note = ax.annotate(str(text), (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                               ha="left" if dx > 0 else "right" if dx < 0 else "center", va="bottom",
                               color="0.15")
            box = note.get_window_extent(renderer).expanded(1.0 + gap / 20, 1.0 + gap / 10)
            inside = (box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0 and box.y1 <= frame.y1)
            if inside and not any(box.overlaps(other) for other in placed):
                placed.append(box)
                drawn.append(note)
                break
            note.remove()
    return drawn


def differences(rows: pd.DataFrame, labels, colours, *, ax: plt.Axes) -> plt.Axes:
    """One row per difference: its point (coloured by verdict), its CI bar, and the zero line. Rows without a
    difference keep their label (which should say why) and draw nothing."""
    y = np.arange(len(rows))
    diff = rows["difference"].to_numpy(dtype=float)
    ok = np.isfinite(diff)
    low, high = rows["ci_low"].to_numpy(dtype=float), rows["ci_high"].to_numpy(dtype=float)
    ax.errorbar(diff[ok], y[ok], xerr=[diff[ok] - low[ok], high[ok] - diff[ok]], fmt="none", ecolor="0.6",
                capsize=2)
    ax.scatter(diff[ok], y[ok], c=list(np.asarray(list(colours), dtype=object)[ok]), zorder=3)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    row_labels(ax, y, list(labels))
    return ax


def grouped_differences(rows: pd.DataFrame, *, group: str, label: pd.Series, colour: pd.Series,
                        ax: plt.Axes | None, size: tuple[float, float] = (6.5, 2.2)) -> plt.Axes:
    """:func:`differences` in blocks: a bold header row per value of ``group`` (e.g. the split) above its rows,
    so a label never repeats the group, with a thin line between blocks. ``size`` is the figure's size without
    rows; each row adds 0.24 inch."""
    groups = list(dict.fromkeys(rows[group].astype(str))) if group in rows else [""]
    blocks = []
    for name in groups:
        inside = (rows[group].astype(str) == name).to_numpy() if group in rows else np.ones(len(rows), dtype=bool)
        if len(groups) > 1 or name:
            blocks.append(pd.DataFrame({"label": [name], "difference": [np.nan], "ci_low": [np.nan],
                                        "ci_high": [np.nan], "colour": ["none"], "header": [True]}))
        part = rows[inside]
        blocks.append(pd.DataFrame({"label": label[inside].to_numpy(), "difference": part["difference"].to_numpy(),
                                    "ci_low": part["ci_low"].to_numpy(), "ci_high": part["ci_high"].to_numpy(),
                                    "colour": colour[inside].to_numpy(), "header": False}))
    table = pd.concat(blocks, ignore_index=True)
    ax = axes(ax, (size[0], size[1] + 0.24 * len(table)))
    differences(table, table["label"], table["colour"], ax=ax)
    headers = set(np.flatnonzero(table["header"].to_numpy()))
    for tick, position in zip(ax.get_yticklabels(), ax.get_yticks(), strict=True):
        if int(round(position)) in headers:
            tick.set_fontweight("bold")
    for i in sorted(headers)[1:]:
        ax.axhline(i - 0.5, color="0.85", lw=0.8)
    return ax


def verdict_legend(ax: plt.Axes, entries: list[tuple[str, str]], *, title: str | None = None) -> None:
    """A legend of the verdict colours (label, colour) under the Axes."""
    for text, colour in entries:
        ax.scatter([], [], color=colour, label=text)
    legend_outside(ax, where="below", ncol=2, title=title, title_fontsize="small")


def empty(ax: plt.Axes, what: str, why: str) -> plt.Axes:
    """An empty plot that says in a sentence why it is empty (a shape of data the analysis cannot use), so a
    reader never meets a blank panel."""
    ax.text(0.5, 0.5, f"no {what}:\n{why}", ha="center", va="center", transform=ax.transAxes, color="0.4", wrap=True)
    ax.set_axis_off()
    return ax


def why_empty(table: pd.DataFrame, default: str) -> str:
    """The reason a vclib table is empty (its first ``attrs["skipped"]`` entry), else ``default``."""
    return (table.attrs.get("skipped") or [{}])[0].get("reason") or default
