//! Medians over rounds, ratios against native, Markdown, JSON and the plots.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::join::{self, JoinResult};
use super::plot::{self, Bar, Series};
use super::workload::RoundResult;
use super::{json_err, Config, Result};

/// Median (mean of the middle two for an even count); NaN when empty.
pub fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A number with as many digits as make sense for its size.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        "—".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A system and whether it could run.
#[derive(Debug, Clone)]
pub struct SystemStatus {
    /// Name.
    pub name: String,
    /// `Ok(versions)` or `Err(why it was skipped)`.
    pub status: std::result::Result<String, String>,
}

/// One column of the table: a system with a streaming mode of the large
/// transaction ("off" also carries the other workloads).
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    system: String,
    streaming: String,
}

impl Entry {
    fn label(&self) -> String {
        if self.streaming == "off" {
            self.system.clone()
        } else {
            format!("{} (streaming={})", self.system, self.streaming)
        }
    }
}

type Getter = fn(&RoundResult, &str) -> Option<f64>;

struct Metric {
    key: &'static str,
    label: String,
    higher_is_better: bool,
    get: Getter,
}

fn metric(key: &'static str, label: impl Into<String>, higher_is_better: bool, get: Getter) -> Metric {
    Metric { key, label: label.into(), higher_is_better, get }
}

fn large_of<'a>(r: &'a RoundResult, mode: &str) -> Option<&'a super::workload::Large> {
    r.large.iter().find(|l| l.streaming == mode)
}

fn catchup_of<'a>(r: &'a RoundResult, mode: &str, kind: &str) -> Option<&'a super::workload::Catchup> {
    r.catchups.iter().find(|c| mode == "off" && c.workload == kind)
}

fn metrics(cfg: &Config) -> Vec<Metric> {
    let rows = if cfg.large_rows.is_multiple_of(1_000_000) {
        format!("{}M", cfg.large_rows / 1_000_000)
    } else if cfg.large_rows.is_multiple_of(1000) {
        format!("{}k", cfg.large_rows / 1000)
    } else {
        cfg.large_rows.to_string()
    };
    // small-transaction workloads run once per system: on the "off" entry
    vec![
        metric("backlog_tx_per_s", "backlog catch-up: applied tx/s", true, |r, m| {
            (m == "off").then_some(r.backlog.tx_per_s)
        }),
        metric("backlog_rows_per_s", "backlog catch-up: applied rows/s", true, |r, m| {
            (m == "off").then_some(r.backlog.rows_per_s)
        }),
        metric("backlog_catchup_s", "backlog catch-up: seconds, enable → origin at end", false, |r, m| {
            (m == "off").then_some(r.backlog.catchup_s)
        }),
        metric("backlog_txns", format!("backlog size: pgbench tx in {} s", cfg.backlog_secs), true, |r, m| {
            (m == "off").then_some(r.backlog.txns as f64)
        }),
        metric("delete_mix_tx_per_s", "delete mix catch-up: applied tx/s", true, |r, m| {
            r.delete_mix.as_ref().filter(|_| m == "off").map(|d| d.tx_per_s)
        }),
        metric("delete_mix_catchup_s", "delete mix catch-up: seconds, enable → origin at end", false, |r, m| {
            r.delete_mix.as_ref().filter(|_| m == "off").map(|d| d.catchup_s)
        }),
        metric("su_tx_per_s", "simple-update catch-up: applied tx/s", true, |r, m| {
            catchup_of(r, m, "simple-update").map(|c| c.backlog.tx_per_s)
        }),
        metric("su_cpu_walsender_s", "simple-update catch-up: CPU s, walsender", false, |r, m| {
            catchup_of(r, m, "simple-update").map(|c| c.cpu_walsender_s)
        }),
        metric("su_cpu_leader_s", "simple-update catch-up: CPU s, apply leader", false, |r, m| {
            catchup_of(r, m, "simple-update").map(|c| c.cpu_leader_s)
        }),
        metric("su_cpu_writers_s", "simple-update catch-up: CPU s, writers", false, |r, m| {
            catchup_of(r, m, "simple-update").map(|c| c.cpu_writers_s)
        }),
        metric("su_rss_mib", "simple-update catch-up: peak RSS of apply processes, MiB", false, |r, m| {
            catchup_of(r, m, "simple-update").map(|c| c.peak_rss_mib)
        }),
        metric("tpcb_tx_per_s", "tpcb-like catch-up: applied tx/s", true, |r, m| {
            catchup_of(r, m, "tpcb-like").map(|c| c.backlog.tx_per_s)
        }),
        metric("tpcb_cpu_walsender_s", "tpcb-like catch-up: CPU s, walsender", false, |r, m| {
            catchup_of(r, m, "tpcb-like").map(|c| c.cpu_walsender_s)
        }),
        metric("tpcb_cpu_leader_s", "tpcb-like catch-up: CPU s, apply leader", false, |r, m| {
            catchup_of(r, m, "tpcb-like").map(|c| c.cpu_leader_s)
        }),
        metric("tpcb_cpu_writers_s", "tpcb-like catch-up: CPU s, writers", false, |r, m| {
            catchup_of(r, m, "tpcb-like").map(|c| c.cpu_writers_s)
        }),
        metric("ins_tx_per_s", "insert mix catch-up: applied tx/s", true, |r, m| {
            catchup_of(r, m, "insert-mix").map(|c| c.backlog.tx_per_s)
        }),
        metric("ins_cpu_walsender_s", "insert mix catch-up: CPU s, walsender", false, |r, m| {
            catchup_of(r, m, "insert-mix").map(|c| c.cpu_walsender_s)
        }),
        metric("ins_cpu_leader_s", "insert mix catch-up: CPU s, apply leader", false, |r, m| {
            catchup_of(r, m, "insert-mix").map(|c| c.cpu_leader_s)
        }),
        metric("ins_cpu_writers_s", "insert mix catch-up: CPU s, writers", false, |r, m| {
            catchup_of(r, m, "insert-mix").map(|c| c.cpu_writers_s)
        }),
        metric("ins_rss_mib", "insert mix catch-up: peak RSS of apply processes, MiB", false, |r, m| {
            catchup_of(r, m, "insert-mix").map(|c| c.peak_rss_mib)
        }),
        metric("steady_p50_ms", format!("steady {} tx/s: lag p50, ms", cfg.steady_rate), false, |r, m| {
            (m == "off").then_some(r.steady.p50_ms)
        }),
        metric("steady_p99_ms", format!("steady {} tx/s: lag p99, ms", cfg.steady_rate), false, |r, m| {
            (m == "off").then_some(r.steady.p99_ms)
        }),
        metric(
            "large_commit_to_visible_s",
            format!("{rows}-row tx: COMMIT → visible on subscriber, s"),
            false,
            |r, m| large_of(r, m).map(|l| l.commit_to_visible_s),
        ),
        metric("large_peak_rss_mib", format!("{rows}-row tx: peak RSS of apply processes, MiB"), false, |r, m| {
            large_of(r, m).map(|l| l.peak_rss_mib)
        }),
        metric(
            "large_peak_anon_mib",
            format!("{rows}-row tx: peak private (anon) RSS of apply, MiB"),
            false,
            |r, m| large_of(r, m).map(|l| l.peak_anon_mib),
        ),
        metric("large_insert_s", format!("{rows}-row tx: INSERT + COMMIT on provider, s"), false, |r, m| {
            large_of(r, m).map(|l| l.insert_s)
        }),
    ]
}

