//! Process limits: the open-file limit raised to what the configured connections need.
//!
//! Every MQTT session holds one descriptor in this process (the client's socket: the front
//! door reaches the broker over an in-process pipe), every HTTPS client one, and the store,
//! listeners and broker a few more. The usual soft limit (1024, systemd's default)
//! would refuse logins past ~1,000 agents with `EMFILE`, far below `--max-connections`. So at
//! start the soft limit is raised to what the settings need, up to the hard limit (and the
//! hard limit too, where the process may); when even that is short, a warning names the
//! numbers.

/// Descriptors the process needs for `max_connections` MQTT sessions and
/// `http_max_connections` HTTPS clients.
pub fn open_files_needed(max_connections: usize, http_max_connections: u32) -> u64 {
    max_connections as u64 + u64::from(http_max_connections) + 256
}

/// The open-file limits after [`raise_open_files`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    pub soft: u64,
    pub hard: u64,
    pub needed: u64,
}

/// Raises the soft open-file limit to `needed` (the hard limit too, when the process is
/// allowed to), else as far as the hard limit goes; logs a warning when the result is short.
///
/// # Errors
/// `getrlimit` fails.
pub fn raise_open_files(needed: u64) -> std::io::Result<OpenFiles> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < needed {
        let wanted = libc::rlimit {
            rlim_cur: needed,
            rlim_max: limit.rlim_max.max(needed),
        };
        // SAFETY: setrlimit reads the struct it is given. Raising the hard limit needs
        // CAP_SYS_RESOURCE; without it, fall back to the hard limit as it is.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0 {
            limit = wanted;
        } else {
            let capped = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            // SAFETY: as above; the soft limit may always rise to the hard one.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &capped) } == 0 {
                limit = capped;
            }
        }
    }
    let files = OpenFiles {
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
        needed,
    };
    if files.soft < needed {
        tracing::warn!(
            open_files = files.soft,
            needed,
            "The open-file limit is below what --max-connections and --http-max-connections \
             need (1 per MQTT session and per HTTPS client); logins past it fail. Raise it \
             (systemd: LimitNOFILE=)"
        );
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_rises_to_what_is_needed_or_the_hard_limit() {
        let before = raise_open_files(0).unwrap();
        let wanted = before.soft + 100;
        let after = raise_open_files(wanted).unwrap();
        assert!(
            after.soft >= wanted || after.soft == after.hard,
            "{before:?} → {after:?}"
        );
        assert_eq!(after.needed, wanted);
        assert_eq!(open_files_needed(10_000, 1024), 11_280);
    }
}
