//! Per-check series for Prometheus in the blackbox exporter's style, on their own scrape path
//! (`GET /metrics/checks`): `vantage_check_up` and `vantage_check_duration_seconds` by phase
//! per (check, region) from each region's latest stored result, the certificate's time left,
//! the verdict across regions as a state set, and `vantage_build_info`. Phases and
//! certificate days come from results seen since the process started ([`Latest`], one entry
//! per (check, region), dropped with its check); up and total time come from the store.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Mutex;

use vantage_mqtt::{CheckResult, CheckState};

/// What the latest result of a (check, region) said beyond up and total time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extras {
    pub measured_at_ms: i64,
    /// (phase, seconds) for the phases the probe timed.
    pub phases: Vec<(&'static str, f64)>,
    pub cert_days_left: Option<f64>,
}

/// The latest [`Extras`] per (check, region), kept as results are committed.
#[derive(Debug, Default)]
pub struct Latest {
    entries: Mutex<HashMap<(String, String), Extras>>,
}

impl Latest {
    /// Notes a committed result of `check` in `region` unless a newer one is known.
    pub fn observe(&self, region: &str, result: &CheckResult) {
        let t = &result.timings;
        let phases = [
            ("dns", t.dns_ms),
            ("connect", t.connect_ms),
            ("tls", t.tls_ms),
            ("ttfb", t.ttfb_ms),
            ("transfer", t.transfer_ms),
        ]
        .into_iter()
        .filter_map(|(name, ms)| ms.filter(|v| v.is_finite()).map(|ms| (name, ms / 1000.0)))
        .collect();
        let extras = Extras {
            measured_at_ms: result.measured_at_ms,
            phases,
            cert_days_left: result
                .values
                .get("cert_days_left")
                .copied()
                .filter(|v| v.is_finite()),
        };
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        let key = (result.check_id.clone(), region.to_owned());
        match entries.get(&key) {
            Some(known) if known.measured_at_ms > extras.measured_at_ms => {}
            _ => {
                entries.insert(key, extras);
            }
        }
    }

    /// The entries of the checks in `keep`, dropping those of checks that are gone.
    pub fn snapshot(&self, keep: &HashSet<&str>) -> HashMap<(String, String), Extras> {
        let Ok(mut entries) = self.entries.lock() else {
            return HashMap::new();
        };
        entries.retain(|(check, _), _| keep.contains(check.as_str()));
        entries.clone()
    }
}

/// A label value as the text format wants it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One (check, region)'s latest result as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub check_id: String,
    pub region: String,
    pub ok: bool,
    pub total_ms: f64,
    pub measured_at_ms: i64,
}

const STATES: [(CheckState, &str); 6] = [
    (CheckState::Pending, "pending"),
    (CheckState::Up, "up"),
    (CheckState::Degraded, "degraded"),
    (CheckState::Down, "down"),
    (CheckState::Maintenance, "maintenance"),
    (CheckState::Paused, "paused"),
];

/// The `check` and `region` labels of a series.
fn check_region(check: &str, region: &str) -> String {
    format!("check=\"{}\",region=\"{}\"", escape(check), escape(region))
}

fn labels(s: &Status) -> String {
    check_region(&s.check_id, &s.region)
}

