//! The non-load parts of `lanyard bench server`: the figures it collects, the one table it
//! prints (also as Markdown), the JSON of raw figures, the SVG plot of throughput against
//! concurrency, the Lua scripts it hands to wrk and the parsing of wrk's answer.
//!
//! Nothing here measures anything, so it is tested with given figures
//! (`crates/lanyard/tests/bench_report.rs` through `lanyard bench render`).

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// One measured figure. Rates are "higher is better"; times and sizes "lower is better".
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Row {
    /// A stable key other rows name as their peer or ceiling.
    pub key: String,
    /// Who answered: "Lanyard" or the peer's name.
    pub system: String,
    /// What was measured.
    pub what: String,
    /// Connections (concurrency), when the figure comes from a load.
    #[serde(default)]
    pub conns: Option<u32>,
    pub value: f64,
    /// "/s", "s", "ms", "MiB", "MB".
    pub unit: String,
    #[serde(default)]
    pub p50_ms: Option<f64>,
    #[serde(default)]
    pub p99_ms: Option<f64>,
    /// Requests that failed (errors or unexpected statuses) during the load.
    #[serde(default)]
    pub failed: u64,
    /// The peer row this figure is compared with.
    #[serde(default)]
    pub peer: Option<String>,
    /// The ceiling row this figure is compared with.
    #[serde(default)]
    pub ceiling: Option<String>,
    /// A line of the plot this figure belongs to (x = conns, y = value).
    #[serde(default)]
    pub series: Option<String>,
}

impl Row {
    pub fn new(key: &str, system: &str, what: &str, value: f64, unit: &str) -> Row {
        Row {
            key: key.to_owned(),
            system: system.to_owned(),
            what: what.to_owned(),
            conns: None,
            value,
            unit: unit.to_owned(),
            p50_ms: None,
            p99_ms: None,
            failed: 0,
            peer: None,
            ceiling: None,
            series: None,
        }
    }

    fn higher_is_better(&self) -> bool {
        self.unit == "/s"
    }
}

/// Everything one run measured, with where and how.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// Machine, versions, command line, date.
    pub context: Vec<(String, String)>,
    pub rows: Vec<Row>,
}

/// `ours` relative to `theirs`, as "better is above 1": a rate divided by the other rate, or the
/// other time divided by this time.
fn ratio(ours: &Row, theirs: &Row) -> Option<f64> {
    if ours.value <= 0.0 || theirs.value <= 0.0 {
        return None;
    }
    Some(if ours.higher_is_better() { ours.value / theirs.value } else { theirs.value / ours.value })
}

