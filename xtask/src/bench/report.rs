//! What the benchmark reports: per row and target the median and range of the wall times, and
//! the median of the per-repetition ratios target/kernel — the ratio of two runs made moments
//! apart, which cancels much of the noise of a machine shared with other work.
//!
//! Three outputs from the same numbers: a table on stdout, `results.json` (every sample, for
//! later comparison) and `results.svg` (the ratios as bars on a log axis). JSON and SVG are
//! written by hand, so that xtask keeps needing nothing beyond the standard library.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use crate::host::{Context, Result};

/// What a row's numbers are.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    MiB,
    /// How many times faster one configuration ran than another.
    Speedup,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Seconds => "s",
            Unit::MiB => "MiB",
            Unit::Speedup => "x",
        }
    }
}

/// One row: `samples[target][repetition]`, `None` where the run failed or the target does not
/// take part in the row.
#[derive(Clone)]
pub struct Row {
    pub id: String,
    pub title: String,
    pub unit: Unit,
    pub samples: Vec<Vec<Option<f64>>>,
    pub errors: Vec<String>,
}

/// A whole run. `targets[0]` is the reference (kernel overlayfs).
pub struct Report {
    pub command: String,
    pub targets: Vec<&'static str>,
    pub reps: usize,
    /// Repetitions done so far (the files are rewritten after each).
    pub completed: usize,
    pub host: Vec<(String, String)>,
    pub rows: Vec<Row>,
}

/// Median, minimum and maximum of some numbers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

pub fn summarize(values: impl IntoIterator<Item = f64>) -> Option<Summary> {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: v[0],
        max: v[n - 1],
        n,
    })
}

impl Row {
    pub fn summary(&self, target: usize) -> Option<Summary> {
        summarize(self.samples[target].iter().flatten().copied())
    }

    /// Per-repetition ratios target/reference, where both ran; none for rows that are not
    /// times (memory, which the kernel has no daemon for; speedups, already ratios).
    pub fn ratios(&self, target: usize) -> Vec<f64> {
        if self.unit != Unit::Seconds {
            return Vec::new();
        }
        self.samples[target]
            .iter()
            .zip(&self.samples[0])
            .filter_map(|(t, k)| match (t, k) {
                (Some(t), Some(k)) if *k > 0.0 => Some(t / k),
                _ => None,
            })
            .collect()
    }
}

/// A value with a readable unit: `1.23 s`, `45.6 ms`, `789 µs`, `12.3 MiB`, `1.85×`.
pub fn human(v: f64, unit: Unit) -> String {
    match unit {
        Unit::MiB => format!("{v:.1} MiB"),
        Unit::Speedup => format!("{v:.2}×"),
        Unit::Seconds if v >= 1.0 => format!("{v:.2} s"),
        Unit::Seconds if v >= 1e-3 => format!("{:.1} ms", v * 1e3),
        Unit::Seconds => format!("{:.0} µs", v * 1e6),
    }
}

fn short(v: f64, unit: Unit) -> String {
    match unit {
        Unit::MiB => format!("{v:.1}"),
        Unit::Speedup => format!("{v:.2}"),
        Unit::Seconds if v >= 1.0 => format!("{v:.2}s"),
        Unit::Seconds if v >= 1e-3 => format!("{:.1}ms", v * 1e3),
        Unit::Seconds => format!("{:.0}µs", v * 1e6),
    }
}

/// The stdout table: per target `median [min–max]`, and for the others `×ratio`.
pub fn table(r: &Report) -> String {
    let title_w = r
        .rows
        .iter()
        .map(|row| row.title.len())
        .max()
        .unwrap_or(0)
        .max(3);
    let mut out = String::new();
    let _ = write!(out, "{:title_w$}", "row");
    for (i, t) in r.targets.iter().enumerate() {
        let _ = write!(out, "  {t:>28}");
        if i > 0 {
            let _ = write!(out, "  {:>16}", format!("{t}/kernel"));
        }
    }
    out.push('\n');
    for row in &r.rows {
        let _ = write!(out, "{:title_w$}", row.title);
        for i in 0..r.targets.len() {
            let cell = match row.summary(i) {
                Some(s) => format!(
                    "{} [{}–{}]",
                    human(s.median, row.unit),
                    short(s.min, row.unit),
                    short(s.max, row.unit)
                ),
                None => "—".to_string(),
            };
            let _ = write!(out, "  {cell:>28}");
            if i > 0 {
                let ratio = match summarize(row.ratios(i)) {
                    Some(s) => format!("×{:.2} ({})", s.median, s.n),
                    None => "—".to_string(),
                };
                let _ = write!(out, "  {ratio:>16}");
            }
        }
        out.push('\n');
    }
    for row in r.rows.iter().filter(|row| !row.errors.is_empty()) {
        let _ = writeln!(out, "errors in {}:", row.id);
        for e in &row.errors {
            let _ = writeln!(out, "  {e}");
        }
    }
    out
}

