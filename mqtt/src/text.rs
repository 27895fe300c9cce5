//! Bounds on the texts that rows carry: the limits, the cut mark, and the one repair both
//! sides apply (the agent before it spools a row, the control plane before it stores one).
//!
//! Texts in results, metrics and events are often chosen by the target (an HTTP body at a
//! JSON pointer, a header, a redirect URL, an SMTP greeting, an RPC error, TXT answers), so
//! they have no natural bound and may hold NUL, which PostgreSQL refuses in `text`. Every
//! such text is cut on a character boundary to its limit, with [`CUT_MARK`] at the end so a
//! reader sees it was cut, and every NUL is replaced by U+FFFD. The limits count bytes of
//! UTF-8, the mark included.

use crate::payload::{CheckResult, Event, Hello, HostMetrics};

/// Longest `reason` of a check result, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;
/// Longest short name (a numeric value's key, a mount point, an interface, an event's
/// source or severity), in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest event message, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Most numeric values of one result; more are dropped (highest keys first).
pub const MAX_VALUES: usize = 32;
/// Most disks, interfaces or per-core figures of one metrics sample; more are dropped.
pub const MAX_LIST_ITEMS: usize = 256;
/// Appended to a text that was cut.
pub const CUT_MARK: &str = "…[cut]";

/// What a repair changed; all false when the row was already within bounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Repair {
    /// A text was cut or a list shortened.
    pub cut: bool,
    /// A NUL character was replaced.
    pub nul: bool,
}

impl Repair {
    /// Whether anything changed.
    pub fn any(self) -> bool {
        self.cut || self.nul
    }

    fn merge(&mut self, other: Repair) {
        self.cut |= other.cut;
        self.nul |= other.nul;
    }
}

/// Replaces NUL with U+FFFD and cuts `text` to at most `max` bytes on a character boundary,
/// ending a cut text with [`CUT_MARK`].
pub fn bound_text(text: &mut String, max: usize) -> Repair {
    let mut repair = Repair::default();
    if text.contains('\0') {
        *text = text.replace('\0', "\u{FFFD}");
        repair.nul = true;
    }
    if text.len() > max {
        let room = max.saturating_sub(CUT_MARK.len());
        let mut end = room.min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        if max >= CUT_MARK.len() {
            text.push_str(CUT_MARK);
        }
        repair.cut = true;
    }
    repair
}

fn bound_list<T>(list: &mut Vec<T>) -> Repair {
    let cut = list.len() > MAX_LIST_ITEMS;
    list.truncate(MAX_LIST_ITEMS);
    Repair { cut, nul: false }
}

impl CheckResult {
    /// Brings every text of the result within its bound (see the module docs).
    pub fn bound_texts(&mut self) -> Repair {
        let mut repair = bound_text(&mut self.reason, MAX_REASON_BYTES);
        let needs_work = self.values.len() > MAX_VALUES
            || self
                .values
                .keys()
                .any(|k| k.len() > MAX_NAME_BYTES || k.contains('\0'));
        if needs_work {
            let old = std::mem::take(&mut self.values);
            for (mut key, value) in old {
                repair.merge(bound_text(&mut key, MAX_NAME_BYTES));
                if self.values.len() < MAX_VALUES {
                    self.values.insert(key, value);
                } else {
                    repair.cut = true;
                }
            }
        }
        repair
    }
}

impl HostMetrics {
    /// Brings every text and list of the sample within its bound (see the module docs).
    pub fn bound_texts(&mut self) -> Repair {
        let mut repair = bound_list(&mut self.disks);
        repair.merge(bound_list(&mut self.nets));
        if let Some(cores) = self.cores_pct.as_mut() {
            repair.merge(bound_list(cores));
        }
        for disk in &mut self.disks {
            repair.merge(bound_text(&mut disk.mount, MAX_NAME_BYTES));
        }
        for net in &mut self.nets {
            repair.merge(bound_text(&mut net.iface, MAX_NAME_BYTES));
        }
        repair
    }
}

impl Event {
    /// Brings every text of the event within its bound (see the module docs).
    pub fn bound_texts(&mut self) -> Repair {
        let mut repair = bound_text(&mut self.severity, MAX_NAME_BYTES);
        repair.merge(bound_text(&mut self.message, MAX_MESSAGE_BYTES));
        repair
    }
}

impl Hello {
    /// Brings every text of the hello within [`MAX_NAME_BYTES`] (see the module docs).
    pub fn bound_texts(&mut self) -> Repair {
        let mut repair = Repair::default();
        for text in [
            &mut self.version,
            &mut self.arch,
            &mut self.os,
            &mut self.hostname,
            &mut self.boot_id,
        ] {
            repair.merge(bound_text(text, MAX_NAME_BYTES));
        }
        repair
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::payload::Timings;

    #[test]
    fn short_texts_are_untouched() {
        let mut text = String::from("200 OK");
        assert!(!bound_text(&mut text, 16).any());
        assert_eq!(text, "200 OK");
        let mut exact = "x".repeat(16);
        assert!(!bound_text(&mut exact, 16).any());
    }

    #[test]
    fn long_texts_are_cut_on_a_character_boundary_with_the_mark() {
        // Three-byte characters: a cut in the middle of one must step back.
        let mut text = "€".repeat(1000);
        let repair = bound_text(&mut text, 100);
        assert_eq!(
            repair,
            Repair {
                cut: true,
                nul: false
            }
        );
        assert!(text.len() <= 100, "{} bytes", text.len());
        assert!(text.ends_with(CUT_MARK));
        let body = text.strip_suffix(CUT_MARK).unwrap();
        assert!(body.chars().all(|c| c == '€'));
        assert_eq!(body.len(), (100 - CUT_MARK.len()) / 3 * 3);
    }

    #[test]
    fn nul_is_replaced() {
        let mut text = String::from("a\0b\0");
        let repair = bound_text(&mut text, 100);
        assert!(repair.nul && !repair.cut);
        assert_eq!(text, "a\u{FFFD}b\u{FFFD}");
    }

    #[test]
    fn a_result_is_bounded_in_reason_and_values() {
        let mut result = CheckResult {
            seq: 1,
            measured_at_ms: 0,
            check_id: "c".into(),
            ok: false,
            reason: format!("expected ok at /status, got {}", "x".repeat(6000)),
            timings: Timings::default(),
            status_code: None,
            values: (0..40)
                .map(|i| (format!("k{i:02}{}", "\0".repeat(i % 2)), i as f64))
                .chain([("y".repeat(500), 1.0)])
                .collect::<BTreeMap<_, _>>(),
        };
        let repair = result.bound_texts();
        assert!(repair.cut && repair.nul);
        assert!(result.reason.len() <= MAX_REASON_BYTES);
        assert!(result.reason.starts_with("expected ok at /status, got xxx"));
        assert_eq!(result.values.len(), MAX_VALUES);
        assert!(
            result
                .values
                .keys()
                .all(|k| k.len() <= MAX_NAME_BYTES && !k.contains('\0'))
        );
        assert!(!result.bound_texts().any(), "a bounded row stays as it is");
    }
}