/// 12345.6 → "12,346"; small values keep decimals.
pub fn number(v: f64) -> String {
    if v.abs() >= 100.0 {
        let s = format!("{:.0}", v.abs());
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 { format!("-{out}") } else { out }
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(String::new, |v| format!("{} ms", number(v)))
}

impl Report {
    fn find(&self, key: &Option<String>) -> Option<&Row> {
        key.as_ref().and_then(|k| self.rows.iter().find(|r| &r.key == k))
    }

    /// The table as Markdown: one row per figure, ratios to the peer and to the ceiling.
    pub fn markdown(&self) -> String {
        let mut s = String::from(
            "| system | what | conns | figure | p50 | p99 | failed | vs peer | vs ceiling |\n|---|---|---|---|---|---|---|---|---|\n",
        );
        for r in &self.rows {
            let vs = |other: Option<&Row>| match other.and_then(|o| ratio(r, o).map(|x| (o, x))) {
                Some((o, x)) => format!("{x:.2}× {}", o.system),
                None => String::new(),
            };
            let system = if r.system == "Lanyard" { "**Lanyard**".to_owned() } else { r.system.clone() };
            let _ = writeln!(
                s,
                "| {system} | {} | {} | {} {} | {} | {} | {} | {} | {} |",
                r.what.replace('|', "/"),
                r.conns.map_or_else(String::new, |c| c.to_string()),
                number(r.value),
                r.unit,
                ms(r.p50_ms),
                ms(r.p99_ms),
                if r.failed > 0 { r.failed.to_string() } else { String::new() },
                vs(self.find(&r.peer)),
                vs(self.find(&r.ceiling)),
            );
        }
        s
    }

    /// The table for a terminal: the Markdown without its pipes' noise is still readable, so
    /// the same text.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.context {
            let _ = writeln!(s, "{k}: {v}");
        }
        s.push('\n');
        s.push_str(&self.markdown());
        s
    }

    /// Throughput against concurrency, one line per series, log-scaled y axis; self-contained
    /// SVG with no script or external reference.
    pub fn svg(&self) -> String {
        let mut series: Vec<(String, Vec<(u32, f64)>)> = Vec::new();
        for r in &self.rows {
            let (Some(name), Some(c)) = (&r.series, r.conns) else { continue };
            if r.value <= 0.0 {
                continue;
            }
            match series.iter_mut().find(|(n, _)| n == name) {
                Some((_, pts)) => pts.push((c, r.value)),
                None => series.push((name.clone(), vec![(c, r.value)])),
            }
        }
        for (_, pts) in &mut series {
            pts.sort_by_key(|p| p.0);
        }
        let (w, h, left, right, top, bottom) = (1000.0, 520.0, 80.0, 420.0, 30.0, 60.0);
        let pw = w - left - right;
        let ph = h - top - bottom;
        let all: Vec<(u32, f64)> = series.iter().flat_map(|(_, p)| p.iter().copied()).collect();
        let xmax = all.iter().map(|p| p.0).max().unwrap_or(64).max(2) as f64;
        let ymin = all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let ymax = all.iter().map(|p| p.1).fold(0.0, f64::max);
        let (lo, hi) = if all.is_empty() {
            (1.0, 4.0)
        } else {
            (ymin.log10().floor(), ymax.log10().ceil().max(ymin.log10().floor() + 1.0))
        };
        // x: log2 of connections, 1 at the left edge.
        let x = |c: u32| left + pw * ((c.max(1) as f64).log2() / xmax.log2());
        let y = |v: f64| top + ph * (1.0 - (v.log10() - lo) / (hi - lo));
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n"
        );
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">Throughput against concurrency (requests/s, log scale)</text>",
            left + pw / 2.0
        );
        for d in (lo as i32)..=(hi as i32) {
            let v = 10f64.powi(d);
            let yy = y(v);
            let _ = writeln!(
                s,
                "<line x1=\"{left}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                left + pw,
                left - 6.0,
                yy + 4.0,
                number(v)
            );
        }
        let mut ticks: Vec<u32> = all.iter().map(|p| p.0).collect();
        ticks.sort_unstable();
        ticks.dedup();
        for c in ticks {
            let xx = x(c);
            let _ = writeln!(
                s,
                "<line x1=\"{xx:.1}\" y1=\"{top}\" x2=\"{xx:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/><text x=\"{xx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{c}</text>",
                top + ph,
                top + ph + 16.0
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">connections</text>\n<rect x=\"{left}\" y=\"{top}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#444\"/>",
            left + pw / 2.0,
            h - 20.0
        );
        const COLOURS: [&str; 16] = [
            "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
            "#7f7f7f", "#bcbd22", "#393b79", "#e6550d", "#31a354", "#843c39", "#636363", "#7b4173",
        ];
        for (i, (name, pts)) in series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let dash = if name.starts_with("Lanyard") { "" } else { " stroke-dasharray=\"6 4\"" };
            let path: Vec<String> = pts.iter().map(|&(c, v)| format!("{:.1},{:.1}", x(c), y(v))).collect();
            let _ = writeln!(
                s,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash}/>",
                path.join(" ")
            );
            for &(c, v) in pts {
                let _ =
                    writeln!(s, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"/>", x(c), y(v));
            }
            let ly = top + 10.0 + 18.0 * i as f64;
            let lx = left + pw + 14.0;
            let _ = writeln!(
                s,
                "<line x1=\"{lx}\" y1=\"{ly}\" x2=\"{:.1}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"2\"{dash}/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                lx + 24.0,
                lx + 30.0,
                ly + 4.0,
                xml_escape(name)
            );
        }
        s.push_str("</svg>\n");
        s
    }

    /// Writes `table.md`, `figures.json` and `throughput.svg` into `dir`.
    pub fn write(&self, dir: &std::path::Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut md = String::new();
        for (k, v) in &self.context {
            let _ = writeln!(md, "- {k}: {v}");
        }
        md.push('\n');
        md.push_str(&self.markdown());
        std::fs::write(dir.join("table.md"), md)?;
        std::fs::write(dir.join("figures.json"), serde_json::to_string_pretty(self)?)?;
        std::fs::write(dir.join("throughput.svg"), self.svg())?;
        Ok(())
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// One request wrk sends, cycled with the others.
pub struct WrkRequest {
    pub method: &'static str,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A Lua string literal holding exactly `bytes` (decimal escapes for anything not plain).
pub fn lua_string(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() + 2);
    s.push('"');
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b" -_./:+=,;{}[]()@".contains(&b) {
            s.push(b as char);
        } else {
            // Always three digits: Lua reads up to three, so a shorter escape followed by a
            // digit would change meaning.
            let _ = write!(s, "\\{b:03}");
        }
    }
    s.push('"');
    s
}