/// A JSON string literal (RFC 8259 escaping).
fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_num(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v}"),
        _ => "null".into(),
    }
}

fn json_summary(s: Option<Summary>) -> String {
    match s {
        Some(s) => format!(
            "{{\"median\": {}, \"min\": {}, \"max\": {}, \"n\": {}}}",
            s.median, s.min, s.max, s.n
        ),
        None => "null".into(),
    }
}

/// `results.json`: the run's context and, per row, every sample, the summaries and the ratios.
pub fn json(r: &Report) -> String {
    let mut out = String::from("{\n");
    let _ = writeln!(out, "  \"command\": {},", json_str(&r.command));
    let _ = writeln!(out, "  \"repetitions\": {},", r.reps);
    let _ = writeln!(out, "  \"completed_repetitions\": {},", r.completed);
    let targets: Vec<String> = r.targets.iter().map(|t| json_str(t)).collect();
    let _ = writeln!(out, "  \"targets\": [{}],", targets.join(", "));
    let host: Vec<String> = r
        .host
        .iter()
        .map(|(k, v)| format!("{}: {}", json_str(k), json_str(v)))
        .collect();
    let _ = writeln!(out, "  \"host\": {{{}}},", host.join(", "));
    out.push_str("  \"rows\": [\n");
    for (ri, row) in r.rows.iter().enumerate() {
        out.push_str("    {\n");
        let _ = writeln!(out, "      \"id\": {},", json_str(&row.id));
        let _ = writeln!(out, "      \"title\": {},", json_str(&row.title));
        let _ = writeln!(out, "      \"unit\": {},", json_str(row.unit.name()));
        out.push_str("      \"targets\": {\n");
        for (ti, t) in r.targets.iter().enumerate() {
            let samples: Vec<String> = row.samples[ti].iter().map(|v| json_num(*v)).collect();
            let ratios: Vec<String> = row.ratios(ti).iter().map(|v| json_num(Some(*v))).collect();
            let _ = write!(
                out,
                "        {}: {{\"samples\": [{}], \"summary\": {}, \"ratios_to_kernel\": [{}], \
                 \"ratio_median\": {}}}",
                json_str(t),
                samples.join(", "),
                json_summary(row.summary(ti)),
                ratios.join(", "),
                json_num(summarize(row.ratios(ti)).map(|s| s.median)),
            );
            out.push_str(if ti + 1 < r.targets.len() {
                ",\n"
            } else {
                "\n"
            });
        }
        out.push_str("      },\n");
        let errors: Vec<String> = row.errors.iter().map(|e| json_str(e)).collect();
        let _ = writeln!(out, "      \"errors\": [{}]", errors.join(", "));
        out.push_str(if ri + 1 < r.rows.len() {
            "    },\n"
        } else {
            "    }\n"
        });
    }
    out.push_str("  ]\n}\n");
    out
}

const COLORS: [&str; 3] = ["#888888", "#d95f02", "#7570b3"];

