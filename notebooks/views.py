"""Tables and charts for the notebooks, so their cells stay one or two lines.

Every function takes rows as sqlite-utils returns them (dicts keyed by column
name) and draws with matplotlib on a new figure, which the notebook's inline
backend shows when the cell ends.
"""

from collections.abc import Iterable

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator
from tabulate import tabulate

# Wide enough for twelve monthly bars with their labels on a code host's page.
FIGSIZE = (10, 4.5)


def table(rows: Iterable[dict], columns: list[str] | None = None):
    """Render ``rows`` as an HTML table, keeping only ``columns`` when given.

    Cell text is HTML-escaped, so titles that contain ``<`` show as typed.
    """
    rows = list(rows)
    if columns is not None:
        rows = [{column: row[column] for column in columns} for row in rows]
    return tabulate(rows, headers="keys", tablefmt="html")


def pivot(
    rows: Iterable[dict],
    x: str,
    group: str,
    value: str,
    x_values: Iterable | None = None,
) -> tuple[list, list, np.ndarray]:
    """Spread long rows into a matrix of shape (len(groups), len(xs)).

    Returns the x values (``x_values`` in their order when given, else the
    sorted values found), the groups in order of first appearance and the
    matrix, with 0 where a (group, x) pair has no row. Rows whose x value is
    not in ``x_values`` are left out, so a chart can show empty years.
    """
    rows = list(rows)
    xs = list(x_values) if x_values is not None else sorted({row[x] for row in rows})
    positions = {x_value: index for index, x_value in enumerate(xs)}
    rows = [row for row in rows if row[x] in positions]
    groups = list(dict.fromkeys(row[group] for row in rows))
    matrix = np.zeros((len(groups), len(xs)))
    for row in rows:
        matrix[groups.index(row[group]), positions[row[x]]] += row[value] or 0
    return xs, groups, matrix


def group_chart(
    rows: Iterable[dict],
    x: str,
    group: str,
    value: str,
    *,
    title: str,
    ylabel: str,
    stacked: bool = False,
    x_values: Iterable | None = None,
) -> None:
    """Draw ``value`` over the ``x`` values with one line per ``group``.

    With ``stacked`` it draws one bar per ``x`` value instead, stacked by
    ``group``. ``x_values`` fixes the x values and their order, as for
    :func:`pivot`.
    """
    xs, groups, matrix = pivot(rows, x, group, value, x_values)
    fig, ax = plt.subplots(figsize=FIGSIZE)
    bottom = np.zeros(len(xs))
    for name, heights in zip(groups, matrix, strict=True):
        if stacked:
            ax.bar(xs, heights, bottom=bottom, label=name)
            bottom += heights
        else:
            ax.plot(xs, heights, marker="o", label=name)
    if stacked:
        # Stacked bars count posts or queries, so ticks at 0.5 would mislead.
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    finish(ax, title=title, xlabel=x, ylabel=ylabel)


def horizontal_bars(
    labels: list[str], values: list[float], *, title: str, xlabel: str
) -> None:
    """Draw one bar per label, the first at the top."""
    fig, ax = plt.subplots(figsize=(FIGSIZE[0], 0.35 * len(labels) + 1))
    ax.barh(labels[::-1], values[::-1])
    ax.set(title=title, xlabel=xlabel)
    fig.tight_layout()


def heatmap(rows: Iterable[dict], x: str, y: str, value: str, *, title: str) -> None:
    """Draw ``value`` for each (``y``, ``x``) pair as a shaded, annotated grid."""
    xs, ys, matrix = pivot(rows, x, y, value)
    fig, ax = plt.subplots(figsize=(FIGSIZE[0], 0.4 * len(ys) + 2))
    ax.set(title=title, xlabel=x, ylabel=y)
    if not ys:
        show_no_rows(ax)
        return
    image = ax.imshow(matrix, aspect="auto", cmap="Blues")
    ax.set_xticks(range(len(xs)), xs, rotation=30, ha="right")
    ax.set_yticks(range(len(ys)), ys)
    # Dark cells get white text so the number stays readable.
    dark = matrix.max() * 0.6
    for (row, column), number in np.ndenumerate(matrix):
        if number:
            colour = "white" if number > dark else "black"
            ax.text(column, row, f"{number:g}", ha="center", va="center", color=colour)
    fig.colorbar(image, ax=ax, label=value)
    fig.tight_layout()


def grouped_bars(
    series: dict[str, dict[str, float]], *, title: str, xlabel: str, ylabel: str
) -> None:
    """Draw side-by-side bars: one group per inner key, one bar per outer key.

    ``{"keyword": {"all": 0.8, "exact": 1.0}, "semantic": {...}}`` draws the
    groups "all" and "exact", each with a keyword and a semantic bar.
    """
    names = list(series)
    groups = list(dict.fromkeys(key for values in series.values() for key in values))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for index, name in enumerate(names):
        positions = np.arange(len(groups)) + (index - (len(names) - 1) / 2) * width
        heights = [series[name].get(group, 0.0) for group in groups]
        bars = ax.bar(positions, heights, width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize="small")
    ax.set_xticks(range(len(groups)), groups)
    finish(ax, title=title, xlabel=xlabel, ylabel=ylabel)


def finish(ax, *, title: str, xlabel: str, ylabel: str) -> None:
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if ax.get_legend_handles_labels()[0]:
        # Outside the axes, on the right, so it never hides a bar or a line.
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    else:
        show_no_rows(ax)
    ax.tick_params(axis="x", labelrotation=30)
    ax.figure.tight_layout()


def show_no_rows(ax) -> None:
    """Write "no rows" on an empty chart, such as themes before any has posts."""
    ax.text(0.5, 0.5, "no rows", ha="center", va="center", transform=ax.transAxes)