fn entries(results: &[RoundResult]) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    for r in results {
        for l in &r.large {
            let e = Entry { system: r.system.clone(), streaming: l.streaming.clone() };
            if !out.contains(&e) {
                out.push(e);
            }
        }
    }
    out
}

fn values(results: &[RoundResult], e: &Entry, m: &Metric) -> Vec<f64> {
    results.iter().filter(|r| r.system == e.system).filter_map(|r| (m.get)(r, &e.streaming)).collect()
}

/// Everything the run produced, ready to be written.
pub struct Report {
    /// Configuration.
    pub cfg: Config,
    /// Machine description lines.
    pub machine: Vec<(String, String)>,
    /// Systems and whether they ran.
    pub systems: Vec<SystemStatus>,
    /// Successful rounds.
    pub results: Vec<RoundResult>,
    /// Successful joins (the join workload).
    pub joins: Vec<JoinResult>,
    /// Failed rounds: (system, round, error).
    pub failures: Vec<(String, usize, String)>,
    /// Decode benchmark: its JSON (`decode.json`) or why it did not run.
    pub decode: std::result::Result<Value, String>,
    /// Seconds the whole run took.
    pub elapsed_s: f64,
    /// UTC time of the run.
    pub date: String,
}

impl Report {
    fn prefix(&self) -> &'static str {
        if self.cfg.quick {
            "replication-quick"
        } else {
            "replication"
        }
    }

    /// The results table (Markdown).
    pub fn table(&self) -> String {
        let entries = entries(&self.results);
        let base = entries.iter().position(|e| e.system == "native" && e.streaming == "off");
        let mut out = String::new();
        let mut header = vec!["metric: median of the rounds (min–max)".to_string()];
        let mut align = vec!["---".to_string()];
        for (i, e) in entries.iter().enumerate() {
            header.push(e.label());
            align.push("---:".into());
            if base.is_some() && Some(i) != base {
                header.push(format!("{} ÷ native", e.label()));
                align.push("---:".into());
            }
        }
        let _ = writeln!(out, "| {} |", header.join(" | "));
        let _ = writeln!(out, "| {} |", align.join(" | "));
        for m in metrics(&self.cfg) {
            let vals: Vec<Vec<f64>> = entries.iter().map(|e| values(&self.results, e, &m)).collect();
            let meds: Vec<f64> = vals.iter().map(|v| median(v)).collect();
            if meds.iter().all(|v| !v.is_finite()) {
                continue;
            }
            let mut row =
                vec![format!("{} ({} is better)", m.label, if m.higher_is_better { "higher" } else { "lower" })];
            if m.key == "backlog_txns" {
                row[0] = m.label.clone();
            }
            for (i, v) in meds.iter().enumerate() {
                // median, and the range of the rounds when there are several
                let lo = vals[i].iter().copied().fold(f64::INFINITY, f64::min);
                let hi = vals[i].iter().copied().fold(f64::NEG_INFINITY, f64::max);
                row.push(if vals[i].len() > 1 { format!("{} ({}–{})", num(*v), num(lo), num(hi)) } else { num(*v) });
                if let Some(b) = base {
                    if i != b {
                        let base_v = if entries[i].streaming == "off" || m.key.starts_with("large") {
                            meds[b]
                        } else {
                            f64::NAN
                        };
                        let ratio = v / base_v;
                        row.push(if ratio.is_finite() && m.key != "backlog_txns" {
                            format!("{ratio:.2}")
                        } else {
                            "—".into()
                        });
                    }
                }
            }
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        out
    }

    fn summary_json(&self) -> Value {
        let entries = entries(&self.results);
        let ms = metrics(&self.cfg);
        let base = entries.iter().find(|e| e.system == "native" && e.streaming == "off").cloned();
        let list: Vec<Value> = entries
            .iter()
            .map(|e| {
                let mut medians = serde_json::Map::new();
                let mut ratios = serde_json::Map::new();
                for m in &ms {
                    let v = median(&values(&self.results, e, m));
                    if v.is_finite() {
                        medians.insert(m.key.into(), json!(v));
                        if let Some(b) = &base {
                            let bv = median(&values(&self.results, b, m));
                            if bv.is_finite() && bv != 0.0 {
                                ratios.insert(m.key.into(), json!(v / bv));
                            }
                        }
                    }
                }
                json!({"system": e.system, "streaming": e.streaming, "medians": medians, "ratio_vs_native": ratios})
            })
            .collect();
        json!(list)
    }

    /// Writes `<prefix>.json`, `<prefix>.md` and the SVG plots into `dir`; returns
    /// the Markdown.
    pub fn write(&self, dir: &Path) -> Result<String> {
        std::fs::create_dir_all(dir)?;
        let p = self.prefix();
        let plots = self.plots(dir)?;
        let json = json!({
            "date": self.date,
            "quick": self.cfg.quick,
            "config": self.cfg,
            "machine": self.machine.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "systems": self.systems.iter().map(|s| match &s.status {
                Ok(d) => json!({"name": s.name, "available": true, "description": d}),
                Err(r) => json!({"name": s.name, "available": false, "reason": r}),
            }).collect::<Vec<_>>(),
            "summary": self.summary_json(),
            "rounds": self.results,
            "join_summary": join::summary_json(&self.joins),
            "join_rounds": self.joins,
            "failures": self.failures.iter().map(|(s, r, e)| json!({"system": s, "round": r, "error": e})).collect::<Vec<_>>(),
            "decode": match &self.decode { Ok(v) => v.clone(), Err(e) => json!({"not_run": e}) },
            "plots": plots.iter().map(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()).collect::<Vec<_>>(),
            "elapsed_s": self.elapsed_s,
        });
        std::fs::write(dir.join(format!("{p}.json")), serde_json::to_string_pretty(&json).map_err(json_err)?)?;
        let md = self.markdown(&plots);
        std::fs::write(dir.join(format!("{p}.md")), &md)?;
        Ok(md)
    }

    fn markdown(&self, plots: &[PathBuf]) -> String {
        let mut out = String::new();
        let c = &self.cfg;
        let _ = writeln!(
            out,
            "## Replication benchmark{} — {}\n",
            if c.quick { " (quick mode: smoke test, not a measurement)" } else { "" },
            self.date
        );
        for s in &self.systems {
            match &s.status {
                Ok(d) => {
                    let _ = writeln!(out, "* **{}**: {d}", s.name);
                }
                Err(r) => {
                    let _ = writeln!(out, "* **{}**: skipped — {r}", s.name);
                }
            }
        }
        let _ = writeln!(
            out,
            "\nWorkloads: {}; {} interleaved round(s); run took {:.0} s.",
            c.workloads.join(", "),
            c.rounds,
            self.elapsed_s
        );
        if !self.results.is_empty() {
            let _ = writeln!(
                out,
                "\n### Replication\n\npgbench scale {}, `-b simple-update -c{} -j{}`; backlog {} s; steady `-R {}` for {} s; large transaction {} rows.{} Ratio = system ÷ native (the same run).\n",
                c.scale,
                c.clients,
                c.threads,
                c.backlog_secs,
                c.steady_rate,
                c.steady_secs,
                c.large_rows,
                if c.runs("deletes") {
                    format!(
                        " Delete mix: {} s of backlog, each transaction deletes a random key of `bench_queue` ({} keys, half present) and upserts another.",
                        c.backlog_secs,
                        20_000 * c.scale as u64
                    )
                } else {
                    String::new()
                }
            );
            out.push_str(&self.table());
        }
        if !self.joins.is_empty() {
            let _ = writeln!(
                out,
                "\n### Joining a node\n\nA new subscriber copies a `pgbench -i -s {}` provider and becomes ready to stream; seconds from the statement that creates the subscription until the system says ready (native: every `pg_subscription_rel` row `r`; spock: the subscription's sync status `r`, `sub_wait_for_sync`); row counts, balance sum and indexes checked equal afterwards. Time ratio = system ÷ native of the same run (lower is better).\n",
                c.scale
            );
            out.push_str(&join::table(&self.joins));
        }
        for (s, r, e) in &self.failures {
            let first = e.lines().next().unwrap_or("");
            let _ = writeln!(out, "\n**failed**: {s}, round {r}: {first}");
        }
        let _ = writeln!(
            out,
            "\nMachine: {}",
            self.machine.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join("; ")
        );
        match &self.decode {
            Ok(v) => {
                let _ =
                    writeln!(out, "\nDecode throughput (`decode-bench`, same run):\n\n{}", decode_table(v).trim_end());
            }
            Err(e) => {
                let _ = writeln!(out, "\nDecode throughput: not run here ({e}); see `decode-bench`.");
            }
        }
        if !plots.is_empty() {
            let _ = writeln!(out);
            for p in plots {
                let f = p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
                let _ = writeln!(out, "![{f}]({f})");
            }
        }
        out
    }

    fn plots(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        if !self.joins.is_empty() {
            let f = dir.join(format!("{}-join.svg", self.prefix()));
            std::fs::write(
                &f,
                plot::bar_chart(
                    &format!("Joining a node: pgbench scale {}, seconds to ready", self.cfg.scale),
                    "seconds",
                    &join::bars(&self.joins),
                ),
            )?;
            files.push(f);
        }
        files.extend(self.replication_plots(dir)?);
        Ok(files)
    }

    fn replication_plots(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        let p = self.prefix();
        let mut files = Vec::new();
        let systems: Vec<String> = {
            let mut v: Vec<String> = Vec::new();
            for r in &self.results {
                if !v.contains(&r.system) {
                    v.push(r.system.clone());
                }
            }
            v
        };
        if systems.is_empty() {
            return Ok(files);
        }
        // each system's representative round: the one whose value is the median
        let typical = |s: &str, key: fn(&RoundResult) -> f64| {
            let mut rounds: Vec<&RoundResult> = self.results.iter().filter(|r| r.system == s).collect();
            rounds.sort_by(|a, b| key(a).total_cmp(&key(b)));
            rounds.get(rounds.len().saturating_sub(1) / 2).copied()
        };
        let mut lag = Vec::new();
        let mut catchup = Vec::new();
        for (i, s) in systems.iter().enumerate() {
            if let Some(r) = typical(s, |r| r.steady.p99_ms) {
                lag.push(Series {
                    name: format!("{s} median (round {})", r.round),
                    color: i,
                    dashed: false,
                    points: r.steady.series.iter().map(|x| (x.0, x.1)).collect(),
                });
                lag.push(Series {
                    name: format!("{s} p99"),
                    color: i,
                    dashed: true,
                    points: r.steady.series.iter().map(|x| (x.0, x.2)).collect(),
                });
            }
            if let Some(r) = typical(s, |r| r.backlog.tx_per_s) {
                catchup.push(Series {
                    name: format!("{s} (round {})", r.round),
                    color: i,
                    dashed: false,
                    points: r.backlog.timeline.clone(),
                });
            }
        }
        let round_note = "the round with the median tx/s, 0.5 s buckets";
        let f = dir.join(format!("{p}-lag.svg"));
        std::fs::write(
            &f,
            plot::line_chart(
                &format!(
                    "Replication lag at {} tx/s (the round with the median p99, 1 s buckets)",
                    self.cfg.steady_rate
                ),
                "seconds since start (provider commit time)",
                "lag, ms",
                &lag,
            ),
        )?;
        files.push(f);
        let f = dir.join(format!("{p}-catchup.svg"));
        std::fs::write(
            &f,
            plot::line_chart(
                &format!("Backlog catch-up: applied tx/s ({round_note})"),
                "seconds since the subscription was enabled",
                "applied tx/s",
                &catchup,
            ),
        )?;
        files.push(f);
        let ms = metrics(&self.cfg);
        let tx = &ms[0];
        let bars: Vec<Bar> = systems
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let e = Entry { system: s.clone(), streaming: "off".into() };
                let v = values(&self.results, &e, tx);
                Bar { label: s.clone(), value: median(&v), rounds: v, color: i }
            })
            .collect();
        let f = dir.join(format!("{p}-throughput.svg"));
        std::fs::write(&f, plot::bar_chart("Backlog catch-up throughput (applied tx/s)", "applied tx/s", &bars))?;
        files.push(f);
        let vis = ms.iter().find(|m| m.key == "large_commit_to_visible_s").expect("metric exists");
        let bars: Vec<Bar> = entries(&self.results)
            .iter()
            .map(|e| {
                let v = values(&self.results, e, vis);
                let color = systems.iter().position(|s| *s == e.system).unwrap_or(0);
                Bar { label: e.label(), value: median(&v), rounds: v, color }
            })
            .collect();
        let f = dir.join(format!("{p}-large.svg"));
        std::fs::write(
            &f,
            plot::bar_chart(
                &format!("{} rows in one transaction: COMMIT → visible", self.cfg.large_rows),
                "seconds",
                &bars,
            ),
        )?;
        files.push(f);
        Ok(files)
    }
}