/// The scrape's text: `statuses` (latest per (check, region)), `extras` (phases and
/// certificates), `verdicts` (check → state).
pub fn render(
    version: &str,
    statuses: &[Status],
    extras: &HashMap<(String, String), Extras>,
    verdicts: &BTreeMap<String, CheckState>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP vantage_build_info The control plane's version.\n# TYPE vantage_build_info gauge\nvantage_build_info{{version=\"{}\"}} 1",
        escape(version)
    );
    out.push_str("# HELP vantage_check_up Whether the latest result of the check in the region succeeded (1) or failed (0).\n# TYPE vantage_check_up gauge\n");
    for s in statuses {
        let _ = writeln!(out, "vantage_check_up{{{}}} {}", labels(s), u8::from(s.ok));
    }
    out.push_str("# HELP vantage_check_duration_seconds Duration of the latest result of the check in the region, by phase (total: the whole run).\n# TYPE vantage_check_duration_seconds gauge\n");
    for s in statuses {
        let labels = labels(s);
        let _ = writeln!(
            out,
            "vantage_check_duration_seconds{{{labels},phase=\"total\"}} {}",
            s.total_ms / 1000.0
        );
        if let Some(extra) = extras.get(&(s.check_id.clone(), s.region.clone())) {
            for (phase, seconds) in &extra.phases {
                let _ = writeln!(
                    out,
                    "vantage_check_duration_seconds{{{labels},phase=\"{phase}\"}} {seconds}"
                );
            }
        }
    }
    out.push_str("# HELP vantage_check_result_timestamp_seconds When the latest result of the check in the region was measured.\n# TYPE vantage_check_result_timestamp_seconds gauge\n");
    for s in statuses {
        let _ = writeln!(
            out,
            "vantage_check_result_timestamp_seconds{{{}}} {}",
            labels(s),
            s.measured_at_ms as f64 / 1000.0
        );
    }
    out.push_str("# HELP vantage_check_cert_expiry_seconds Time until the certificate the check was served expires (its days left in seconds), from its latest result that saw one.\n# TYPE vantage_check_cert_expiry_seconds gauge\n");
    let mut certs: Vec<(&(String, String), f64)> = extras
        .iter()
        .filter_map(|(key, e)| e.cert_days_left.map(|d| (key, d)))
        .collect();
    certs.sort_by(|a, b| a.0.cmp(b.0));
    for ((check, region), days) in certs {
        let _ = writeln!(
            out,
            "vantage_check_cert_expiry_seconds{{{}}} {}",
            check_region(check, region),
            days * 86_400.0
        );
    }
    out.push_str("# HELP vantage_check_state The check's verdict across its regions: 1 for the state it is in, 0 for the others.\n# TYPE vantage_check_state gauge\n");
    for (check, state) in verdicts {
        for (candidate, name) in STATES {
            let _ = writeln!(
                out,
                "vantage_check_state{{check=\"{}\",state=\"{name}\"}} {}",
                escape(check),
                u8::from(*state == candidate)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(check: &str, at: i64, dns: Option<f64>) -> CheckResult {
        serde_json::from_value(serde_json::json!({
            "seq": 1, "measured_at_ms": at, "check_id": check, "ok": true, "reason": "ok",
            "timings": {"total_ms": 12.0, "dns_ms": dns, "connect_ms": 2.0},
            "values": {"cert_days_left": 30.5}
        }))
        .expect("a result")
    }

    #[test]
    fn the_newest_result_wins_and_gone_checks_are_dropped() {
        let latest = Latest::default();
        latest.observe("eu", &result("web", 2000, Some(1.0)));
        latest.observe("eu", &result("web", 1000, None));
        latest.observe("us", &result("old", 1000, None));
        let keep: HashSet<&str> = ["web"].into_iter().collect();
        let snap = latest.snapshot(&keep);
        assert_eq!(snap.len(), 1);
        let web = &snap[&("web".to_owned(), "eu".to_owned())];
        assert_eq!(web.measured_at_ms, 2000);
        assert_eq!(web.phases, vec![("dns", 0.001), ("connect", 0.002)]);
        assert_eq!(web.cert_days_left, Some(30.5));
        assert!(latest.snapshot(&keep).len() == 1);
    }

    #[test]
    fn every_series_has_its_help_and_type_and_labels_are_escaped() {
        let statuses = vec![Status {
            check_id: "we\"b".into(),
            region: "eu".into(),
            ok: false,
            total_ms: 1500.0,
            measured_at_ms: 3000,
        }];
        let mut extras = HashMap::new();
        extras.insert(
            ("we\"b".to_owned(), "eu".to_owned()),
            Extras {
                measured_at_ms: 3000,
                phases: vec![("tls", 0.25)],
                cert_days_left: Some(9.0),
            },
        );
        let verdicts = BTreeMap::from([("we\"b".to_owned(), CheckState::Down)]);
        let text = render("1.2.3", &statuses, &extras, &verdicts);
        assert!(text.contains("vantage_build_info{version=\"1.2.3\"} 1\n"));
        assert!(text.contains("vantage_check_up{check=\"we\\\"b\",region=\"eu\"} 0\n"));
        assert!(text.contains("phase=\"total\"} 1.5\n"));
        assert!(text.contains("phase=\"tls\"} 0.25\n"));
        assert!(text.contains(
            "vantage_check_cert_expiry_seconds{check=\"we\\\"b\",region=\"eu\"} 777600\n"
        ));
        assert!(text.contains("vantage_check_state{check=\"we\\\"b\",state=\"down\"} 1\n"));
        assert!(text.contains("vantage_check_state{check=\"we\\\"b\",state=\"up\"} 0\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or("");
            assert!(text.contains(&format!("# TYPE {name} gauge")), "{name}");
        }
    }
}
