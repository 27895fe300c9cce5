//! Builds the tracing subscriber once per process. `RUST_LOG` sets the filter (default
//! `info`); output goes to stderr so stdout stays for command output.
//!
//! The embedded broker (rumqttd) is silenced unless `RUST_LOG` names it (for example
//! `RUST_LOG=info,rumqttd=info`): it logs ordinary events, such as a client that sends
//! DISCONNECT and then closes its socket, at ERROR, and everything it sees has passed the
//! front door, which logs and counts what matters itself.

use tracing_subscriber::EnvFilter;

/// Directives added to every filter unless `RUST_LOG` names their target.
const QUIET: &[(&str, &str)] = &[("rumqttd", "rumqttd=off")];

/// The filter for `RUST_LOG` (`None` or empty: `default_filter`) with [`QUIET`] added.
pub fn filter_directives(rust_log: Option<&str>, default_filter: &str) -> String {
    let base = rust_log
        .map(str::trim)
        .filter(|text| !text.is_empty())
        .unwrap_or(default_filter);
    let mut directives = base.to_owned();
    for (target, quiet) in QUIET {
        if !base.contains(target) {
            directives.push(',');
            directives.push_str(quiet);
        }
    }
    directives
}

/// Installs the global subscriber; a second call is a no-op.
pub fn init(default_filter: &str) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let directives = filter_directives(rust_log.as_deref(), default_filter);
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|error| {
        eprintln!(
            "RUST_LOG {directives:?} is not a valid filter ({error}); using {default_filter:?}"
        );
        EnvFilter::new(filter_directives(None, default_filter))
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal, not in log files or the journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rumqttd_is_quiet_unless_rust_log_names_it() {
        assert_eq!(filter_directives(None, "info"), "info,rumqttd=off");
        assert_eq!(filter_directives(Some(" "), "info"), "info,rumqttd=off");
        assert_eq!(
            filter_directives(Some("debug"), "info"),
            "debug,rumqttd=off"
        );
        assert_eq!(
            filter_directives(Some("info,rumqttd=debug"), "info"),
            "info,rumqttd=debug"
        );
    }
}
