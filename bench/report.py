"""Summarise a bench/run.sh result file: a comparison table (appended to the markdown)
and an SVG plot of throughput and latency against concurrency (written beside it).

    python bench/report.py bench/results/<time>.md

Stdlib only: the plot is hand-written SVG (no matplotlib on the bench machines).
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

SUMMARY_MARK = "## Summary"
QUIET_MARK = "### One connection, nothing else running"
PALETTE = ("#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#0a7e8c", "#6e7781")


@dataclass
class Cell:
    scenario: str
    conns: int
    rps: float
    p50: float
    p99: float
    added_p50: float
    added_p99: float
    cpu_ms: float | None


@dataclass
class Section:
    name: str
    cells: list[Cell] = field(default_factory=list)
    startup_ms: int | None = None
    rss_idle: int | None = None
    rss_peak: int | None = None
    stream_added_ttfb: float | None = None
    usage_rows: int | None = None
    # +p99 at one connection from bench/run.sh's quiet cells (no RSS sampler), per scenario
    quiet_added_p99: dict[str, float] = field(default_factory=dict)
    in_quiet_table: bool = False

    def cell(self, scenario: str, conns: int) -> Cell | None:
        return next((c for c in self.cells if c.scenario == scenario and c.conns == conns), None)


def parse_sections(text: str) -> list[Section]:
    """One Section per `## ` heading that holds a gateway's tables."""
    sections: list[Section] = []
    current: Section | None = None
    for line in text.splitlines():
        if line.startswith(SUMMARY_MARK):
            break
        if line.startswith("## "):
            current = Section(line[3:].strip())
            sections.append(current)
            continue
        if current is None:
            continue
        parse_line(current, line)
    return [s for s in sections if s.cells]


def parse_line(section: Section, line: str) -> None:
    if line.startswith("### "):
        section.in_quiet_table = line.startswith(QUIET_MARK)
        return
    if section.in_quiet_table:
        if m := re.match(r"\| (openai|anthropic) \|(?: [^|]+ \|){5} ([+-][\d.]+) \|$", line):
            section.quiet_added_p99[m.group(1)] = float(m.group(2))
        return
    if m := re.match(r"Gateway start-up to first healthy response: (\d+) ms", line):
        section.startup_ms = int(m.group(1))
    elif m := re.match(r"Gateway RSS: idle (\d+) MiB, peak during run (\d+) MiB", line):
        section.rss_idle, section.rss_peak = int(m.group(1)), int(m.group(2))
    elif m := re.match(r"Usage rows recorded: (\d+)", line):
        section.usage_rows = int(m.group(1))
    elif line.startswith("| ttfb |"):
        section.stream_added_ttfb = float(line.split("|")[6])
    elif re.match(r"\| (openai|anthropic) \| \d+ \|", line):
        f = [x.strip() for x in line.strip("|").split("|")]
        cpu = None if f[11] == "-" else float(f[11])
        section.cells.append(
            Cell(f[0], int(f[1]), float(f[5]), float(f[6]), float(f[7]), float(f[8]), float(f[9]), cpu)
        )


def short_name(section: Section) -> str:
    name = section.name
    if name.startswith("llmgate, variant "):
        return "llmgate " + name.split("variant ", 1)[1].split(" ", 1)[0]
    return name.split(" (", 1)[0]


