//! Small SVG charts (line and bar), written by hand: no plotting dependency.

use std::fmt::Write;

const W: f64 = 820.0;
const H: f64 = 440.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 56.0;
const COLORS: &[&str] = &["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];

/// Colour number `i` of the palette.
pub fn color(i: usize) -> &'static str {
    COLORS[i % COLORS.len()]
}

/// One line of a line chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Palette index.
    pub color: usize,
    /// Dashed line.
    pub dashed: bool,
    /// (x, y) in x order.
    pub points: Vec<(f64, f64)>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A "nice" axis: upper bound and step for `max` (lower bound 0), at most 8 steps.
fn axis(max: f64) -> (f64, f64) {
    let max = if max.is_finite() && max > 0.0 { max } else { 1.0 };
    let mag = 10f64.powf((max / 8.0).log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0, 20.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| (max / s).ceil() <= 8.0)
        .unwrap_or(20.0 * mag);
    ((max / step).ceil() * step, step)
}

fn fmt_tick(v: f64, step: f64) -> String {
    // as many decimals as the step needs (0.025 -> 3)
    let decimals = (0..6).find(|d| {
        let scaled = step * 10f64.powi(*d);
        (scaled - scaled.round()).abs() < 1e-6 * scaled.max(1.0)
    });
    format!("{v:.*}", decimals.unwrap_or(6) as usize)
}

/// The SVG header, title and axis labels; `height` is the whole picture (the plot
/// area always ends at `H - BOTTOM`; a legend may go below `H`).
fn frame(out: &mut String, title: &str, xlabel: &str, ylabel: &str, height: f64) {
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="12">
<rect width="{W}" height="{height}" fill="white"/>
<text x="{}" y="24" text-anchor="middle" font-size="15" font-weight="bold">{}</text>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text transform="translate(18,{}) rotate(-90)" text-anchor="middle">{}</text>
"#,
        W / 2.0,
        esc(title),
        LEFT + (W - LEFT - RIGHT) / 2.0,
        H - 12.0,
        esc(xlabel),
        TOP + (H - TOP - BOTTOM) / 2.0,
        esc(ylabel)
    );
}

fn y_axis(out: &mut String, ymax: f64, ystep: f64) {
    let ph = H - TOP - BOTTOM;
    let mut v = 0.0;
    while v <= ymax + ystep / 2.0 {
        let y = TOP + ph - v / ymax * ph;
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            fmt_tick(v, ystep)
        );
        v += ystep;
    }
}

/// A line chart with x and y from 0.
pub fn line_chart(title: &str, xlabel: &str, ylabel: &str, series: &[Series]) -> String {
    let xmax_raw = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(0.0, f64::max);
    let ymax_raw = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.0, f64::max);
    let (xmax, xstep) = axis(xmax_raw);
    let (ymax, ystep) = axis(ymax_raw);
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    // legend below the chart, in rows, so that it never hides data
    let mut legend = Vec::new();
    let (mut lx, mut ly) = (LEFT, H + 6.0);
    for s in series {
        let w = 40.0 + 7.0 * s.name.chars().count() as f64;
        if lx + w > W - RIGHT && lx > LEFT {
            lx = LEFT;
            ly += 20.0;
        }
        legend.push((lx, ly));
        lx += w;
    }
    let height = if series.is_empty() { H } else { ly + 20.0 };
    let mut out = String::new();
    frame(&mut out, title, xlabel, ylabel, height);
    y_axis(&mut out, ymax, ystep);
    let mut v = 0.0;
    while v <= xmax + xstep / 2.0 {
        let x = LEFT + v / xmax * pw;
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + ph,
            TOP + ph + 16.0,
            fmt_tick(v, xstep)
        );
        v += xstep;
    }
    let _ = writeln!(out, r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##);
    for s in series {
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", LEFT + x / xmax * pw, TOP + ph - (y / ymax).min(1.0) * ph))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.6"{} points="{}"/>"#,
            color(s.color),
            if s.dashed { r#" stroke-dasharray="5,3""# } else { "" },
            pts.join(" ")
        );
    }
    for (s, (x, y)) in series.iter().zip(legend) {
        let _ = writeln!(
            out,
            r#"<line x1="{x}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="{}" stroke-width="2.5"{}/><text x="{}" y="{:.1}">{}</text>"#,
            y + 8.0,
            x + 24.0,
            y + 8.0,
            color(s.color),
            if s.dashed { r#" stroke-dasharray="5,3""# } else { "" },
            x + 30.0,
            y + 12.0,
            esc(&s.name)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// One bar: label, height (the median), the per-round values (dots), colour.
#[derive(Debug, Clone)]
pub struct Bar {
    /// Label under the bar.
    pub label: String,
    /// Bar height.
    pub value: f64,
    /// Values of the single rounds, drawn as dots.
    pub rounds: Vec<f64>,
    /// Palette index.
    pub color: usize,
}

/// A bar chart of medians with the single rounds as dots.
pub fn bar_chart(title: &str, ylabel: &str, bars: &[Bar]) -> String {
    let ymax_raw =
        bars.iter().flat_map(|b| std::iter::once(b.value).chain(b.rounds.iter().copied())).fold(0.0, f64::max);
    let (ymax, ystep) = axis(ymax_raw * 1.08);
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let mut out = String::new();
    frame(&mut out, title, "bars: median of the rounds; dots: single rounds", ylabel, H);
    y_axis(&mut out, ymax, ystep);
    let slot = pw / bars.len().max(1) as f64;
    for (i, b) in bars.iter().enumerate() {
        let bw = (slot * 0.5).min(140.0);
        let x = LEFT + slot * i as f64 + (slot - bw) / 2.0;
        let h = b.value / ymax * ph;
        // the value above the bar and above its highest dot
        let top = b.rounds.iter().copied().fold(b.value, f64::max) / ymax * ph;
        let _ = writeln!(
            out,
            r##"<rect x="{x:.1}" y="{:.1}" width="{bw:.1}" height="{h:.1}" fill="{}" fill-opacity="0.75"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text x="{:.1}" y="{:.1}" text-anchor="middle" font-weight="bold">{}</text>"##,
            TOP + ph - h,
            color(b.color),
            x + bw / 2.0,
            TOP + ph + 16.0,
            esc(&b.label),
            x + bw / 2.0,
            TOP + ph - top - 8.0,
            super::report::num(b.value)
        );
        for (j, r) in b.rounds.iter().enumerate() {
            let dx = x + bw / 2.0 + (j as f64 - (b.rounds.len() as f64 - 1.0) / 2.0) * 10.0;
            let _ =
                writeln!(out, r##"<circle cx="{dx:.1}" cy="{:.1}" r="3.5" fill="#222"/>"##, TOP + ph - r / ymax * ph);
        }
    }
    let _ = writeln!(out, r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##);
    out.push_str("</svg>\n");
    out
}
