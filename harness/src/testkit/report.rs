//! Reports: JUnit XML for CI, a startup timeline picture, and the terminal summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::engine::scheduler::Timing;
use crate::graph::Graph;

/// How one trial ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Passed at the first attempt.
    Passed,
    /// Failed every attempt; the last failure message.
    Failed(String),
    /// Failed, then passed on a retry: flaky, never silently green. Holds the attempt that
    /// passed and the first failure.
    Flaky {
        /// The attempt that passed (2 = first retry).
        passed_on: u32,
        /// What the first failure said.
        first_failure: String,
    },
}

/// One trial's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrialRecord {
    /// Full trial name.
    pub name: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Time over all attempts.
    pub duration: Duration,
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\r' | '\t') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A JUnit XML document: one `<testsuite>` named `suite`, one `<testcase>` per trial.
/// Flaky trials pass and carry a `<flakyFailure>` (the convention of Maven Surefire and
/// nextest), so CI systems show them.
pub fn junit(suite: &str, records: &[TrialRecord]) -> String {
    let failures = records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Failed(_)))
        .count();
    let total: f64 = records.iter().map(|r| r.duration.as_secs_f64()).sum();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"harness\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" time=\"{total:.3}\">",
        records.len()
    );
    let _ = writeln!(
        out,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\" time=\"{total:.3}\">",
        xml_escape(suite),
        records.len()
    );
    for r in records {
        let (classname, name) = r.name.rsplit_once("::").unwrap_or((suite, &r.name));
        let _ = write!(
            out,
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
            xml_escape(classname),
            xml_escape(name),
            r.duration.as_secs_f64()
        );
        match &r.outcome {
            Outcome::Passed => out.push_str("/>\n"),
            Outcome::Failed(message) => {
                let first = message.lines().next().unwrap_or("");
                let _ = writeln!(
                    out,
                    ">\n      <failure message=\"{}\" type=\"failure\">{}</failure>\n    </testcase>",
                    xml_escape(first),
                    xml_escape(message)
                );
            }
            Outcome::Flaky {
                passed_on,
                first_failure,
            } => {
                let first = first_failure.lines().next().unwrap_or("");
                let _ = writeln!(
                    out,
                    ">\n      <flakyFailure message=\"{}\" type=\"flaky\">{}</flakyFailure>\n      <system-out>flaky: passed on attempt {passed_on}</system-out>\n    </testcase>",
                    xml_escape(first),
                    xml_escape(first_failure)
                );
            }
        }
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

/// The summary printed after the trials: counts, flaky trials, per-service ready times.
pub fn summary(records: &[TrialRecord], timings: &[Timing]) -> String {
    let count = |f: &dyn Fn(&Outcome) -> bool| records.iter().filter(|r| f(&r.outcome)).count();
    let passed = count(&|o| matches!(o, Outcome::Passed));
    let failed = count(&|o| matches!(o, Outcome::Failed(_)));
    let flaky = count(&|o| matches!(o, Outcome::Flaky { .. }));
    let mut out = format!("\nharness summary: {passed} passed, {failed} failed, {flaky} flaky\n");
    for r in records {
        match &r.outcome {
            Outcome::Flaky {
                passed_on,
                first_failure,
            } => {
                let _ = writeln!(
                    out,
                    "  FLAKY  {} (passed on attempt {passed_on}; first failure: {})",
                    r.name,
                    first_failure.lines().next().unwrap_or("")
                );
            }
            Outcome::Failed(message) => {
                let _ = writeln!(
                    out,
                    "  FAILED {}: {}",
                    r.name,
                    message.lines().next().unwrap_or("")
                );
            }
            Outcome::Passed => {}
        }
    }
    if !timings.is_empty() {
        let width = timings.iter().map(|t| t.service.len()).max().unwrap_or(8);
        out.push_str("  services ready in:\n");
        for t in timings {
            let _ = writeln!(
                out,
                "    {:<width$}  {:>6} ms  (ready at {:.3} s)",
                t.service,
                t.ready_in().as_millis(),
                t.ready.as_secs_f64()
            );
        }
    }
    out
}

/// A self-contained SVG of the stack's startup: one bar per service from start to ready (the
/// launch part darker), dependency arrows from the end of a dependency's bar to the start of
/// its dependent's, and the critical path in red.
pub fn timeline_svg(graph: &Graph, timings: &[Timing], title: &str) -> String {
    let by_name: BTreeMap<&str, &Timing> =
        timings.iter().map(|t| (t.service.as_str(), t)).collect();
    let mut rows: Vec<&Timing> = timings
        .to_vec()
        .iter()
        .map(|t| by_name[t.service.as_str()])
        .collect();
    rows.sort_by(|a, b| a.started.cmp(&b.started).then(a.service.cmp(&b.service)));
    let end = timings
        .iter()
        .map(|t| t.ready)
        .max()
        .unwrap_or_default()
        .as_secs_f64()
        .max(0.001);
    // The critical path: from the last service to become ready, follow the dependency that
    // became ready last, i.e. the one it actually waited for.
    let mut critical = std::collections::BTreeSet::new();
    let mut cur = timings
        .iter()
        .max_by_key(|t| t.ready)
        .map(|t| t.service.as_str());
    while let Some(name) = cur {
        critical.insert(name.to_string());
        cur = graph
            .dependencies(name)
            .iter()
            .filter_map(|(d, _)| by_name.get(d.as_str()).copied())
            .max_by_key(|t| t.ready)
            .map(|t| t.service.as_str());
    }
    let (left, top, row_h, width) = (150.0, 60.0, 34.0, 900.0);
    let scale = (width - left - 110.0) / end;
    let height = top + row_h * rows.len() as f64 + 60.0;
    let x = |d: Duration| left + d.as_secs_f64() * scale;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" \
         font-family=\"DejaVu Sans, Arial, sans-serif\" font-size=\"13\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"6\" markerHeight=\"6\" orient=\"auto-start-reverse\">\
         <path d=\"M 0 0 L 10 5 L 0 10 z\" fill=\"#555\"/></marker></defs>\n\
         <text x=\"{left}\" y=\"24\" font-size=\"16\" font-weight=\"bold\">{}</text>\n\
         <text x=\"{left}\" y=\"42\" fill=\"#555\">bars: start → ready (dark: launching, light: probing); red: critical path; arrows: dependencies</text>\n",
        xml_escape(title)
    );
    // Time axis.
    let step = [0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .find(|s| end / s <= 12.0)
        .unwrap_or(30.0);
    let axis_y = top + row_h * rows.len() as f64 + 10.0;
    let mut t = 0.0;
    while t <= end + 1e-9 {
        let px = left + t * scale;
        let _ = writeln!(
            svg,
            "<line x1=\"{px:.1}\" y1=\"{top}\" x2=\"{px:.1}\" y2=\"{axis_y}\" stroke=\"#eee\"/>\
             <text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">{t:.2} s</text>",
            axis_y + 16.0
        );
        t += step;
    }
    let row_of: BTreeMap<&str, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, t)| (t.service.as_str(), i))
        .collect();
    for (i, t) in rows.iter().enumerate() {
        let y = top + row_h * i as f64;
        let crit = critical.contains(&t.service);
        let (dark, light) = if crit {
            ("#b3261e", "#f2b8b5")
        } else {
            ("#1f5fa8", "#a8c7ee")
        };
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\"{}>{}</text>\n\
             <rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"18\" fill=\"{light}\" rx=\"3\"/>\n\
             <rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"18\" fill=\"{dark}\" rx=\"3\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#222\">{} ms</text>",
            left - 10.0,
            y + 14.0,
            if crit { " font-weight=\"bold\" fill=\"#b3261e\"" } else { "" },
            xml_escape(&t.service),
            x(t.started),
            y + 1.0,
            (x(t.ready) - x(t.started)).max(2.0),
            x(t.started),
            y + 1.0,
            (x(t.launched) - x(t.started)).max(1.0),
            x(t.ready) + 5.0,
            y + 14.0,
            t.ready_in().as_millis()
        );
    }
    for t in &rows {
        for (dep, _) in graph.dependencies(&t.service) {
            let (Some(&from), Some(&to)) =
                (row_of.get(dep.as_str()), row_of.get(t.service.as_str()))
            else {
                continue;
            };
            let d = by_name[dep.as_str()];
            let (x1, y1) = (x(d.ready), top + row_h * from as f64 + 19.0);
            let (x2, y2) = (x(t.started), top + row_h * to as f64 + 1.0);
            let crit = critical.contains(dep) && critical.contains(&t.service);
            let _ = writeln!(
                svg,
                "<path d=\"M {x1:.1} {y1:.1} C {x1:.1} {:.1}, {x2:.1} {:.1}, {x2:.1} {y2:.1}\" fill=\"none\" stroke=\"{}\" stroke-width=\"{}\" marker-end=\"url(#arrow)\" opacity=\"0.8\"/>",
                (y1 + y2) / 2.0,
                (y1 + y2) / 2.0,
                if crit { "#b3261e" } else { "#777" },
                if crit { 2 } else { 1 }
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Condition;

    fn t(s: &str, a: u64, l: u64, b: u64) -> Timing {
        Timing {
            service: s.into(),
            started: Duration::from_millis(a),
            launched: Duration::from_millis(l),
            ready: Duration::from_millis(b),
        }
    }

    #[test]
    fn junit_has_a_testcase_per_trial_with_failures_and_flaky() {
        let records = vec![
            TrialRecord {
                name: "journeys::ok".into(),
                outcome: Outcome::Passed,
                duration: Duration::from_millis(1500),
            },
            TrialRecord {
                name: "journeys::bad".into(),
                outcome: Outcome::Failed("step `x` failed: <boom> & more".into()),
                duration: Duration::from_millis(20),
            },
            TrialRecord {
                name: "journeys::shaky".into(),
                outcome: Outcome::Flaky {
                    passed_on: 2,
                    first_failure: "timeout".into(),
                },
                duration: Duration::from_millis(30),
            },
        ];
        let xml = junit("journeys", &records);
        assert_eq!(xml.matches("<testcase ").count(), 3);
        assert!(xml.contains("tests=\"3\" failures=\"1\""));
        assert!(xml.contains("<testcase classname=\"journeys\" name=\"ok\" time=\"1.500\"/>"));
        assert!(xml.contains("step `x` failed: &lt;boom&gt; &amp; more"));
        assert!(xml.contains("<flakyFailure message=\"timeout\""));
        let s = summary(&records, &[]);
        assert!(s.contains("1 passed, 1 failed, 1 flaky"), "{s}");
        assert!(
            s.contains("FLAKY  journeys::shaky (passed on attempt 2"),
            "{s}"
        );
    }

    #[test]
    fn the_timeline_highlights_the_critical_path() {
        let graph = Graph::from_edges(BTreeMap::from([
            ("db".to_string(), vec![]),
            ("broker".to_string(), vec![]),
            (
                "api".to_string(),
                vec![
                    ("db".to_string(), Condition::Ready),
                    ("broker".to_string(), Condition::Ready),
                ],
            ),
        ]))
        .unwrap();
        let svg = timeline_svg(
            &graph,
            &[
                t("db", 0, 500, 600),
                t("broker", 0, 10, 4000),
                t("api", 4000, 4010, 4200),
            ],
            "shop",
        );
        assert!(svg.starts_with("<svg"));
        // broker and api are critical (bold red labels), db is not.
        assert!(svg.contains("fill=\"#b3261e\">broker</text>"));
        assert!(svg.contains("fill=\"#b3261e\">api</text>"));
        assert!(svg.contains(">db</text>") && !svg.contains("fill=\"#b3261e\">db</text>"));
        assert_eq!(svg.matches("marker-end").count(), 2);
    }
}