def build_summary(sections: list[Section]) -> str:
    """The comparison table, one row per gateway and scenario, with ratios to LiteLLM."""
    litellm = next((s for s in sections if s.name.startswith("LiteLLM")), None)
    lines = [
        SUMMARY_MARK,
        "",
        "| gateway | scenario | rps @1 | rps @32 | x LiteLLM @32 | +p50 ms @1 | +p99 ms @1 | +p99 ms @1 quiet "
        "| CPU ms/req @32 | stream +ttfb ms | RSS idle/peak MiB | start-up ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for section in sections:
        for scenario in dict.fromkeys(c.scenario for c in section.cells):
            one, busy = section.cell(scenario, 1), section.cell(scenario, 32)
            base = litellm.cell(scenario, 32) if litellm is not None else None
            ratio = f"{busy.rps / base.rps:.1f}" if busy and base and base.rps else "-"
            lines.append(
                "| "
                + " | ".join(
                    [
                        short_name(section),
                        scenario,
                        f"{one.rps:.0f}" if one else "-",
                        f"{busy.rps:.0f}" if busy else "-",
                        ratio,
                        f"{one.added_p50:+.2f}" if one else "-",
                        f"{one.added_p99:+.2f}" if one else "-",
                        f"{section.quiet_added_p99[scenario]:+.2f}" if scenario in section.quiet_added_p99 else "-",
                        f"{busy.cpu_ms:.2f}" if busy and busy.cpu_ms is not None else "-",
                        f"{section.stream_added_ttfb:+.2f}" if section.stream_added_ttfb is not None else "-",
                        f"{section.rss_idle}/{section.rss_peak}" if section.rss_idle is not None else "-",
                        str(section.startup_ms) if section.startup_ms is not None else "-",
                    ]
                )
                + " |"
            )
    return "\n".join(lines) + "\n"


# -- the plot ----------------------------------------------------------------------------


def build_svg(sections: list[Section]) -> str:
    """Two panels side by side: requests/s and p50 latency (log scales) against connections."""
    series = []
    for i, section in enumerate(sections):
        for j, scenario in enumerate(dict.fromkeys(c.scenario for c in section.cells)):
            cells = sorted((c for c in section.cells if c.scenario == scenario), key=lambda c: c.conns)
            color = PALETTE[i % len(PALETTE)]
            series.append((f"{short_name(section)} {scenario}", color, j > 0, cells))
    width, height = 960, 420
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
    ]
    panel_w, panel_h, top = 380, 300, 40
    for k, (title, metric) in enumerate((("requests/s", "rps"), ("p50 latency, ms", "p50"))):
        x0 = 60 + k * (panel_w + 80)
        parts.extend(build_panel(series, metric, title, x0, top, panel_w, panel_h))
    legend_y = top + panel_h + 40
    for n, (label, color, dashed, _) in enumerate(series):
        lx = 60 + (n % 4) * 220
        ly = legend_y + (n // 4) * 16
        dash = ' stroke-dasharray="5,3"' if dashed else ""
        parts.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 24}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/>')
        parts.append(f'<text x="{lx + 30}" y="{ly + 4}">{escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def build_panel(
    series: list[tuple[str, str, bool, list[Cell]]], metric: str, title: str, x0: int, y0: int, w: int, h: int
) -> list[str]:
    values = [getattr(c, metric) for _, _, _, cells in series for c in cells if getattr(c, metric) > 0]
    conns = sorted({c.conns for _, _, _, cells in series for c in cells})
    if not values or not conns:
        return []
    lo, hi = 10 ** math.floor(math.log10(min(values))), 10 ** math.ceil(math.log10(max(values)))
    if hi <= lo:
        hi = lo * 10
    cmin, cmax = min(conns), max(conns)

    def px(c: int) -> float:
        return x0 + (w * (math.log(c / cmin) / math.log(cmax / cmin)) if cmax > cmin else w / 2)

    def py(v: float) -> float:
        return y0 + h - h * (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

    out = [
        f'<text x="{x0}" y="{y0 - 12}" font-size="13" font-weight="bold">{escape(title)} vs connections</text>',
        f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#8c959f"/>',
    ]
    decade = lo
    while decade <= hi:
        y = py(decade)
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + w}" y2="{y:.1f}" stroke="#eaeef2"/>')
        out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{format_tick(decade)}</text>')
        decade *= 10
    for c in conns:
        x = px(c)
        out.append(f'<text x="{x:.1f}" y="{y0 + h + 16}" text-anchor="middle">{c}</text>')
    for _, color, dashed, cells in series:
        points = [(px(c.conns), py(getattr(c, metric))) for c in cells if getattr(c, metric) > 0]
        if not points:
            continue
        dash = ' stroke-dasharray="5,3"' if dashed else ""
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        out.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in points)
    return out


def format_tick(value: float) -> str:
    return f"{value:g}" if value < 1 else f"{value:,.0f}"


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def main(path: str) -> None:
    result = Path(path)
    text = result.read_text()
    sections = parse_sections(text)
    if not sections:
        raise SystemExit(f"{path}: no benchmark tables found")
    text = text.split("\n" + SUMMARY_MARK, 1)[0].rstrip("\n") + "\n\n" + build_summary(sections)
    result.write_text(text + f"\nPlot: {result.with_suffix('.svg').name}\n")
    result.with_suffix(".svg").write_text(build_svg(sections))
    print(build_summary(sections))


if __name__ == "__main__":
    main(sys.argv[1])
