//! The figures, their goals, and the three ways they are written out: the table on standard
//! output (and as Markdown for the README), `results.json`, and the SVG chart.

use std::fmt::Write;

use serde_json::{json, Value};

/// What a figure is compared with.
#[derive(Clone, Copy, Debug)]
pub enum Goal {
    /// Informational: no goal.
    None,
    /// At most this much.
    AtMost(f64),
    /// Exactly this (within display precision).
    Exactly(f64),
}

/// One figure of the table.
#[derive(Clone, Debug)]
pub struct Row {
    /// Stable key in `results.json`.
    pub key: String,
    /// Section heading.
    pub section: &'static str,
    /// What was measured.
    pub label: String,
    /// The number (None: could not be measured).
    pub value: Option<f64>,
    /// The unit of `value` and the goal.
    pub unit: Unit,
    /// The goal.
    pub goal: Goal,
    /// A remark printed under the table (how it was measured, a caveat).
    pub note: Option<String>,
}

/// How a value is shown.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Unit {
    /// Milliseconds.
    Ms,
    /// Seconds of CPU.
    CpuSecs,
    /// KiB, shown as MiB.
    Mib,
    /// KiB.
    Kib,
    /// A plain count.
    Count,
    /// A ratio with two decimals.
    Ratio,
    /// Per second.
    PerSec,
    /// Bytes, shown as MiB.
    BytesMib,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Ms => "ms",
            Unit::CpuSecs => "cpu_s",
            Unit::Mib => "kib",
            Unit::Kib => "kib",
            Unit::Count => "count",
            Unit::Ratio => "ratio",
            Unit::PerSec => "per_s",
            Unit::BytesMib => "bytes",
        }
    }

    /// `v` in this unit, for people.
    pub fn show(self, v: f64) -> String {
        match self {
            Unit::Ms if v < 10.0 => format!("{v:.3} ms"),
            Unit::Ms => format!("{v:.0} ms"),
            Unit::CpuSecs => format!("{v:.4} s"),
            Unit::Mib => format!("{:.2} MiB", v / 1024.0),
            Unit::Kib => format!("{v:.1} KiB"),
            Unit::Count => format!("{v:.0}"),
            Unit::Ratio => format!("{v:.2}"),
            Unit::PerSec => format!("{v:.2}/s"),
            Unit::BytesMib => format!("{:.2} MiB", v / (1024.0 * 1024.0)),
        }
    }
}

impl Row {
    /// The goal for people.
    fn goal_text(&self) -> String {
        match self.goal {
            Goal::None => "-".into(),
            Goal::AtMost(g) => format!("<= {}", self.unit.show(g)),
            Goal::Exactly(g) => format!("= {}", self.unit.show(g)),
        }
    }

    /// value / goal, when both exist and the goal is not 0.
    pub fn ratio(&self) -> Option<f64> {
        let v = self.value?;
        match self.goal {
            Goal::AtMost(g) | Goal::Exactly(g) if g != 0.0 => Some(v / g),
            _ => None,
        }
    }

    /// Whether the goal is met (None: no goal or no value).
    pub fn met(&self) -> Option<bool> {
        let v = self.value?;
        match self.goal {
            Goal::None => None,
            Goal::AtMost(g) => Some(v <= g),
            // Equal at the precision the table shows.
            Goal::Exactly(g) => Some(self.unit.show(v) == self.unit.show(g)),
        }
    }

    fn cells(&self) -> [String; 5] {
        [
            self.label.clone(),
            self.value
                .map_or_else(|| "n/a".into(), |v| self.unit.show(v)),
            self.goal_text(),
            self.ratio()
                .map_or_else(|| "-".into(), |r| format!("{r:.2}")),
            match self.met() {
                Some(true) => "ok".into(),
                Some(false) => "MISSED".into(),
                None => String::new(),
            },
        ]
    }