/// Reads a `replication*.json` written by [`Report::write`], to render its
/// Markdown and plots again.
pub fn load(path: &Path) -> Result<Report> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path)?).map_err(json_err)?;
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let mut cfg: Config = serde_json::from_value(v["config"].clone()).map_err(json_err)?;
    cfg.poll = Config::full().poll;
    cfg.catchup_timeout = Config::full().catchup_timeout;
    let machine =
        v["machine"].as_object().map(|m| m.iter().map(|(k, v)| (k.clone(), text(v))).collect()).unwrap_or_default();
    let systems = v["systems"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| SystemStatus {
                    name: text(&s["name"]),
                    status: if s["available"].as_bool() == Some(true) {
                        Ok(text(&s["description"]))
                    } else {
                        Err(text(&s["reason"]))
                    },
                })
                .collect()
        })
        .unwrap_or_default();
    let results = serde_json::from_value(v["rounds"].clone()).map_err(json_err)?;
    let joins = if v["join_rounds"].is_array() {
        serde_json::from_value(v["join_rounds"].clone()).map_err(json_err)?
    } else {
        Vec::new()
    };
    let failures = v["failures"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| (text(&f["system"]), f["round"].as_u64().unwrap_or(0) as usize, text(&f["error"])))
                .collect()
        })
        .unwrap_or_default();
    let d = &v["decode"];
    let decode = if d.get("results").is_some() { Ok(d.clone()) } else { Err(text(&d["not_run"])) };
    Ok(Report {
        cfg,
        machine,
        systems,
        results,
        joins,
        failures,
        decode,
        elapsed_s: v["elapsed_s"].as_f64().unwrap_or(0.0),
        date: text(&v["date"]),
    })
}

/// The table `decode-bench` prints, from its `decode.json`.
pub fn decode_table(v: &Value) -> String {
    let mut out = format!(
        "decode throughput, {} row changes, median of {} interleaved rounds{}\n\n| plugin | changes/s | ratio vs pgoutput |\n|---|---:|---:|\n",
        v["changes"],
        v["rounds"],
        if v["quick"].as_bool() == Some(true) { " (quick mode: smoke test only)" } else { "" }
    );
    for r in v["results"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.2} |",
            r["plugin"].as_str().unwrap_or("?"),
            r["changes_per_s"].as_f64().unwrap_or(f64::NAN),
            r["ratio_vs_pgoutput"].as_f64().unwrap_or(f64::NAN)
        );
    }
    out
}