/// A wrk script that cycles through `requests` and prints one `BENCHJSON {…}` line when done.
pub fn wrk_script(requests: &[WrkRequest]) -> String {
    let mut s = String::from("local reqs = {}\nlocal n = 0\nfunction init(args)\n");
    for r in requests {
        let headers: Vec<String> = r
            .headers
            .iter()
            .map(|(k, v)| format!("[{}] = {}", lua_string(k.as_bytes()), lua_string(v.as_bytes())))
            .collect();
        let _ = writeln!(
            s,
            "  reqs[#reqs + 1] = wrk.format({}, {}, {{{}}}, {})",
            lua_string(r.method.as_bytes()),
            lua_string(r.path.as_bytes()),
            headers.join(", "),
            if r.body.is_empty() { "nil".to_owned() } else { lua_string(&r.body) }
        );
    }
    s.push_str(
        "  n = math.random(#reqs) - 1\nend\n\
         function request()\n  n = n % #reqs + 1\n  return reqs[n]\nend\n\
         function done(summary, latency, requests)\n\
         \x20 local e = summary.errors\n\
         \x20 io.write(string.format('BENCHJSON {\"requests\":%d,\"duration_us\":%d,\"errors\":%d,\"status\":%d,\"p50_us\":%d,\"p99_us\":%d}\\n',\n\
         \x20   summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,\n\
         \x20   latency:percentile(50), latency:percentile(99)))\n\
         end\n",
    );
    s
}

/// What one load (wrk or the new-connection client) measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize)]
pub struct Load {
    pub requests: u64,
    pub duration_us: u64,
    /// Connection errors and timeouts.
    pub errors: u64,
    /// Answers with an unexpected status.
    pub status: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

impl Load {
    /// Successful requests per second.
    pub fn rate(&self) -> f64 {
        let ok = self.requests.saturating_sub(self.status);
        ok as f64 / (self.duration_us.max(1) as f64 / 1e6)
    }

    /// Two loads that ran at the same time against two servers: their sum, the worse latency.
    pub fn combine(&self, other: &Load) -> Load {
        Load {
            requests: self.requests + other.requests,
            duration_us: self.duration_us.max(other.duration_us),
            errors: self.errors + other.errors,
            status: self.status + other.status,
            p50_us: self.p50_us.max(other.p50_us),
            p99_us: self.p99_us.max(other.p99_us),
        }
    }
}

/// The `BENCHJSON` line of a load's output.
pub fn parse_load(output: &str) -> anyhow::Result<Load> {
    let Some(line) = output.lines().find_map(|l| l.strip_prefix("BENCHJSON ")) else {
        bail!("no BENCHJSON line in the load's output:\n{output}");
    };
    serde_json::from_str(line).with_context(|| format!("reading {line}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lua_strings_keep_every_byte() {
        assert_eq!(lua_string(b"ab\"\\\n\x001\xff"), "\"ab\\034\\092\\010\\0001\\255\"");
    }

    proptest! {
        #[test]
        fn lua_string_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            // Decode the literal the way Lua does and compare.
            let lit = lua_string(&bytes);
            let inner = &lit.as_bytes()[1..lit.len() - 1];
            let mut out = Vec::new();
            let mut i = 0;
            while i < inner.len() {
                if inner[i] == b'\\' {
                    let mut j = i + 1;
                    let mut v = 0u32;
                    while j < inner.len() && j < i + 4 && inner[j].is_ascii_digit() {
                        v = v * 10 + u32::from(inner[j] - b'0');
                        j += 1;
                    }
                    out.push(v as u8);
                    i = j;
                } else {
                    out.push(inner[i]);
                    i += 1;
                }
            }
            prop_assert_eq!(out, bytes);
        }
    }

    #[test]
    fn wrk_output_is_read_and_garbage_refused() {
        let l = parse_load("Running 8s test\nBENCHJSON {\"requests\":100,\"duration_us\":2000000,\"errors\":1,\"status\":10,\"p50_us\":900,\"p99_us\":5000}\n").unwrap();
        assert_eq!(l.requests, 100);
        assert!((l.rate() - 45.0).abs() < 1e-9);
        assert!(parse_load("no line").is_err());
        assert!(parse_load("BENCHJSON {\"requests\":\"x\"}").is_err());
    }
}
