//! When the agent may send rows on a connection: once the control plane has answered a hello
//! of that connection (`ResultsAck::hello_answer`, naming the `next_seq` the hello
//! announced). The control plane answers only after the hello is recorded, with any seq
//! range it holds back for a rewound agent, so on a broker cluster, where the hello and the
//! rows may reach different replicas, no row that needs that range is ingested before it.
//!
//! Unanswered, the hello is said again every [`HELLO_AGAIN`]. After [`HELLO_TRIES`]
//! unanswered hellos the agent sends its rows anyway, as agents did before hellos were
//! answered: a control plane of that time never answers, and rows held forever would fill
//! the spool.

use std::time::{Duration, Instant};

/// How long a hello waits for its answer before it is said again.
pub const HELLO_AGAIN: Duration = Duration::from_secs(10);
/// Hellos said on one connection before the agent sends rows without an answer.
pub const HELLO_TRIES: usize = 6;

/// The state of the current connection's hello.
#[derive(Debug, Default)]
pub struct HelloGate {
    state: State,
}

#[derive(Debug, Default)]
enum State {
    /// No connection.
    #[default]
    Disconnected,
    /// Hellos said on this connection (the `next_seq` each announced), none answered yet.
    Waiting {
        last_said: Instant,
        announced: Vec<u64>,
    },
    /// Rows may be sent.
    Open,
}

/// What [`HelloGate::due`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    Nothing,
    /// Say the hello again.
    HelloAgain,
    /// Stop waiting: the gate is open without an answer.
    GaveUp,
}

impl HelloGate {
    /// A connection came up and its first hello, announcing `next_seq`, was said.
    pub fn connected(&mut self, now: Instant, next_seq: u64) {
        self.state = State::Waiting {
            last_said: now,
            announced: vec![next_seq],
        };
    }

    /// The hello was said again, announcing `next_seq`.
    pub fn said_again(&mut self, now: Instant, next_seq: u64) {
        if let State::Waiting {
            last_said,
            announced,
        } = &mut self.state
        {
            *last_said = now;
            announced.push(next_seq);
        }
    }

    /// An answer to the hello that announced `next_seq` came; whether it opened the gate
    /// (an answer to no hello of this connection is ignored).
    pub fn answered(&mut self, next_seq: u64) -> bool {
        match &self.state {
            State::Waiting { announced, .. } if announced.contains(&next_seq) => {
                self.state = State::Open;
                true
            }
            _ => false,
        }
    }

    pub fn disconnected(&mut self) {
        self.state = State::Disconnected;
    }

    /// Whether rows may be sent.
    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open)
    }

    /// What is due at `now`: nothing, the hello again, or (after [`HELLO_TRIES`]
    /// unanswered hellos) giving up waiting, which opens the gate.
    pub fn due(&mut self, now: Instant) -> Due {
        match &self.state {
            State::Waiting {
                last_said,
                announced,
            } if now.duration_since(*last_said) >= HELLO_AGAIN => {
                if announced.len() >= HELLO_TRIES {
                    self.state = State::Open;
                    Due::GaveUp
                } else {
                    Due::HelloAgain
                }
            }
            _ => Due::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_wait_for_the_answer_to_a_hello_of_this_connection() {
        let start = Instant::now();
        let mut gate = HelloGate::default();
        assert!(!gate.is_open(), "no connection");
        assert!(!gate.answered(5), "no hello said");
        gate.connected(start, 5);
        assert!(!gate.is_open());
        assert_eq!(gate.due(start + Duration::from_secs(9)), Due::Nothing);
        assert!(!gate.answered(4), "an answer to another hello");
        assert!(!gate.is_open());
        assert!(gate.answered(5));
        assert!(gate.is_open());
        assert!(!gate.answered(5), "already open");
        assert_eq!(gate.due(start + Duration::from_secs(60)), Due::Nothing);

        gate.disconnected();
        assert!(!gate.is_open());
        assert!(!gate.answered(5), "the connection that said it is gone");
        gate.connected(start, 7);
        assert!(!gate.is_open(), "a new connection waits again");
    }

    #[test]
    fn an_unanswered_hello_is_said_again_then_rows_go_without_an_answer() {
        let start = Instant::now();
        let mut gate = HelloGate::default();
        gate.connected(start, 1);
        let mut now = start;
        for said in 1..HELLO_TRIES {
            now += HELLO_AGAIN;
            assert_eq!(gate.due(now), Due::HelloAgain, "after hello {said}");
            // The hello said again announces what the spool numbers next by then.
            gate.said_again(now, 1 + said as u64);
            assert!(!gate.is_open());
        }
        assert_eq!(gate.due(now + HELLO_AGAIN / 2), Due::Nothing);
        // An answer to any of this connection's hellos opens it.
        let mut answered = HelloGate::default();
        answered.connected(start, 1);
        answered.said_again(start, 2);
        assert!(answered.answered(1));

        assert_eq!(gate.due(now + HELLO_AGAIN), Due::GaveUp);
        assert!(gate.is_open());
        assert_eq!(gate.due(now + HELLO_AGAIN * 2), Due::Nothing);
    }
}
