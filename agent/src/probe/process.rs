//! Process probe (host-local): processes by exact name or command-line pattern, how many,
//! and their largest resident memory.

use std::time::Instant;

use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};
use vantage_mqtt::{ProcessCheck, Timings};

use super::{Outcome, regex};

/// Runs a process check.
pub async fn probe(check: &ProcessCheck, started: Instant) -> Outcome {
    let pattern = match check
        .pattern
        .as_deref()
        .map(|p| regex("pattern", p))
        .transpose()
    {
        Ok(pattern) => pattern,
        Err(error) => return Outcome::fail(error, started),
    };
    let mut system = match System::new() {
        Ok(system) => system,
        Err(error) => return Outcome::fail(format!("cannot read processes: {error}"), started),
    };
    system.refresh_processes_specifics(
        ProcessesToUpdate::All,
        true,
        ProcessRefreshKind::nothing()
            .with_memory()
            .with_cmd(UpdateKind::Always),
    );
    let mut count = 0u32;
    let mut max_rss = 0u64;
    for process in system.processes().values() {
        // Threads show up as processes on Linux; count each process once.
        if process.thread_kind().is_some() {
            continue;
        }
        let name_ok = check
            .name
            .as_deref()
            .is_none_or(|name| process.name().to_string_lossy() == name);
        let pattern_ok = pattern.as_ref().is_none_or(|re| {
            let cmd: Vec<String> = process
                .cmd()
                .iter()
                .map(|part| part.to_string_lossy().into_owned())
                .collect();
            re.is_match(&cmd.join(" "))
        });
        if name_ok && pattern_ok {
            count += 1;
            max_rss = max_rss.max(process.memory());
        }
    }
    let what = check
        .name
        .clone()
        .or_else(|| check.pattern.as_ref().map(|p| format!("/{p}/")))
        .unwrap_or_default();
    let (ok, reason) = if count < check.min_count {
        (
            false,
            format!(
                "{count} processes match {what}, expected at least {}",
                check.min_count
            ),
        )
    } else if check.max_count.is_some_and(|max| count > max) {
        (
            false,
            format!(
                "{count} processes match {what}, expected at most {}",
                check.max_count.unwrap_or(0)
            ),
        )
    } else if check.max_rss_bytes.is_some_and(|max| max_rss > max) {
        (
            false,
            format!(
                "largest {what} uses {max_rss} bytes, more than {}",
                check.max_rss_bytes.unwrap_or(0)
            ),
        )
    } else {
        (true, format!("{count} processes match {what}"))
    };
    let mut outcome = Outcome::verdict(ok, reason, Timings::default(), started);
    outcome
        .values
        .insert("process_count".into(), f64::from(count));
    outcome
        .values
        .insert("rss_max_bytes".into(), max_rss as f64);
    outcome
}

/// Checks a process check's fields.
///
/// # Errors
/// A message naming the field.
pub fn validate(check: &ProcessCheck) -> Result<(), String> {
    if check.name.is_none() && check.pattern.is_none() {
        return Err("set a name or pattern".into());
    }
    if let Some(name) = &check.name
        && (name.is_empty() || name.len() > 255)
    {
        return Err("name must be 1-255 characters".into());
    }
    if let Some(pattern) = &check.pattern {
        regex("pattern", pattern)?;
    }
    if check.max_count.is_some_and(|max| max < check.min_count) {
        return Err("max_count must not be below min_count".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finds_this_test_process_and_misses_a_ghost() {
        let me = std::fs::read_to_string("/proc/self/comm")
            .unwrap()
            .trim()
            .to_owned();
        let check = ProcessCheck {
            name: Some(me.clone()),
            pattern: None,
            min_count: 1,
            max_count: None,
            max_rss_bytes: None,
        };
        let outcome = probe(&check, Instant::now()).await;
        assert!(outcome.ok, "{outcome:?}");
        assert!(outcome.values["rss_max_bytes"] > 0.0);
        let ghost = ProcessCheck {
            name: Some("no-such-process-xyz".into()),
            ..check.clone()
        };
        let outcome = probe(&ghost, Instant::now()).await;
        assert!(!outcome.ok);
        assert_eq!(
            outcome.reason,
            "0 processes match no-such-process-xyz, expected at least 1"
        );
        let tiny = ProcessCheck {
            max_rss_bytes: Some(1),
            ..check
        };
        let outcome = probe(&tiny, Instant::now()).await;
        assert!(
            !outcome.ok && outcome.reason.contains("more than 1"),
            "{outcome:?}"
        );
    }
}