    /// The row for `results.json`.
    pub fn to_json(&self) -> Value {
        let (kind, goal) = match self.goal {
            Goal::None => (Value::Null, Value::Null),
            Goal::AtMost(g) => (json!("at_most"), json!(g)),
            Goal::Exactly(g) => (json!("exactly"), json!(g)),
        };
        json!({
            "key": self.key,
            "section": self.section,
            "label": self.label,
            "value": self.value,
            "unit": self.unit.name(),
            "shown": self.value.map(|v| self.unit.show(v)),
            "goal": goal,
            "goal_kind": kind,
            "ratio": self.ratio(),
            "met": self.met(),
            "note": self.note,
        })
    }
}

const HEADERS: [&str; 5] = ["figure", "value", "goal", "ratio", ""];

/// The table as printed: one block per section, then the notes.
pub fn table(rows: &[Row]) -> String {
    let mut width = HEADERS.map(|h| h.chars().count());
    for r in rows {
        for (w, c) in width.iter_mut().zip(r.cells()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [String; 5]| -> String {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(width).enumerate() {
            let pad = w - c.chars().count();
            if i == 0 {
                let _ = write!(s, "{c}{}", " ".repeat(pad));
            } else {
                let _ = write!(s, "  {}{c}", " ".repeat(pad));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(HEADERS.map(String::from));
    let total: usize = width.iter().sum::<usize>() + 2 * (width.len() - 1);
    let mut section = "";
    for r in rows {
        if r.section != section {
            section = r.section;
            let _ = writeln!(out, "{}", "-".repeat(total));
            let _ = writeln!(out, "{section}");
        }
        out.push_str(&line(r.cells()));
    }
    let _ = writeln!(out, "{}", "-".repeat(total));
    out.push_str(&notes(rows));
    out
}

fn notes(rows: &[Row]) -> String {
    let mut out = String::new();
    for r in rows.iter().filter(|r| r.note.is_some()) {
        let _ = writeln!(out, "* {}: {}", r.label, r.note.as_deref().unwrap_or(""));
    }
    out
}

/// The same table in Markdown, for the README.
pub fn markdown(rows: &[Row]) -> String {
    let mut out =
        String::from("| figure | value | goal | ratio | |\n| --- | ---: | ---: | ---: | --- |\n");
    let mut section = "";
    for r in rows {
        if r.section != section {
            section = r.section;
            let _ = writeln!(out, "| **{section}** | | | | |");
        }
        let c = r.cells();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            c[0],
            c[1],
            c[2].replace("<=", "≤"),
            c[3],
            c[4]
        );
    }
    out.push('\n');
    for r in rows.iter().filter(|r| r.note.is_some()) {
        let _ = writeln!(out, "- {}: {}", r.label, r.note.as_deref().unwrap_or(""));
    }
    out
}

// ---------------------------------------------------------------------------------------
// The chart

/// A tick step of 1, 2 or 5 × 10^k giving about `n` ticks up to `max`.
fn tick_step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One panel's frame: axes, ticks, grid, titles. Returns the value → pixel mappings.
struct Panel {
    x0: f64,
    y0: f64,
    w: f64,
    h: f64,
    xmax: f64,
    ymax: f64,
}

impl Panel {
    fn px(&self, x: f64) -> f64 {
        self.x0 + x / self.xmax * self.w
    }
    fn py(&self, y: f64) -> f64 {
        self.y0 + self.h - y / self.ymax * self.h
    }

    fn frame(&self, svg: &mut String, title: &str, xlabel: &str, ylabel: &str, xticks: bool) {
        let (x0, y0, w, h) = (self.x0, self.y0, self.w, self.h);
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" font-size="15" font-weight="bold" text-anchor="middle">{}</text>"##,
            x0 + w / 2.0,
            y0 - 14.0,
            esc(title)
        );
        let step = tick_step(self.ymax, 5.0);
        let mut t = 0.0;
        while t <= self.ymax + 1e-9 {
            let y = self.py(t);
            let _ = writeln!(
                svg,
                r##"<line x1="{x0:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
                x0 + w,
                x0 - 6.0,
                y + 4.0,
                trim_num(t)
            );
            t += step;
        }
        if xticks {
            let step = tick_step(self.xmax, 5.0);
            let mut t = 0.0;
            while t <= self.xmax + 1e-9 {
                let x = self.px(t);
                let _ = writeln!(
                    svg,
                    r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#999"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
                    y0 + h,
                    y0 + h + 4.0,
                    y0 + h + 17.0,
                    trim_num(t)
                );
                t += step;
            }
        }
        let _ = writeln!(
            svg,
            r##"<polyline points="{x0:.1},{y0:.1} {x0:.1},{:.1} {:.1},{:.1}" fill="none" stroke="#333"/>"##,
            y0 + h,
            x0 + w,
            y0 + h
        );
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"##,
            x0 + w / 2.0,
            y0 + h + 36.0,
            esc(xlabel)
        );
        let _ = writeln!(
            svg,
            r##"<text transform="translate({:.1},{:.1}) rotate(-90)" font-size="12" text-anchor="middle">{}</text>"##,
            x0 - 44.0,
            y0 + h / 2.0,
            esc(ylabel)
        );
    }
}

fn trim_num(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// One formation measurement for the chart: N, median, fastest and slowest run (ms).
pub struct FormationPoint {
    /// Nodes.
    pub n: usize,
    /// Median of the runs, ms.
    pub median: f64,
    /// Fastest run, ms.
    pub min: f64,
    /// Slowest run, ms.
    pub max: f64,
    /// Median with `--reconnectmin=100ms` (the diagnostic runs), ms.
    pub diagnostic: Option<f64>,
}

/// The chart: RSS against peers (left), formation time against N (right), goals dashed.
pub fn svg(rss: &[(usize, f64)], formation: &[FormationPoint], caption: &str) -> String {
    let mut svg = String::new();
    let (width, height) = (960.0, 400.0);
    let _ = writeln!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif">"##
    );
    let _ = writeln!(
        svg,
        r##"<rect width="{width}" height="{height}" fill="#fff"/>"##
    );

    // Left: RSS (MiB) against peers, with the goal: 8 MiB at 63 peers, 48 KiB per extra.
    let xmax_peers = rss.iter().map(|p| p.0).max().unwrap_or(1000).max(100) as f64;
    let goal_at = |peers: f64| 8.0 + (peers - 63.0).max(0.0) * 48.0 / 1024.0;
    let data_max = rss.iter().map(|p| p.1 / 1024.0).fold(0.0, f64::max);
    let left = Panel {
        x0: 80.0,
        y0: 50.0,
        w: 360.0,
        h: 270.0,
        xmax: xmax_peers,
        ymax: (data_max.max(goal_at(xmax_peers)) * 1.1).max(1.0),
    };
    left.frame(
        &mut svg,
        "RSS of one node against its peers",
        "peers (real handshakes, one loopback IP each)",
        "RSS (MiB)",
        true,
    );
    let _ = writeln!(
        svg,
        r##"<polyline points="{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}" fill="none" stroke="#c0392b" stroke-dasharray="6,4"/>"##,
        left.px(0.0),
        left.py(8.0),
        left.px(63.0),
        left.py(8.0),
        left.px(xmax_peers),
        left.py(goal_at(xmax_peers))
    );
    let pts: Vec<String> = rss
        .iter()
        .map(|(p, kib)| format!("{:.1},{:.1}", left.px(*p as f64), left.py(kib / 1024.0)))
        .collect();
    let _ = writeln!(
        svg,
        r##"<polyline points="{}" fill="none" stroke="#2c6fbb" stroke-width="2"/>"##,
        pts.join(" ")
    );
    for (p, kib) in rss {
        let _ = writeln!(
            svg,
            r##"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="#2c6fbb"><title>{p} peers: {:.2} MiB</title></circle>"##,
            left.px(*p as f64),
            left.py(kib / 1024.0),
            kib / 1024.0
        );
    }
    legend(
        &mut svg,
        left.x0 + 10.0,
        left.y0 + 8.0,
        &[
            ("#2c6fbb", false, "measured RSS"),
            ("#c0392b", true, "goal: 8 MiB at 63 peers + 48 KiB/peer"),
        ],
    );

    // Right: formation time (ms) against N, a bar per N with the runs' range, goal 1 s.
    let ymax_ms = formation.iter().map(|f| f.max).fold(1000.0, f64::max) * 1.3;
    let right = Panel {
        x0: 560.0,
        y0: 50.0,
        w: 360.0,
        h: 270.0,
        xmax: 1.0,
        ymax: ymax_ms,
    };
    right.frame(
        &mut svg,
        "Full mesh formed, after the last start",
        "nodes started together (N)",
        "time (ms)",
        false,
    );
    let slot = right.w / formation.len().max(1) as f64;
    for (i, f) in formation.iter().enumerate() {
        let mid = right.x0 + slot * (i as f64 + 0.5);
        let bw = slot * 0.34;
        // The default bar left of the slot's middle, the diagnostic one right of it.
        let cx = mid - slot * 0.18;
        let top = right.py(f.median);
        let _ = writeln!(
            svg,
            r##"<rect x="{:.1}" y="{top:.1}" width="{bw:.1}" height="{:.1}" fill="#2c6fbb"><title>N={}: median {:.0} ms (runs {:.0}-{:.0} ms)</title></rect>"##,
            cx - bw / 2.0,
            right.y0 + right.h - top,
            f.n,
            f.median,
            f.min,
            f.max
        );
        let _ = writeln!(
            svg,
            r##"<line x1="{cx:.1}" y1="{:.1}" x2="{cx:.1}" y2="{:.1}" stroke="#111"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#111"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#111"/>"##,
            right.py(f.min),
            right.py(f.max),
            cx - 6.0,
            right.py(f.min),
            cx + 6.0,
            right.py(f.min),
            cx - 6.0,
            right.py(f.max),
            cx + 6.0,
            right.py(f.max)
        );
        let _ = writeln!(
            svg,
            r##"<text x="{cx:.1}" y="{:.1}" font-size="11" text-anchor="middle">{:.0} ms</text><text x="{mid:.1}" y="{:.1}" font-size="12" text-anchor="middle">N = {}</text>"##,
            right.py(f.max) - 6.0,
            f.median,
            right.y0 + right.h + 17.0,
            f.n
        );
        if let Some(d) = f.diagnostic {
            let dx = mid + slot * 0.18;
            let top = right.py(d);
            let _ = writeln!(
                svg,
                r##"<rect x="{:.1}" y="{top:.1}" width="{bw:.1}" height="{:.1}" fill="#9cc3e6"><title>N={}, --reconnectmin=100ms: median {d:.0} ms</title></rect><text x="{dx:.1}" y="{:.1}" font-size="11" text-anchor="middle">{d:.0} ms</text>"##,
                dx - bw / 2.0,
                right.y0 + right.h - top,
                f.n,
                top - 6.0
            );
        }
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#c0392b" stroke-dasharray="6,4"/>"##,
        right.x0,
        right.py(1000.0),
        right.x0 + right.w,
        right.py(1000.0)
    );
    legend(
        &mut svg,
        right.x0 + 10.0,
        right.y0 + 8.0,
        &[
            (
                "#2c6fbb",
                false,
                "median of the runs (whiskers: fastest, slowest)",
            ),
            ("#9cc3e6", false, "with --reconnectmin=100ms (diagnostic)"),
            ("#c0392b", true, "goal for N = 64: 1 s"),
        ],
    );
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" font-size="11" fill="#555" text-anchor="middle">{}</text>"##,
        width / 2.0,
        height - 12.0,
        esc(caption)
    );
    svg.push_str("</svg>\n");
    svg
}

fn legend(svg: &mut String, x: f64, y: f64, items: &[(&str, bool, &str)]) {
    for (i, (color, dashed, text)) in items.iter().enumerate() {
        let yy = y + 16.0 * i as f64;
        let dash = if *dashed {
            r##" stroke-dasharray="6,4""##
        } else {
            ""
        };
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="{color}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"##,
            x + 22.0,
            x + 28.0,
            yy + 4.0,
            esc(text)
        );
    }
}
