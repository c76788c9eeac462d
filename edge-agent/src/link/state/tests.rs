//! The link protocol without sockets: a harness plays the event loop's part (it performs the
//! actions against an in-memory spool and a fake connection and reports back what they did)
//! and moves time forward by hand.

use std::collections::{BTreeMap, BTreeSet};

use maosic_schema::protocol::{Notification, Response};
use rand::{Rng, SeedableRng};
use serde_json::Value;

use super::*;

const EPOCH: &str = "e1";
const BASE: Duration = Duration::from_millis(100);
const CAP: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const HEARTBEAT_MS: u64 = 1000;
const WALL_START: i64 = 1_700_000_000_000;

/// The spool, in memory.
#[derive(Default)]
struct FakeSpool {
    records: BTreeMap<u64, Value>,
    written: u64,
    /// Accepted command ids, with the result stored when the run ended.
    accepted: BTreeMap<String, Option<Value>>,
    unreadable: bool,
    unwritable: bool,
}

/// Plays the event loop: performs actions, reports their outcome, keeps the time.
struct Harness {
    state: LinkState,
    start: Instant,
    now: Instant,
    spool: FakeSpool,
    /// A connection attempt is in progress.
    connecting: bool,
    /// The connection is open.
    open: bool,
    /// Frames written on the current connection.
    wire: Vec<Message>,
    /// Frames written on earlier connections, one list per connection.
    old_wires: Vec<Vec<Message>>,
    /// Sends fail (a broken connection the loop has not noticed yet).
    broken: bool,
    /// Sends block (a peer that stops reading): they wait in `stuck`.
    stalled: bool,
    stuck: Vec<(SendId, Message)>,
    /// Every action performed, in order.
    log: Vec<Action>,
    exit: Option<Exit>,
}

impl Harness {
    fn new(has_lab: bool) -> Self {
        Self::with_seed(has_lab, 7)
    }

    fn with_seed(has_lab: bool, seed: u64) -> Self {
        let start = Instant::now();
        Harness {
            state: LinkState::new(
                Settings {
                    epoch: EPOCH.into(),
                    has_lab,
                    backoff_base: BASE,
                    backoff_cap: CAP,
                    connect_timeout: CONNECT_TIMEOUT,
                },
                seed,
            ),
            start,
            now: start,
            spool: FakeSpool::default(),
            connecting: false,
            open: false,
            wire: Vec::new(),
            old_wires: Vec::new(),
            broken: false,
            stalled: false,
            stuck: Vec::new(),
            log: Vec::new(),
            exit: None,
        }
    }

    fn clock(&self) -> Now {
        let since = i64::try_from((self.now - self.start).as_millis()).unwrap();
        Now {
            at: self.now,
            unix_ms: WALL_START + since,
        }
    }

    fn ms(&self) -> u64 {
        u64::try_from((self.now - self.start).as_millis()).unwrap()
    }

    fn start(&mut self) {
        let actions = self.state.start(self.clock());
        self.perform(actions);
    }

    /// Hands `event` to the state and performs the actions, depth first, like the event loop.
    fn event(&mut self, event: Event) {
        let actions = self.state.handle(self.clock(), event);
        self.perform(actions);
    }

    fn perform(&mut self, actions: Vec<Action>) {
        for action in actions {
            self.log.push(action.clone());
            let report =
                match action {
                    Action::Connect => {
                        assert!(!self.connecting && !self.open, "one connection at a time");
                        self.connecting = true;
                        None
                    }
                    Action::Send { id, message } => {
                        if !self.open {
                            None
                        } else if self.broken {
                            Some(Event::SendFailed(id, "broken pipe".into()))
                        } else if self.stalled || !self.stuck.is_empty() {
                            // Frames are written in order: nothing passes a blocked one.
                            self.stuck.push((id, message));
                            None
                        } else {
                            self.wire.push(message);
                            Some(Event::SendCompleted(id))
                        }
                    }
                    Action::Disconnect => {
                        self.connecting = false;
                        self.stuck.clear();
                        if self.open {
                            self.open = false;
                            self.old_wires.push(std::mem::take(&mut self.wire));
                        }
                        None
                    }
                    Action::ReadSpool { after, limit } => {
                        Some(Event::SpoolRead(if self.spool.unreadable {
                            Err("disk I/O error".into())
                        } else {
                            Ok(self
                                .spool
                                .records
                                .range(after + 1..)
                                .take(limit as usize)
                                .map(|(seq, record)| Spooled {
                                    seq: *seq,
                                    program_id: None,
                                    record: record.clone(),
                                })
                                .collect())
                        }))
                    }
                    Action::AckSpool { seq_hi } => {
                        self.spool.records.retain(|seq, _| *seq > seq_hi);
                        None
                    }
                    Action::LookUpCommand { program_id } => Some(Event::CommandLookedUp {
                        known: Ok(self.spool.accepted.get(&program_id).map(|result| {
                            KnownCommand {
                                result: result.clone(),
                            }
                        })),
                        program_id,
                    }),
                    Action::AcceptCommand { program_id, .. } => Some(Event::CommandAccepted {
                        acceptance: if self.spool.unwritable {
                            Err("disk full".into())
                        } else if let Some(result) = self.spool.accepted.get(&program_id) {
                            Ok(Acceptance::Known(KnownCommand {
                                result: result.clone(),
                            }))
                        } else {
                            self.spool.accepted.insert(program_id.clone(), None);
                            Ok(Acceptance::New)
                        },
                        program_id,
                    }),
                    Action::ApplyLinkLoss => Some(Event::LinkLossApplied),
                    Action::Exit(exit) => {
                        assert!(self.exit.is_none(), "exits once");
                        self.exit = Some(exit);
                        None
                    }
                    Action::Close
                    | Action::RunProgram { .. }
                    | Action::CancelProgram { .. }
                    | Action::CancelAll
                    | Action::DeviceCall { .. }
                    | Action::Estop { .. }
                    | Action::SafetyReset { .. }
                    | Action::LinkRestored => None,
                };
            if let Some(event) = report {
                self.event(event);
            }
        }
    }