/// `results.svg`: per timed row one bar per non-reference target, from 1× to the median
/// ratio on a log axis, with a whisker over the range of the per-repetition ratios.
pub fn svg(r: &Report) -> String {
    let rows: Vec<&Row> = r
        .rows
        .iter()
        .filter(|row| row.unit == Unit::Seconds)
        .collect();
    let others = r.targets.len().saturating_sub(1).max(1);
    let all: Vec<f64> = rows
        .iter()
        .flat_map(|row| (1..r.targets.len()).flat_map(|t| row.ratios(t)))
        .collect();
    let lo_exp = all.iter().fold(0.1f64, |a, &b| a.min(b)).log10().floor() as i32;
    let hi_exp = all.iter().fold(10.0f64, |a, &b| a.max(b)).log10().ceil() as i32;
    let (label_w, plot_w, bar_h, gap, top) = (330.0, 560.0, 12.0, 8.0, 60.0);
    let group_h = bar_h * others as f64 + gap;
    let height = top + group_h * rows.len() as f64 + 40.0;
    let width = label_w + plot_w + 90.0;
    let x = |v: f64| {
        let f = (v.log10() - lo_exp as f64) / (hi_exp - lo_exp) as f64;
        label_w + f.clamp(0.0, 1.0) * plot_w
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"11\">"
    );
    let _ = writeln!(
        s,
        "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"18\" \
         font-size=\"14\">time / kernel overlayfs time (median of {} repetitions; log \
         scale; whiskers: min–max)</text>",
        r.reps
    );
    for (i, t) in r.targets.iter().enumerate().skip(1) {
        let lx = label_w + (i - 1) as f64 * 160.0;
        let _ = writeln!(
            s,
            "<rect x=\"{lx}\" y=\"28\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" \
             y=\"38\">{}</text>",
            COLORS[i % COLORS.len()],
            lx + 16.0,
            xml(t)
        );
    }
    for e in lo_exp..=hi_exp {
        let v = 10f64.powi(e);
        let gx = x(v);
        let stroke = if e == 0 { "#000" } else { "#ddd" };
        let _ = writeln!(
            s,
            "<line x1=\"{gx}\" y1=\"{}\" x2=\"{gx}\" y2=\"{}\" stroke=\"{stroke}\"/><text \
             x=\"{gx}\" y=\"{}\" text-anchor=\"middle\">×{}</text>",
            top - 8.0,
            height - 30.0,
            height - 16.0,
            trim_num(v)
        );
    }
    for (gi, row) in rows.iter().enumerate() {
        let gy = top + gi as f64 * group_h;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            label_w - 8.0,
            gy + bar_h * others as f64 / 2.0 + 4.0,
            xml(&row.title)
        );
        for t in 1..r.targets.len() {
            let ratios = row.ratios(t);
            let Some(sum) = summarize(ratios) else {
                continue;
            };
            let by = gy + (t - 1) as f64 * bar_h;
            let (a, b) = (x(1.0).min(x(sum.median)), x(1.0).max(x(sum.median)));
            let _ = writeln!(
                s,
                "<rect x=\"{a}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\"/>",
                by + 1.0,
                (b - a).max(1.0),
                bar_h - 2.0,
                COLORS[t % COLORS.len()]
            );
            let wy = by + bar_h / 2.0;
            let _ = writeln!(
                s,
                "<line x1=\"{}\" y1=\"{wy}\" x2=\"{}\" y2=\"{wy}\" stroke=\"#000\"/><text x=\"{}\" \
                 y=\"{}\" font-size=\"9\">×{:.2}</text>",
                x(sum.min),
                x(sum.max),
                b.max(x(sum.max)) + 4.0,
                wy + 3.0,
                sum.median
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

fn trim_num(v: f64) -> String {
    let t = format!("{v}");
    t.strip_suffix(".0").map(str::to_string).unwrap_or(t)
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Writes `results.json` and `results.svg` into `dir`.
pub fn write_files(r: &Report, dir: &Path) -> Result<()> {
    let json_path = dir.join("results.json");
    fs::write(&json_path, json(r)).context(|| format!("write {}", json_path.display()))?;
    let svg_path = dir.join("results.svg");
    fs::write(&svg_path, svg(r)).context(|| format!("write {}", svg_path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            command: "cargo xtask bench --quick".into(),
            targets: vec!["kernel", "unionfs"],
            reps: 3,
            completed: 3,
            host: vec![("kernel".into(), "6.x".into())],
            rows: vec![Row {
                id: "find".into(),
                title: "find \"-type f\"".into(),
                unit: Unit::Seconds,
                samples: vec![
                    vec![Some(1.0), Some(2.0), Some(1.0)],
                    vec![Some(3.0), None, Some(5.0)],
                ],
                errors: vec!["rep 2: unionfs: boom".into()],
            }],
        }
    }

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(summarize([3.0, 1.0, 2.0]).unwrap().median, 2.0);
        assert_eq!(summarize([4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert!(summarize([]).is_none());
    }

    #[test]
    fn ratios_pair_repetitions_and_skip_failures() {
        let r = report();
        assert_eq!(r.rows[0].ratios(1), vec![3.0, 5.0]);
        assert_eq!(summarize(r.rows[0].ratios(1)).unwrap().median, 4.0);
    }

    #[test]
    fn json_escapes_and_keeps_nulls() {
        let j = json(&report());
        assert!(j.contains("\"title\": \"find \\\"-type f\\\"\""), "{j}");
        assert!(j.contains("\"samples\": [3, null, 5]"), "{j}");
        assert!(j.contains("\"ratio_median\": 4"), "{j}");
    }

    #[test]
    fn svg_and_table_name_every_row() {
        let r = report();
        assert!(svg(&r).contains("find &quot;-type f&quot;"));
        let t = table(&r);
        assert!(t.contains("×4.00 (2)"), "{t}");
        assert!(t.contains("errors in find"), "{t}");
    }
}