    /// Lets time pass until `ms` after the start, ticking at every deadline on the way.
    fn run_until(&mut self, ms: u64) {
        let end = self.start + Duration::from_millis(ms);
        while let Some(deadline) = self.state.next_deadline().filter(|d| *d <= end) {
            self.now = self.now.max(deadline);
            self.event(Event::Tick);
            // A deadline the tick did not move would make the event loop spin.
            assert!(
                self.state.next_deadline().is_none_or(|d| d > self.now),
                "the state asked for a tick at {:?} and did nothing with it",
                deadline - self.start
            );
        }
        self.now = self.now.max(end);
    }

    fn run_for(&mut self, ms: u64) {
        self.run_until(self.ms() + ms);
    }

    fn connect_succeeds(&mut self) {
        assert!(self.connecting, "no attempt in progress");
        self.connecting = false;
        self.open = true;
        self.event(Event::Connected { descriptor: None });
    }

    fn connect_fails(&mut self, failure: ConnectFailure) {
        assert!(self.connecting, "no attempt in progress");
        self.connecting = false;
        self.event(Event::ConnectFailed(failure));
    }

    fn text(&mut self, message: &Message) {
        self.event(Event::Frame(Incoming::Text(message.to_json())));
    }

    fn raw(&mut self, text: &str) {
        self.event(Event::Frame(Incoming::Text(text.into())));
    }

    fn welcome(&mut self) {
        self.text(&Message::result(
            Id::Number(1),
            HelloResult {
                lab_id: "lab-1".into(),
                generation: 1,
                heartbeat_ms: HEARTBEAT_MS,
            },
        ));
    }

    /// Started, connected and welcomed.
    fn up(has_lab: bool) -> Self {
        let mut h = Harness::new(has_lab);
        h.start();
        h.connect_succeeds();
        h.welcome();
        assert!(h.state.is_up());
        h
    }

    /// After a lost link: waits for the retry and connects again.
    fn reconnect(&mut self) {
        self.run_for(CAP.as_millis() as u64 + 1);
        self.connect_succeeds();
        self.welcome();
        assert!(self.state.is_up());
    }

    fn spool_records(&mut self, n: u64) {
        for _ in 0..n {
            self.spool.written += 1;
            let seq = self.spool.written;
            self.spool
                .records
                .insert(seq, json!({ "body": { "type": "measurement" }, "n": seq }));
        }
        self.event(Event::RecordsSpooled);
    }

    fn ack(&mut self, seq_hi: u64) {
        self.text(&Message::notification(
            method::ACK,
            AckParams {
                epoch: EPOCH.into(),
                seq_hi,
            },
        ));
    }

    fn request(&mut self, id: i64, method: &str, params: Value) {
        self.raw(
            &json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }).to_string(),
        );
    }

    fn run_program(&mut self, id: i64, program_id: &str, deadline_ms: Option<i64>) {
        let mut params = json!({ "program_id": program_id, "program": program() });
        if let Some(d) = deadline_ms {
            params["deadline_ms"] = json!(d);
        }
        self.request(id, method::PROGRAM_RUN, params);
    }

    fn count(&self, what: impl Fn(&Action) -> bool) -> usize {
        self.log.iter().filter(|a| what(a)).count()
    }
}

fn program() -> Value {
    json!({
        "format": 1, "recipe": null, "lab": "paper-lab", "variables": {},
        "steps": [], "estimated_duration_ms": 0
    })
}

fn records(wire: &[Message]) -> Vec<u64> {
    wire.iter()
        .filter_map(|m| match m {
            Message::Notification(n) if n.method == method::RECORD => {
                let p: RecordParams = serde_json::from_value(n.params.clone()).unwrap();
                assert_eq!(p.epoch, EPOCH);
                Some(p.seq)
            }
            _ => None,
        })
        .collect()
}

fn responses(wire: &[Message]) -> Vec<&Response> {
    wire.iter()
        .filter_map(|m| match m {
            Message::Response(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn notifications<'a>(wire: &'a [Message], name: &str) -> Vec<&'a Notification> {
    wire.iter()
        .filter_map(|m| match m {
            Message::Notification(n) if n.method == name => Some(n),
            _ => None,
        })
        .collect()
}

fn error_code_of(r: &Response) -> Option<i64> {
    r.error.as_ref().map(|e| e.code)
}

fn is_connect(a: &Action) -> bool {
    matches!(a, Action::Connect)
}

fn is_link_loss(a: &Action) -> bool {
    matches!(a, Action::ApplyLinkLoss)
}

// ---- connecting, hello and backoff ----------------------------------------------------------

#[test]
fn the_first_attempt_starts_at_once_and_hello_announces_the_running_programs() {
    let mut h = Harness::new(true);
    h.start();
    assert_eq!(h.log, [Action::Connect]);
    h.connect_succeeds();
    let Some(Message::Request(hello)) = h.wire.first() else {
        panic!("hello first: {:?}", h.wire);
    };
    assert_eq!(
        (hello.id.clone(), hello.method.as_str()),
        (Id::Number(1), method::HELLO)
    );
    assert!(!h.state.is_up(), "up only once hello is answered");
    h.welcome();
    assert!(h.state.is_up());
    assert_eq!(h.count(|a| matches!(a, Action::LinkRestored)), 1);

    // A program accepted on this connection is announced in the next hello.
    h.run_program(5, "run-1", None);
    h.event(Event::Closed(Closure::Ended));
    h.reconnect();
    let Some(Message::Request(hello)) = h.wire.first() else {
        panic!("hello first: {:?}", h.wire);
    };
    let params: HelloParams = serde_json::from_value(hello.params.clone()).unwrap();
    assert_eq!(params.running, ["run-1"]);
}

#[test]
fn a_failed_attempt_applies_the_link_loss_policy_then_waits_the_backoff_before_the_next() {
    let mut h = Harness::new(true);
    h.start();
    h.connect_fails(ConnectFailure::Failed(
        "connect failed: connection refused".into(),
    ));
    assert_eq!(h.log[1..], [Action::Disconnect, Action::ApplyLinkLoss]);
    assert_eq!(
        h.state.last_loss(),
        Some("connect failed: connection refused")
    );
    // The first delay's ceiling is the base itself.
    assert_eq!(h.state.next_deadline(), Some(h.now + BASE));
    h.run_for(BASE.as_millis() as u64 - 1);
    assert_eq!(h.count(is_connect), 1, "no retry before the delay");
    h.run_for(1);
    assert_eq!(h.count(is_connect), 2);
}

#[test]
fn backoff_grows_with_jitter_up_to_the_cap_and_a_successful_hello_resets_it() {
    for seed in 0..20 {
        let mut h = Harness::with_seed(false, seed);
        h.start();
        let mut delays = Vec::new();
        for attempt in 0..12u32 {
            h.connect_fails(ConnectFailure::Failed("refused".into()));
            let delay = h.state.next_deadline().unwrap() - h.now;
            let ceiling = BASE.saturating_mul(1u32 << attempt).min(CAP);
            assert!(
                delay >= BASE && delay <= ceiling,
                "seed {seed} attempt {attempt}: {delay:?} not in [{BASE:?}, {ceiling:?}]"
            );
            delays.push(delay);
            h.run_for(delay.as_millis() as u64);
        }
        assert!(
            delays.iter().any(|d| *d > BASE * 4),
            "seed {seed}: the ceiling grows: {delays:?}"
        );
        assert!(
            delays.windows(2).any(|w| w[0] != w[1]),
            "seed {seed}: jittered: {delays:?}"
        );
        h.connect_succeeds();
        h.welcome();
        h.event(Event::Closed(Closure::Ended));
        assert_eq!(
            h.state.next_deadline(),
            Some(h.now + BASE),
            "seed {seed}: reset by the successful hello"
        );
    }
}

#[test]
fn a_refused_credential_ends_the_link_but_other_http_answers_are_retried() {
    for status in [401, 403] {
        let mut h = Harness::new(true);
        h.start();
        h.connect_fails(ConnectFailure::Http {
            status,
            text: format!("{status}"),
        });
        assert_eq!(h.exit, Some(Exit::Refused(status)));
        assert_eq!(h.count(is_link_loss), 0);
        assert_eq!(h.state.next_deadline(), None, "no retry");
    }
    let mut h = Harness::new(true);
    h.start();
    h.connect_fails(ConnectFailure::Http {
        status: 502,
        text: "502 Bad Gateway".into(),
    });
    assert_eq!(h.exit, None);
    assert_eq!(
        h.state.last_loss(),
        Some("server answered HTTP 502 Bad Gateway")
    );
    h.run_for(BASE.as_millis() as u64);
    assert_eq!(h.count(is_connect), 2);
}

#[test]
fn an_attempt_that_does_not_connect_in_time_is_abandoned_and_retried() {
    let mut h = Harness::new(true);
    h.start();
    h.run_for(CONNECT_TIMEOUT.as_millis() as u64 - 1);
    assert!(h.connecting);
    h.run_for(1);
    assert!(!h.connecting, "the attempt is dropped");
    assert_eq!(h.state.last_loss(), Some("connect timed out"));
    // A late success of the abandoned attempt is not taken for a connection.
    h.open = true;
    h.event(Event::Connected { descriptor: None });
    assert_eq!(
        h.count(|a| matches!(a, Action::Send { .. })),
        0,
        "no hello on it"
    );
    assert!(!h.open, "dropped");
    h.run_for(BASE.as_millis() as u64);
    assert_eq!(h.count(is_connect), 2);
}

#[test]
fn hello_unanswered_in_time_refused_or_malformed_is_a_lost_link() {
    let mut h = Harness::new(true);
    h.start();
    h.connect_succeeds();
    // Frames that are not hello's answer are ignored.
    h.raw(r#"{"jsonrpc":"2.0","id":2,"result":{}}"#);
    h.raw("not json");
    h.ack(1);
    assert!(h.open && !h.state.is_up());
    h.run_for(CONNECT_TIMEOUT.as_millis() as u64);
    assert_eq!(h.state.last_loss(), Some("no answer to hello"));
    assert!(!h.open);

    h.reconnect_without_welcome();
    h.text(&Message::error(Some(Id::Number(1)), -32000, "unknown lab"));
    assert_eq!(h.state.last_loss(), Some("hello refused: unknown lab"));

    h.reconnect_without_welcome();
    h.raw(r#"{"jsonrpc":"2.0","id":1,"result":{"lab_id":3}}"#);
    assert!(h
        .state
        .last_loss()
        .unwrap()
        .starts_with("malformed hello result"));

    h.reconnect_without_welcome();
    h.event(Event::Closed(Closure::Ended));
    assert_eq!(h.state.last_loss(), Some("connection closed before hello"));
    assert_eq!(h.count(is_link_loss), 4);
}

impl Harness {
    fn reconnect_without_welcome(&mut self) {
        self.run_for(CAP.as_millis() as u64 + 1);
        self.connect_succeeds();
    }
}

#[test]
fn a_hello_that_cannot_be_sent_is_a_lost_link() {
    let mut h = Harness::new(true);
    h.start();
    h.broken = true;
    h.connect_succeeds();
    assert!(h.state.last_loss().unwrap().starts_with("hello not sent"));
    assert!(!h.open);
}

// ---- deadlines --------------------------------------------------------------------------------

#[test]
fn three_silent_heartbeat_periods_are_a_dead_link() {
    let mut h = Harness::up(true);
    let up_at = h.ms();
    h.run_until(up_at + 3 * HEARTBEAT_MS - 1);
    assert!(h.state.is_up(), "alive just before the window ends");
    assert_eq!(
        notifications(&h.wire, method::HEARTBEAT).len(),
        2,
        "our heartbeats do not count"
    );
    h.run_until(up_at + 3 * HEARTBEAT_MS);
    assert!(!h.state.is_up());
    assert_eq!(
        h.state.last_loss(),
        Some("no traffic from the server for 3000 ms")
    );
    assert_eq!(h.count(is_link_loss), 1);
    assert!(!h.open, "the dead connection is dropped");
}

#[test]
fn any_frame_from_the_cloud_restarts_the_dead_link_window() {
    let mut h = Harness::up(true);
    h.run_for(2500);
    h.event(Event::Frame(Incoming::Other)); // a ping
    h.run_for(2999);
    assert!(h.state.is_up());
    h.raw(r#"{"jsonrpc":"2.0","method":"heartbeat","params":{"time_ms":0}}"#);
    h.run_for(2999);
    assert!(h.state.is_up());
    h.run_for(1);
    assert!(!h.state.is_up());
}

#[test]
fn a_heartbeat_goes_out_every_period_with_the_wall_clock() {
    let mut h = Harness::up(true);
    for _ in 0..10 {
        h.run_for(HEARTBEAT_MS);
        h.event(Event::Frame(Incoming::Other));
    }
    let beats = notifications(&h.wire, method::HEARTBEAT);
    assert_eq!(beats.len(), 10);
    let times: Vec<i64> = beats
        .iter()
        .map(|n| n.params["time_ms"].as_i64().unwrap())
        .collect();
    let expected: Vec<i64> = (1..=10).map(|i| WALL_START + i * 1000).collect();
    assert_eq!(times, expected);
}

#[test]
fn a_heartbeat_that_cannot_be_sent_is_a_lost_link() {
    let mut h = Harness::up(true);
    h.broken = true;
    h.run_for(HEARTBEAT_MS);
    assert!(h
        .state
        .last_loss()
        .unwrap()
        .starts_with("heartbeat not sent"));
    assert!(!h.state.is_up());
}

#[test]
fn the_cloud_closing_or_breaking_the_link_is_a_lost_link() {
    let mut h = Harness::up(true);
    h.event(Event::Frame(Incoming::Close("Some(normal)".into())));
    assert_eq!(
        h.state.last_loss(),
        Some("server closed the link: Some(normal)")
    );
    h.reconnect();
    h.event(Event::Closed(Closure::Error("connection reset".into())));
    assert_eq!(h.state.last_loss(), Some("link error: connection reset"));
    h.reconnect();
    h.event(Event::Closed(Closure::Ended));
    assert_eq!(h.state.last_loss(), Some("link closed"));
    assert_eq!(h.count(is_link_loss), 3);
    assert_eq!(h.count(|a| matches!(a, Action::LinkRestored)), 3);
}

// ---- records and acknowledgements ------------------------------------------------------------

#[test]
fn acknowledged_records_are_deleted_and_unacknowledged_ones_kept() {
    let mut h = Harness::up(true);
    h.spool_records(5);
    h.run_for(1);
    assert_eq!(records(&h.wire), [1, 2, 3, 4, 5]);
    h.ack(3);
    assert_eq!(h.spool.records.keys().copied().collect::<Vec<_>>(), [4, 5]);
    // Another epoch's acknowledgement and a malformed one delete nothing.
    h.text(&Message::notification(
        method::ACK,
        AckParams {
            epoch: "other".into(),
            seq_hi: 5,
        },
    ));
    h.raw(r#"{"jsonrpc":"2.0","method":"ack","params":{"seq_hi":"x"}}"#);
    assert_eq!(h.spool.records.keys().copied().collect::<Vec<_>>(), [4, 5]);
    assert_eq!(h.count(|a| matches!(a, Action::AckSpool { .. })), 1);
    // Sent once per connection: nothing is sent again while the link holds.
    h.run_for(500);
    assert_eq!(records(&h.wire), [1, 2, 3, 4, 5]);
    h.ack(5);
    assert!(h.spool.records.is_empty());
}

#[test]
fn a_backlog_drains_in_order_at_a_bounded_rate() {
    let mut h = Harness::up(true);
    h.spool_records(300);
    h.run_for(0);
    assert_eq!(
        records(&h.wire),
        (1..=128).collect::<Vec<_>>(),
        "one batch at once"
    );
    h.run_for(DRAIN_INTERVAL.as_millis() as u64 - 1);
    assert_eq!(records(&h.wire).len(), 128, "not before the interval");
    h.run_for(1);
    assert_eq!(records(&h.wire).len(), 256);
    h.run_for(DRAIN_INTERVAL.as_millis() as u64);
    assert_eq!(records(&h.wire), (1..=300).collect::<Vec<_>>());
    // Idle once drained: the next deadline is the heartbeat, not the drain.
    assert_eq!(
        h.state.next_deadline(),
        Some(h.start + Duration::from_millis(HEARTBEAT_MS))
    );
}

#[test]
fn records_spooled_while_offline_are_sent_once_connected() {
    let mut h = Harness::new(true);
    h.start();
    h.connect_fails(ConnectFailure::Failed("down".into()));
    h.spool_records(3);
    h.run_for(BASE.as_millis() as u64);
    h.connect_succeeds();
    h.spool_records(2);
    assert!(
        records(&h.wire).is_empty(),
        "nothing before hello is answered"
    );
    h.welcome();
    h.run_for(0);
    assert_eq!(records(&h.wire), [1, 2, 3, 4, 5]);
}

#[test]
fn after_a_reconnect_everything_unacknowledged_is_sent_again_in_order() {
    let mut h = Harness::up(true);
    h.spool_records(10);
    h.run_for(0);
    h.ack(4);
    h.event(Event::Closed(Closure::Error("reset".into())));
    h.spool_records(2);
    h.reconnect();
    h.run_for(0);
    assert_eq!(records(&h.old_wires[0]), (1..=10).collect::<Vec<_>>());
    assert_eq!(records(&h.wire), (5..=12).collect::<Vec<_>>());
}

/// Many connections broken at random points of a stream, with the cloud storing and
/// acknowledging what reached it at random moments: every record is stored, the stored seqs
/// stay contiguous (nothing skipped), each connection carries its records in increasing order
/// and each once, starting exactly at the first unacknowledged one (nothing acknowledged is
/// sent again).
#[test]
fn replay_across_random_link_losses_loses_duplicates_and_reorders_nothing() {
    let mut rng = StdRng::seed_from_u64(42);
    let mut h = Harness::up(true);
    // What the cloud stored (its delivery key is unique: a replay is stored once).
    let mut stored: BTreeSet<u64> = BTreeSet::new();
    // Frames of the current connection the cloud has read.
    let mut read = 0;
    let mut losses = 0;
    let store = |h: &mut Harness, read: &mut usize, stored: &mut BTreeSet<u64>| {
        stored.extend(records(&h.wire[*read..]));
        *read = h.wire.len();
        let hi = stored.last().copied().unwrap_or(0);
        assert_eq!(
            stored.len() as u64,
            hi,
            "stored seqs are contiguous from 1: nothing skipped"
        );
        hi
    };
    for _ in 0..400 {
        match rng.random_range(0..10) {
            0..=3 => h.spool_records(rng.random_range(1..40)),
            4..=6 => h.run_for(rng.random_range(0..30)),
            7 | 8 => {
                let hi = store(&mut h, &mut read, &mut stored);
                if hi > 0 {
                    h.ack(hi);
                }
            }
            _ => {
                // Whatever the cloud had not read yet is lost with the connection.
                h.event(Event::Closed(Closure::Error("reset".into())));
                losses += 1;
                h.reconnect();
                read = 0;
                let first_unacknowledged = h.spool.records.keys().next().copied();
                h.run_for(0);
                assert_eq!(records(&h.wire).first().copied(), first_unacknowledged);
            }
        }
    }
    // The end of the stream drains on a last, healthy connection.
    h.run_for(1000);
    let hi = store(&mut h, &mut read, &mut stored);
    h.ack(hi);
    let written = h.spool.written;
    assert!(
        losses > 10 && written > 1000,
        "{losses} losses, {written} records"
    );
    assert_eq!(
        stored,
        (1..=written).collect::<BTreeSet<_>>(),
        "nothing lost"
    );
    assert!(h.spool.records.is_empty(), "all acknowledged and deleted");
    for wire in h.old_wires.iter().chain([&h.wire]) {
        let seqs = records(wire);
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "in order, each once per connection: {seqs:?}"
        );
    }
}

#[test]
fn a_spool_that_cannot_be_read_is_a_lost_link() {
    let mut h = Harness::up(true);
    h.spool.unreadable = true;
    h.spool_records(1);
    h.run_for(0);
    assert_eq!(
        h.state.last_loss(),
        Some("spool unreadable: disk I/O error")
    );
}

#[test]
fn a_throttle_holds_records_back_then_sends_again_from_the_first_unacknowledged() {
    let mut h = Harness::up(true);
    h.spool_records(5);
    h.run_for(0);
    h.ack(2);
    h.text(&Message::notification(
        method::THROTTLE,
        ThrottleParams {
            retry_after_ms: 500,
            reason: "records_per_second".into(),
        },
    ));
    let before = records(&h.wire).len();
    h.spool_records(3);
    h.event(Event::Frame(Incoming::Other));
    h.run_for(499);
    assert_eq!(records(&h.wire).len(), before, "held back during the pause");
    h.run_for(21);
    assert_eq!(records(&h.wire)[before..], [3, 4, 5, 6, 7, 8]);
}

// ---- answers ------------------------------------------------------------------------------------

#[test]
fn the_answer_that_ends_a_program_goes_after_every_spooled_record_at_once() {
    let mut h = Harness::up(true);
    h.run_program(7, "run-1", None);
    h.spool_records(300);
    // No time passes: the answer does not wait for the drain rate.
    h.event(Event::Reply {
        message: Message::result(Id::Number(7), json!({ "outcome": "succeeded" })),
        finished: Some("run-1".into()),
    });
    let at = h
        .wire
        .iter()
        .position(|m| matches!(m, Message::Response(r) if r.id == Some(Id::Number(7))))
        .expect("answered");
    assert_eq!(records(&h.wire[..at]), (1..=300).collect::<Vec<_>>());
    assert!(records(&h.wire[at..]).is_empty());
    assert_eq!(h.state.running().count(), 0, "the run ended");
}

#[test]
fn an_answer_not_written_before_a_loss_goes_first_on_the_next_connection() {
    let mut h = Harness::up(true);
    h.spool_records(2);
    h.run_for(0);
    h.broken = true;
    h.event(Event::Reply {
        message: Message::result(Id::Number(9), json!({ "ok": true })),
        finished: None,
    });
    h.event(Event::Closed(Closure::Error("reset".into())));
    h.broken = false;
    assert!(h.old_wires[0]
        .iter()
        .all(|m| !matches!(m, Message::Response(_))));
    // Answers made while offline queue behind it.
    h.event(Event::Reply {
        message: Message::result(Id::Number(10), json!({ "ok": true })),
        finished: None,
    });
    h.reconnect();
    h.run_for(0);
    let ids: Vec<_> = responses(&h.wire).iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids, [Some(Id::Number(9)), Some(Id::Number(10))]);
    // Right after hello, before any record.
    let first_after_hello = &h.wire[1];
    assert!(matches!(first_after_hello, Message::Response(r) if r.id == Some(Id::Number(9))));
    assert_eq!(records(&h.wire), [1, 2]);
}

#[test]
fn an_immediate_reply_is_not_sent_again_on_the_next_connection() {
    let mut h = Harness::up(false);
    h.broken = true;
    h.request(4, method::PROGRAM_CANCEL, json!({ "program_id": "x" }));
    assert!(!h.state.is_up());
    h.broken = false;
    h.reconnect();
    h.run_for(0);
    assert!(responses(&h.wire).is_empty(), "{:?}", h.wire);
}

// ---- commands -----------------------------------------------------------------------------------

#[test]
fn a_program_run_is_remembered_durably_before_it_runs() {
    let mut h = Harness::up(true);
    h.run_program(3, "run-1", Some(WALL_START + 60_000));
    let accept = h
        .log
        .iter()
        .position(
            |a| matches!(a, Action::AcceptCommand { program_id, .. } if program_id == "run-1"),
        )
        .expect("accepted");
    let run = h
        .log
        .iter()
        .position(|a| matches!(a, Action::RunProgram { program_id, request, .. } if program_id == "run-1" && *request == Id::Number(3)))
        .expect("run");
    assert!(accept < run);
    assert!(h.spool.accepted.contains_key("run-1"));
    assert_eq!(h.state.running().collect::<Vec<_>>(), ["run-1"]);
    assert!(responses(&h.wire).is_empty(), "answered when it ends");
}

#[test]
fn a_duplicate_of_a_running_program_is_refused_as_already_running() {
    let mut h = Harness::up(true);
    h.run_program(3, "run-1", None);
    h.run_program(4, "run-1", None);
    let replies = responses(&h.wire);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].id, Some(Id::Number(4)));
    assert_eq!(
        error_code_of(replies[0]),
        Some(error_code::ALREADY_ACCEPTED)
    );
    assert!(replies[0]
        .error
        .as_ref()
        .unwrap()
        .message
        .contains("run-1 is already running"));
    assert_eq!(h.count(|a| matches!(a, Action::RunProgram { .. })), 1);
    assert_eq!(h.count(|a| matches!(a, Action::AcceptCommand { .. })), 1);
}

#[test]
fn a_duplicate_of_a_program_that_never_ended_here_is_refused_and_never_runs_again() {
    let mut h = Harness::up(true);
    // Accepted by an earlier run of the agent that stopped during it (the spool survives
    // restarts; no result was stored).
    h.spool.accepted.insert("run-1".into(), None);
    h.run_program(3, "run-1", None);
    let replies = responses(&h.wire);
    assert_eq!(
        error_code_of(replies[0]),
        Some(error_code::ALREADY_ACCEPTED)
    );
    assert!(replies[0]
        .error
        .as_ref()
        .unwrap()
        .message
        .contains("run-1 was already accepted"));
    assert_eq!(h.count(|a| matches!(a, Action::RunProgram { .. })), 0);
    assert_eq!(h.state.running().count(), 0);
}

/// The program's task stores its result in the spool before the answer exists.
fn end_run(h: &mut Harness, request: i64, program_id: &str, result: Value) {
    h.spool
        .accepted
        .insert(program_id.into(), Some(result.clone()));
    h.event(Event::Reply {
        message: Message::result(Id::Number(request), result),
        finished: Some(program_id.into()),
    });
}

#[test]
fn a_duplicate_of_an_ended_program_is_answered_with_its_stored_result_and_never_runs_again() {
    let mut h = Harness::up(true);
    let report = json!({ "outcome": "succeeded", "steps_succeeded": 2, "steps_total": 2 });
    h.run_program(4, "run-2", None);
    end_run(&mut h, 4, "run-2", report.clone());
    // Its answer was lost (say); the cloud sends the run again, twice, on a new connection.
    h.event(Event::Closed(Closure::Error("reset".into())));
    h.reconnect();
    h.run_program(5, "run-2", None);
    h.run_program(6, "run-2", None);
    let answers: Vec<_> = responses(&h.wire)
        .iter()
        .filter(|r| r.id != Some(Id::Number(4)))
        .map(|r| (r.id.clone(), r.result.clone(), r.error.clone()))
        .collect();
    assert_eq!(
        answers,
        [
            (Some(Id::Number(5)), Some(report.clone()), None),
            (Some(Id::Number(6)), Some(report), None),
        ]
    );
    assert_eq!(
        h.count(|a| matches!(a, Action::RunProgram { .. })),
        1,
        "run exactly once"
    );
    assert_eq!(h.state.running().count(), 0);
}

#[test]
fn a_stored_result_goes_after_every_spooled_record_like_the_first_answer() {
    let mut h = Harness::up(true);
    h.run_program(4, "run-2", None);
    end_run(&mut h, 4, "run-2", json!({ "outcome": "failed" }));
    h.event(Event::Closed(Closure::Error("reset".into())));
    // The run's records (and more) still wait in the spool when the re-send arrives.
    h.spool_records(200);
    h.reconnect();
    h.run_program(5, "run-2", None);
    let at = h
        .wire
        .iter()
        .position(|m| matches!(m, Message::Response(r) if r.id == Some(Id::Number(5))))
        .expect("answered");
    assert_eq!(records(&h.wire[..at]), (1..=200).collect::<Vec<_>>());
}

#[test]
fn a_program_past_its_deadline_never_starts_and_is_not_remembered() {
    let mut h = Harness::up(true);
    h.run_program(3, "late", Some(WALL_START - 1));
    let replies = responses(&h.wire);
    assert_eq!(error_code_of(replies[0]), Some(error_code::DEADLINE_PASSED));
    assert_eq!(h.count(|a| matches!(a, Action::AcceptCommand { .. })), 0);
    assert!(h.spool.accepted.is_empty());
    // Accepted before its deadline, re-sent after it: the re-send learns it was accepted
    // (refused while it never ended here, its stored result once it did).
    h.spool.accepted.insert("early".into(), None);
    h.run_program(4, "early", Some(WALL_START - 1));
    let last = *responses(&h.wire).last().unwrap();
    assert_eq!(error_code_of(last), Some(error_code::ALREADY_ACCEPTED));
    h.spool
        .accepted
        .insert("ended".into(), Some(json!({ "outcome": "succeeded" })));
    h.run_program(5, "ended", Some(WALL_START - 1));
    let last = *responses(&h.wire).last().unwrap();
    assert_eq!(last.result, Some(json!({ "outcome": "succeeded" })));
    assert_eq!(h.count(|a| matches!(a, Action::RunProgram { .. })), 0);
}

#[test]
fn a_program_that_cannot_be_recorded_durably_is_refused() {
    let mut h = Harness::up(true);
    h.spool.unwritable = true;
    h.run_program(3, "run-1", None);
    let replies = responses(&h.wire);
    assert_eq!(error_code_of(replies[0]), Some(error_code::INTERNAL_ERROR));
    assert_eq!(h.count(|a| matches!(a, Action::RunProgram { .. })), 0);
    assert_eq!(h.state.running().count(), 0);
}

#[test]
fn malformed_program_runs_are_refused_with_invalid_params() {
    let mut h = Harness::up(true);
    h.request(1, method::PROGRAM_RUN, json!({}));
    h.request(
        2,
        method::PROGRAM_RUN,
        json!({ "program_id": "p", "program": { "steps": 3 } }),
    );
    h.request(
        3,
        method::PROGRAM_RUN,
        json!({ "program_id": "p", "program": program(), "link_loss": "panic" }),
    );
    let codes: Vec<_> = responses(&h.wire)
        .iter()
        .map(|r| error_code_of(r))
        .collect();
    assert_eq!(codes, [Some(error_code::INVALID_PARAMS); 3]);
    assert_eq!(h.count(|a| matches!(a, Action::AcceptCommand { .. })), 0);
}

#[test]
fn cancel_reaches_running_programs_only_and_estop_cancels_all() {
    let mut h = Harness::up(true);
    h.run_program(1, "run-1", None);
    h.request(2, method::PROGRAM_CANCEL, json!({ "program_id": "run-1" }));
    h.request(3, method::PROGRAM_CANCEL, json!({ "program_id": "other" }));
    let canceled: Vec<_> = responses(&h.wire)
        .iter()
        .map(|r| r.result.as_ref().unwrap()["canceled"].clone())
        .collect();
    assert_eq!(canceled, [json!(true), json!(false)]);
    assert_eq!(
        h.count(|a| matches!(a, Action::CancelProgram { program_id } if program_id == "run-1")),
        1
    );
    h.request(4, method::ESTOP, json!({}));
    let n = h.log.len();
    assert_eq!(
        h.log[n - 2..],
        [
            Action::CancelAll,
            Action::Estop {
                request: Id::Number(4)
            }
        ]
    );
    h.request(5, method::DEVICE_CALL, json!({ "method": "H.read" }));
    assert!(
        matches!(h.log.last(), Some(Action::DeviceCall { request, params }) if *request == Id::Number(5) && params.method == "H.read")
    );
}

#[test]
fn a_fault_reset_names_who_and_why_and_cancels_nothing() {
    let mut h = Harness::up(true);
    h.run_program(1, "run-1", None);
    let before = h.log.len();
    h.request(
        2,
        method::SAFETY_RESET,
        json!({ "actor": "user:7", "reason": "thermocouple replaced" }),
    );
    assert_eq!(
        h.log[before..],
        [Action::SafetyReset {
            request: Id::Number(2),
            params: SafetyResetParams {
                actor: "user:7".into(),
                reason: "thermocouple replaced".into(),
            },
        }]
    );
    // Without who and why, it is refused as invalid.
    h.request(3, method::SAFETY_RESET, json!({}));
    let last = responses(&h.wire).pop().unwrap();
    assert_eq!(
        last.error.as_ref().unwrap().code,
        error_code::INVALID_PARAMS
    );
}

#[test]
fn requests_without_a_lab_and_malformed_frames_get_error_replies() {
    let mut h = Harness::up(false);
    h.run_program(3, "p", None);
    h.raw(r#"{"jsonrpc":"2.0","method":"ping"}"#);
    h.raw("{");
    h.request(4, "no.such", json!({}));
    let codes: Vec<_> = responses(&h.wire)
        .iter()
        .map(|r| (r.id.clone(), error_code_of(r)))
        .collect();
    assert_eq!(
        codes,
        [
            (Some(Id::Number(3)), Some(error_code::METHOD_NOT_FOUND)),
            (None, Some(error_code::PARSE_ERROR)),
            (Some(Id::Number(4)), Some(error_code::METHOD_NOT_FOUND)),
        ]
    );
    assert_eq!(h.count(|a| matches!(a, Action::AcceptCommand { .. })), 0);
}

// ---- stopping -----------------------------------------------------------------------------------

#[test]
fn a_stop_when_connected_says_goodbye_and_waits_for_the_cloud_to_close() {
    let mut h = Harness::up(true);
    h.event(Event::Stop);
    assert!(matches!(h.wire.last(), Some(Message::Notification(n)) if n.method == method::GOODBYE));
    assert_eq!(h.log.last(), Some(&Action::Close));
    assert_eq!(h.exit, None, "waits for the close");
    h.event(Event::Frame(Incoming::Close("None".into())));
    let n = h.log.len();
    assert_eq!(
        h.log[n - 3..],
        [
            Action::Disconnect,
            Action::ApplyLinkLoss,
            Action::Exit(Exit::Stopped)
        ]
    );
    assert_eq!(h.count(is_connect), 1, "never reconnects");
}

#[test]
fn a_stop_when_the_cloud_does_not_close_exits_after_the_grace() {
    let mut h = Harness::up(true);
    h.event(Event::Stop);
    h.run_for(GOODBYE_GRACE.as_millis() as u64 - 1);
    assert_eq!(h.exit, None);
    h.run_for(1);
    assert_eq!(h.exit, Some(Exit::Stopped));
    assert_eq!(h.count(is_link_loss), 1);
}

#[test]
fn a_stop_while_waiting_to_retry_exits_at_once_and_while_connecting_drops_the_attempt() {
    let mut h = Harness::new(true);
    h.start();
    h.connect_fails(ConnectFailure::Failed("down".into()));
    h.event(Event::Stop);
    assert_eq!(h.exit, Some(Exit::Stopped));
    assert_eq!(
        h.count(is_link_loss),
        1,
        "applied once, when the attempt failed"
    );

    let mut h = Harness::new(true);
    h.start();
    h.event(Event::Stop);
    assert!(!h.connecting);
    assert_eq!(h.exit, Some(Exit::Stopped));
    assert_eq!(h.count(is_link_loss), 1);
}

#[test]
fn a_stop_before_hello_is_answered_says_goodbye_once_it_is() {
    let mut h = Harness::new(true);
    h.start();
    h.connect_succeeds();
    h.event(Event::Stop);
    assert_eq!(h.exit, None);
    h.welcome();
    assert!(matches!(h.wire.last(), Some(Message::Notification(n)) if n.method == method::GOODBYE));
    h.event(Event::Closed(Closure::Ended));
    assert_eq!(h.exit, Some(Exit::Stopped));

    // And when hello fails instead, the agent exits rather than retrying.
    let mut h = Harness::new(true);
    h.start();
    h.connect_succeeds();
    h.event(Event::Stop);
    h.run_for(CONNECT_TIMEOUT.as_millis() as u64);
    assert_eq!(h.exit, Some(Exit::Stopped));
    assert_eq!(h.count(is_connect), 1);
}

// ---- send timeouts ------------------------------------------------------------------------------

impl Harness {
    /// The peer reads again: `n` blocked frames are written.
    fn unblock(&mut self, n: usize) {
        for _ in 0..n {
            if self.stuck.is_empty() {
                return;
            }
            let (id, message) = self.stuck.remove(0);
            self.wire.push(message);
            self.event(Event::SendCompleted(id));
        }
    }
}

#[test]
fn a_send_that_writes_nothing_for_three_periods_is_a_lost_link_even_while_frames_arrive() {
    let mut h = Harness::up(true);
    h.stalled = true;
    h.spool_records(5);
    h.run_for(0);
    assert_eq!(h.stuck.len(), 5);
    let blocked_at = h.now;
    assert_eq!(
        h.state.send_deadline(),
        Some(blocked_at + Duration::from_millis(3 * HEARTBEAT_MS))
    );
    // The cloud keeps talking (its frames could be read beside the blocked send).
    for _ in 0..5 {
        h.run_for(HEARTBEAT_MS / 2);
        h.event(Event::Frame(Incoming::Other));
    }
    assert!(h.state.is_up());
    h.run_until(3 * HEARTBEAT_MS - 1);
    assert!(h.state.is_up(), "not before the timeout");
    h.run_until(3 * HEARTBEAT_MS);
    assert_eq!(
        h.state.last_loss(),
        Some("send timed out: nothing written for 3000 ms")
    );
    assert!(!h.open);
    // The records wait in the spool and go out on the next connection.
    h.stalled = false;
    h.reconnect();
    h.run_for(0);
    assert_eq!(records(&h.wire), [1, 2, 3, 4, 5]);
}

#[test]
fn a_slow_send_that_keeps_writing_is_not_a_timeout() {
    let mut h = Harness::up(true);
    h.stalled = true;
    h.spool_records(20);
    h.run_for(0);
    // One frame written every 2 s (each under the 3 s timeout), the cloud talking meanwhile.
    for _ in 0..10 {
        h.run_for(2000);
        h.event(Event::Frame(Incoming::Other));
        h.unblock(1);
    }
    assert!(h.state.is_up(), "{:?}", h.state.last_loss());
    assert_eq!(records(&h.wire), (1..=10).collect::<Vec<_>>());
    // The deadline follows the last progress.
    assert_eq!(
        h.state.send_deadline(),
        Some(h.now + Duration::from_millis(3 * HEARTBEAT_MS))
    );
}

#[test]
fn a_send_abandoned_at_its_deadline_is_a_lost_link_and_its_answer_is_kept() {
    let mut h = Harness::up(true);
    h.stalled = true;
    h.event(Event::Reply {
        message: Message::result(Id::Number(8), json!({ "ok": true })),
        finished: None,
    });
    let (id, _) = h.stuck[0].clone();
    // The loop gives up on the blocked send when the deadline passes; nothing was heard from
    // the cloud either, so the dead-link reason is the one given.
    let deadline = h.state.send_deadline().unwrap();
    assert_eq!(deadline, h.now + Duration::from_millis(3 * HEARTBEAT_MS));
    h.now = deadline;
    h.event(Event::SendTimedOut(id));
    assert_eq!(
        h.state.last_loss(),
        Some("no traffic from the server for 3000 ms")
    );
    assert!(!h.open);
    h.stalled = false;
    h.reconnect();
    assert!(
        matches!(&h.wire[1], Message::Response(r) if r.id == Some(Id::Number(8))),
        "the answer goes first on the next connection: {:?}",
        h.wire
    );
}

#[test]
fn sends_before_hello_and_after_goodbye_are_bounded_too() {
    let mut h = Harness::new(true);
    h.start();
    h.stalled = true;
    h.connect_succeeds();
    assert_eq!(h.state.send_deadline(), Some(h.now + CONNECT_TIMEOUT));
    let (hello, _) = h.stuck[0].clone();
    h.now = h.state.send_deadline().unwrap();
    h.event(Event::SendTimedOut(hello));
    assert_eq!(h.state.last_loss(), Some("no answer to hello"));

    let mut h = Harness::up(true);
    h.stalled = true;
    h.event(Event::Stop);
    assert_eq!(h.state.send_deadline(), Some(h.now + GOODBYE_GRACE));
    let (goodbye, _) = h.stuck[0].clone();
    h.now = h.state.send_deadline().unwrap();
    h.event(Event::SendTimedOut(goodbye));
    assert_eq!(h.exit, Some(Exit::Stopped));
}
