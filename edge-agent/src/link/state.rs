//! The link protocol as a state machine without I/O, in the manner of rumqttc's `state.rs`:
//! [`LinkState`] consumes [`Event`]s (a connection came up, a frame arrived, a send completed,
//! time passed, the spool answered, …) and returns the [`Action`]s the event loop in
//! [`super`] performs (send a frame, read or acknowledge the spool, run a program, drop the
//! connection, …). It never touches a socket, a file, a task or a clock: the time is passed in
//! with every event ([`Now`]), and [`LinkState::next_deadline`] says when to call back with
//! [`Event::Tick`].
//!
//! The protocol rules it owns (docs/reliability.md rules 1, 3 and 5):
//! - connect, say `hello` (id 1) with the lab's devices and the programs still running, and
//!   treat the connection as up only once the cloud answered it; give up for good when the
//!   cloud refuses the credential (HTTP 401/403), retry anything else after a full-jitter
//!   exponential backoff that a successful `hello` resets;
//! - records are sent from the spool only, in `(epoch, seq)` order, at most [`DRAIN_BATCH`] per
//!   [`DRAIN_INTERVAL`] so heartbeats and live traffic are not starved; on every new connection
//!   (and after a `throttle` pause) everything the cloud has not acknowledged is sent again,
//!   from the first; an `ack` of this spool's epoch deletes the records up to its `seq_hi`;
//! - the answer that ends a program goes after every record the spool holds (the program's
//!   records are spooled before its answer exists); answers that could not be sent wait for
//!   the next connection and go first on it;
//! - a heartbeat every period; three periods without a frame from the cloud is a dead link,
//!   and so is a send that writes nothing for three periods (a peer that stops reading fills
//!   the socket's buffers: the send blocks, and [`LinkState::send_deadline`] bounds it);
//! - a `program.run` is remembered durably before it runs, so a re-sent id never runs twice:
//!   it is answered with the result the spool stored when the run ended (the first answer may
//!   have been lost), or refused as `ALREADY_ACCEPTED` while it runs or when it never ended
//!   here; a run past its deadline never starts.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use maosic_lab::config::LinkLossPolicy;
use maosic_schema::capability::LabDescriptor;
use maosic_schema::program::Program;
use maosic_schema::protocol::{
    error_code, method, AckParams, DeviceCallParams, DeviceSummary, GoodbyeParams, HeartbeatParams,
    HelloParams, HelloResult, Id, Message, ProgramCancelParams, ProgramRunParams, RecordParams,
    Request, SafetyResetParams, ThrottleParams,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::json;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::spool::{Acceptance, KnownCommand, Spooled};

#[cfg(test)]
mod tests;

/// Most spooled records sent per turn, so a backlog drains at a bounded rate and heartbeats and
/// live traffic are not starved (docs/reliability.md rule 3).
pub const DRAIN_BATCH: u32 = 128;

/// Time between two drains of the spool while records wait.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(20);

/// How long a clean shutdown waits for the cloud's close frame after `goodbye`.
pub const GOODBYE_GRACE: Duration = Duration::from_secs(1);

/// Heartbeat periods without a frame from the cloud after which the link is dead.
pub const DEAD_AFTER_PERIODS: u32 = 3;

/// The shortest heartbeat period the agent accepts from the cloud.
const MIN_PERIOD: Duration = Duration::from_millis(50);

/// The id of the agent's `hello` request on every connection.
const HELLO_ID: i64 = 1;

/// The moment an event happens: the monotonic instant (timers) and the wall clock (deadlines
/// of commands, heartbeat contents), both read by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time.
    pub at: Instant,
    /// Milliseconds since the Unix epoch.
    pub unix_ms: i64,
}

/// Settings of the state machine.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The epoch of the spool: acknowledgements of other epochs are ignored.
    pub epoch: String,
    /// Whether the agent runs a lab (without one, requests are answered "not offered").
    pub has_lab: bool,
    /// First reconnect delay.
    pub backoff_base: Duration,
    /// Largest reconnect delay.
    pub backoff_cap: Duration,
    /// Time allowed to connect, and then again for the answer to `hello`.
    pub connect_timeout: Duration,
}

/// Identifies one [`Action::Send`], so its completion can be reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SendId(pub u64);

/// Why a connection attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The server answered the WebSocket upgrade with an HTTP status (`text` is its display
    /// form, e.g. `502 Bad Gateway`).
    Http {
        /// The status code.
        status: u16,
        /// The status as displayed.
        text: String,
    },
    /// Anything else (TCP, TLS, SSH, the WebSocket handshake), as a reason to log.
    Failed(String),
}

/// One frame from the cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A text frame.
    Text(String),
    /// A close frame (its display form).
    Close(String),
    /// Ping, pong or binary: traffic, nothing to handle.
    Other,
}

/// How the socket's incoming side ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closure {
    /// A transport or protocol error.
    Error(String),
    /// The stream ended.
    Ended,
}

/// Why the link ended for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// A stop was asked for (and `goodbye` said when connected).
    Stopped,
    /// The server refused the credential with this HTTP status: retrying cannot help.
    Refused(u16),
}

/// What happens to the link; the time comes with each event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Time passed (at or after [`LinkState::next_deadline`]).
    Tick,
    /// A stop was asked for.
    Stop,
    /// The transport and the WebSocket handshake of an [`Action::Connect`] succeeded; `hello`
    /// announces `descriptor`.
    Connected {
        /// The lab's capability descriptor, if known.
        descriptor: Option<LabDescriptor>,
    },
    /// The connection attempt failed.
    ConnectFailed(ConnectFailure),
    /// A frame arrived from the cloud.
    Frame(Incoming),
    /// The incoming side of the socket ended.
    Closed(Closure),
    /// An [`Action::Send`] was written to the socket.
    SendCompleted(SendId),
    /// An [`Action::Send`] failed.
    SendFailed(SendId, String),
    /// An [`Action::Send`] was abandoned at [`LinkState::send_deadline`] (the connection
    /// must be dropped: the frame may be half written).
    SendTimedOut(SendId),
    /// The lab's records were written to the spool: there is something to send.
    RecordsSpooled,
    /// The answer to a request the lab's tasks worked on; `finished` names the program run it
    /// ends.
    Reply {
        /// The answer.
        message: Message,
        /// The program run that ended with it, if any.
        finished: Option<String>,
    },
    /// The answer to [`Action::ReadSpool`].
    SpoolRead(Result<Vec<Spooled>, String>),
    /// The answer to [`Action::LookUpCommand`]: the id as accepted before, if it was.
    CommandLookedUp {
        /// The program run.
        program_id: String,
        /// What the spool knows of it (or why it could not say).
        known: Result<Option<KnownCommand>, String>,
    },
    /// The answer to [`Action::AcceptCommand`].
    CommandAccepted {
        /// The program run.
        program_id: String,
        /// Newly accepted, or known before with its result (or why it could not be recorded).
        acceptance: Result<Acceptance, String>,
    },
    /// [`Action::ApplyLinkLoss`] is done.
    LinkLossApplied,
}

/// What the event loop must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Open a connection (transport + WebSocket handshake with the credential); report
    /// [`Event::Connected`] or [`Event::ConnectFailed`].
    Connect,
    /// Write a frame; report [`Event::SendCompleted`] or [`Event::SendFailed`], or give up at
    /// [`LinkState::send_deadline`] and report [`Event::SendTimedOut`] (nothing when there is
    /// no connection any more).
    Send {
        /// Reported back with the outcome.
        id: SendId,
        /// The frame.
        message: Message,
    },
    /// Drop the connection (or the attempt) without a word.
    Disconnect,
    /// Send a close frame (giving up at [`LinkState::send_deadline`]) and keep reading until
    /// the cloud closes too.
    Close,
    /// Read up to `limit` spooled records after `after`; report [`Event::SpoolRead`].
    ReadSpool {
        /// Highest seq already sent on this connection.
        after: u64,
        /// Most records.
        limit: u32,
    },
    /// Delete spooled records up to and including `seq_hi` (the cloud stored them).
    AckSpool {
        /// Highest acknowledged seq.
        seq_hi: u64,
    },
    /// Ask the spool whether a command id was accepted before; report
    /// [`Event::CommandLookedUp`].
    LookUpCommand {
        /// The program run.
        program_id: String,
    },
    /// Remember a command id durably; report [`Event::CommandAccepted`].
    AcceptCommand {
        /// The program run.
        program_id: String,
        /// When, ms since the Unix epoch.
        at_ms: i64,
    },
    /// Run a program on the lab; its records go to the spool and its answer comes back as
    /// [`Event::Reply`] with `finished`.
    RunProgram {
        /// The request to answer.
        request: Id,
        /// The program run.
        program_id: String,
        /// The program.
        program: Program,
        /// The run's link-loss policy (default: the lab's).
        link_loss: Option<LinkLossPolicy>,
        /// The cloud's trace context (W3C), continued by the run's span.
        traceparent: Option<String>,
    },
    /// Cancel a running program.
    CancelProgram {
        /// The program run.
        program_id: String,
    },
    /// Cancel every running program.
    CancelAll,
    /// Call a device; the answer comes back as [`Event::Reply`].
    DeviceCall {
        /// The request to answer.
        request: Id,
        /// The call.
        params: DeviceCallParams,
    },
    /// Put the lab in the safe state; the answer comes back as [`Event::Reply`].
    Estop {
        /// The request to answer.
        request: Id,
    },
    /// An operator fault reset; the answer comes back as [`Event::Reply`].
    SafetyReset {
        /// The request to answer.
        request: Id,
        /// Who and why.
        params: SafetyResetParams,
    },
    /// The link is up: the lab's safety kernel may lift its link-loss measures.
    LinkRestored,
    /// The link is gone: apply the running programs' link-loss policies; report
    /// [`Event::LinkLossApplied`].
    ApplyLinkLoss,
    /// Stop the event loop.
    Exit(Exit),
}

/// What a frame handed to the socket was, so its fate can be handled.
#[derive(Debug, Clone, PartialEq)]
enum Sent {
    Hello,
    Heartbeat,
    Goodbye,
    Record,
    /// An immediate answer to a request: lost with the connection, like the request.
    Reply,
    /// An answer from the lab's tasks: sent again on the next connection if not written.
    Answer(Message),
}

/// A `program.run` waiting for the spool's answer.
#[derive(Debug, Clone)]
enum Pending {
    /// Past its deadline: refused either way, the spool says how.
    Late { request: Id, deadline_ms: i64 },
    /// To run once accepted.
    Run {
        request: Id,
        program: Box<Program>,
        link_loss: Option<LinkLossPolicy>,
        traceparent: Option<String>,
    },
}

/// A connection whose `hello` the cloud answered.
#[derive(Debug, Clone, Copy)]
struct Up {
    dead_after: Duration,
    /// A send that writes nothing for this long is a dead link.
    send_timeout: Duration,
    period: Duration,
    last_heard: Instant,
    heartbeat_at: Instant,
    drain_at: Instant,
}

/// What comes after the link-loss policy was applied.
#[derive(Debug, Clone)]
enum Then {
    Retry(String),
    Exit,
}

#[derive(Debug, Clone)]
enum Phase {
    /// Before [`LinkState::start`].
    Idle,
    /// Waiting for the backoff delay to pass.
    Waiting { until: Instant },
    /// [`Action::Connect`] in progress.
    Connecting { deadline: Instant },
    /// `hello` sent, its answer not yet in.
    Hello { deadline: Instant },
    /// Connected.
    Up(Up),
    /// `goodbye` said; waiting for the cloud to close.
    Closing { until: Instant },
    /// [`Action::ApplyLinkLoss`] in progress.
    ApplyingLinkLoss(Then),
    /// [`Action::Exit`] returned.
    Exited,
}

/// The link protocol's state. See the module documentation.
#[derive(Debug)]
pub struct LinkState {
    settings: Settings,
    backoff: Backoff,
    rng: StdRng,
    phase: Phase,
    /// A stop was asked for while it could not be honoured at once (waiting for `hello`).
    stop_requested: bool,
    /// Program runs executing now.
    running: BTreeSet<String>,
    /// `program.run` requests waiting for the spool.
    pending: HashMap<String, Pending>,
    /// Answers waiting for a connection, in order.
    unsent: VecDeque<Message>,
    /// Answers waiting for the records before them to be sent.
    held: VecDeque<Message>,
    /// Frames handed to the socket and not yet reported written, in order.
    in_flight: VecDeque<(SendId, Sent)>,
    /// When a frame was last written (or, if none since, handed over while nothing was in
    /// flight): the start of the send timeout.
    send_progress_at: Option<Instant>,
    next_send: u64,
    /// Highest seq sent on the current connection.
    sent_hi: u64,
    /// Records may wait in the spool.
    backlog: bool,
    /// A [`Action::ReadSpool`] is in progress.
    reading: bool,
    /// The cloud throttled the lab: no records are sent before this instant (they wait in the
    /// spool, and are sent again from the first unacknowledged one).
    paused_until: Option<Instant>,
    /// Why the link was last lost (for logs and tests).
    last_loss: Option<String>,
    actions: Vec<Action>,
}

impl LinkState {
    /// A link that has not started; `seed` seeds the backoff's jitter.
    pub fn new(settings: Settings, seed: u64) -> Self {
        LinkState {
            backoff: Backoff::new(settings.backoff_base, settings.backoff_cap),
            settings,
            rng: StdRng::seed_from_u64(seed),
            phase: Phase::Idle,
            stop_requested: false,
            running: BTreeSet::new(),
            pending: HashMap::new(),
            unsent: VecDeque::new(),
            held: VecDeque::new(),
            in_flight: VecDeque::new(),
            send_progress_at: None,
            next_send: 0,
            sent_hi: 0,
            backlog: true,
            reading: false,
            paused_until: None,
            last_loss: None,
            actions: Vec::new(),
        }
    }

    /// Starts the first connection attempt.
    pub fn start(&mut self, now: Now) -> Vec<Action> {
        if matches!(self.phase, Phase::Idle) {
            self.connect(now);
        }
        std::mem::take(&mut self.actions)
    }

    /// Whether the connection is up (its `hello` answered).
    pub fn is_up(&self) -> bool {
        matches!(self.phase, Phase::Up(_))
    }

    /// Why the link was last lost, if it was.
    pub fn last_loss(&self) -> Option<&str> {
        self.last_loss.as_deref()
    }

    /// Program runs executing now.
    pub fn running(&self) -> impl Iterator<Item = &str> {
        self.running.iter().map(String::as_str)
    }

    /// When the state wants [`Event::Tick`] next, if at all.
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Waiting { until } | Phase::Closing { until } => Some(*until),
            Phase::Connecting { deadline } | Phase::Hello { deadline } => Some(*deadline),
            Phase::Up(up) => {
                let mut next = (up.last_heard + up.dead_after).min(up.heartbeat_at);
                if self.backlog || self.paused_until.is_some() {
                    next = next.min(up.drain_at);
                }
                if let Some(stalled) = self.send_stalled_at(up) {
                    next = next.min(stalled);
                }
                Some(next)
            }
            Phase::Idle | Phase::ApplyingLinkLoss(_) | Phase::Exited => None,
        }
    }

    /// The latest moment a send (or the close) in progress may still complete: past it the
    /// event loop abandons the send and reports [`Event::SendTimedOut`]. Connected, that is
    /// the earlier of the dead-link deadline and the send timeout (a send that blocks must not
    /// hold the dead-link timer back); before `hello` is answered, the hello deadline; after
    /// `goodbye`, the end of the grace.
    pub fn send_deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Hello { deadline } => Some(*deadline),
            Phase::Closing { until } => Some(*until),
            Phase::Up(up) => {
                let dead = up.last_heard + up.dead_after;
                Some(self.send_stalled_at(up).map_or(dead, |s| s.min(dead)))
            }
            _ => None,
        }
    }

    /// When the frames in flight count as stalled, if any are.
    fn send_stalled_at(&self, up: &Up) -> Option<Instant> {
        if self.in_flight.is_empty() {
            return None;
        }
        self.send_progress_at.map(|at| at + up.send_timeout)
    }

    /// Handles one event at `now`; returns what to do, in order.
    pub fn handle(&mut self, now: Now, event: Event) -> Vec<Action> {
        match event {
            Event::Tick => self.tick(now),
            Event::Stop => self.stop(now),
            Event::Connected { descriptor } => self.connected(now, descriptor.as_ref()),
            Event::ConnectFailed(failure) => self.connect_failed(failure),
            Event::Frame(frame) => self.frame(now, frame),
            Event::Closed(closure) => self.closed(closure),
            Event::SendCompleted(id) => self.send_completed(now, id),
            Event::SendFailed(id, error) => self.send_failed(id, error),
            Event::SendTimedOut(id) => self.send_timed_out(now, id),
            Event::RecordsSpooled => self.records_spooled(),
            Event::Reply { message, finished } => self.reply(now, message, finished),
            Event::SpoolRead(batch) => self.spool_read(now, batch),
            Event::CommandLookedUp { program_id, known } => {
                self.command_looked_up(now, &program_id, known)
            }
            Event::CommandAccepted {
                program_id,
                acceptance,
            } => self.command_accepted(now, program_id, acceptance),
            Event::LinkLossApplied => self.link_loss_applied(now),
        }
        std::mem::take(&mut self.actions)
    }

    // ---- connection lifecycle ---------------------------------------------------------------

    fn connect(&mut self, now: Now) {
        self.phase = Phase::Connecting {
            deadline: now.at + self.settings.connect_timeout,
        };
        self.actions.push(Action::Connect);
    }

    fn connected(&mut self, now: Now, descriptor: Option<&LabDescriptor>) {
        if !matches!(self.phase, Phase::Connecting { .. }) {
            // An attempt that was given up: nothing to say on it.
            self.actions.push(Action::Disconnect);
            return;
        }
        self.phase = Phase::Hello {
            deadline: now.at + self.settings.connect_timeout,
        };
        let hello = Message::request(
            Id::Number(HELLO_ID),
            method::HELLO,
            hello_params(descriptor, self.running.iter().cloned().collect()),
        );
        self.send(now, Sent::Hello, hello);
    }

    fn connect_failed(&mut self, failure: ConnectFailure) {
        if !matches!(self.phase, Phase::Connecting { .. }) {
            return;
        }
        match failure {
            ConnectFailure::Http { status, .. } if status == 401 || status == 403 => {
                self.actions.push(Action::Disconnect);
                self.phase = Phase::Exited;
                self.actions.push(Action::Exit(Exit::Refused(status)));
            }
            ConnectFailure::Http { text, .. } => {
                self.lose(format!("server answered HTTP {text}"));
            }
            ConnectFailure::Failed(reason) => self.lose(reason),
        }
    }

    fn welcome(&mut self, now: Now, welcome: &HelloResult) {
        self.backoff.reset();
        info!(
            lab.id = %welcome.lab_id,
            generation = welcome.generation,
            heartbeat_ms = welcome.heartbeat_ms,
            "connected to the cloud"
        );
        self.actions.push(Action::LinkRestored);
        let period = Duration::from_millis(welcome.heartbeat_ms).max(MIN_PERIOD);
        self.phase = Phase::Up(Up {
            dead_after: period * DEAD_AFTER_PERIODS,
            send_timeout: period * DEAD_AFTER_PERIODS,
            period,
            last_heard: now.at,
            heartbeat_at: now.at + period,
            drain_at: now.at,
        });
        // Answers that could not be sent on the previous connection go first; then every
        // record the cloud has not acknowledged is sent again, in order.
        while let Some(message) = self.unsent.pop_front() {
            self.send(now, Sent::Answer(message.clone()), message);
        }
        self.sent_hi = 0;
        self.backlog = true;
        if self.stop_requested {
            self.say_goodbye(now);
        }
    }

    /// The connection (or the attempt) is gone: requeue what was not written, apply the
    /// link-loss policy, then retry (or exit when a stop was asked for).
    fn lose(&mut self, reason: String) {
        let mut requeue: VecDeque<Message> = self
            .in_flight
            .drain(..)
            .filter_map(|(_, sent)| match sent {
                Sent::Answer(message) => Some(message),
                _ => None,
            })
            .collect();
        requeue.extend(self.held.drain(..));
        requeue.extend(self.unsent.drain(..));
        self.unsent = requeue;
        self.reading = false;
        self.last_loss = Some(reason.clone());
        self.actions.push(Action::Disconnect);
        self.actions.push(Action::ApplyLinkLoss);
        self.phase = Phase::ApplyingLinkLoss(if self.stop_requested {
            Then::Exit
        } else {
            Then::Retry(reason)
        });
    }

    fn link_loss_applied(&mut self, now: Now) {
        let Phase::ApplyingLinkLoss(then) = &self.phase else {
            return;
        };
        match then.clone() {
            Then::Exit => self.exit(),
            Then::Retry(reason) => {
                let delay = self.backoff.next_delay(&mut self.rng);
                warn!(%reason, delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "link lost; reconnecting");
                self.phase = Phase::Waiting {
                    until: now.at + delay,
                };
            }
        }
    }

    fn exit(&mut self) {
        self.phase = Phase::Exited;
        self.actions.push(Action::Exit(Exit::Stopped));
    }

    fn stop(&mut self, now: Now) {
        match self.phase {
            Phase::Idle | Phase::Waiting { .. } => self.exit(),
            Phase::Connecting { .. } => {
                self.stop_requested = true;
                self.lose("stopping".into());
            }
            // `goodbye` once the cloud answered `hello` (or exit when it does not).
            Phase::Hello { .. } | Phase::ApplyingLinkLoss(_) => {
                self.stop_requested = true;
                if let Phase::ApplyingLinkLoss(then) = &mut self.phase {
                    *then = Then::Exit;
                }
            }
            Phase::Up(_) => self.say_goodbye(now),
            Phase::Closing { .. } | Phase::Exited => {}
        }
    }

    fn say_goodbye(&mut self, now: Now) {
        let bye = Message::notification(
            method::GOODBYE,
            GoodbyeParams {
                reason: "agent shutting down".into(),
            },
        );
        self.send(now, Sent::Goodbye, bye);
        self.actions.push(Action::Close);
        self.phase = Phase::Closing {
            until: now.at + GOODBYE_GRACE,
        };
    }

    /// The cloud closed after `goodbye`, or did not in time.
    fn closed_after_goodbye(&mut self) {
        info!("said goodbye to the cloud");
        self.stop_requested = true;
        self.in_flight.clear();
        self.actions.push(Action::Disconnect);
        self.actions.push(Action::ApplyLinkLoss);
        self.phase = Phase::ApplyingLinkLoss(Then::Exit);
    }

    fn tick(&mut self, now: Now) {
        match &self.phase {
            Phase::Waiting { until } if now.at >= *until => self.connect(now),
            Phase::Connecting { deadline } if now.at >= *deadline => {
                self.lose("connect timed out".into());
            }
            Phase::Hello { deadline } if now.at >= *deadline => {
                self.lose("no answer to hello".into());
            }
            Phase::Closing { until } if now.at >= *until => self.closed_after_goodbye(),
            Phase::Up(up) => {
                let up = *up;
                self.tick_up(now, up);
            }
            _ => {}
        }
    }

    fn tick_up(&mut self, now: Now, up: Up) {
        if now.at >= up.last_heard + up.dead_after {
            let ms = up.dead_after.as_millis();
            self.lose(format!("no traffic from the server for {ms} ms"));
            return;
        }
        if self.send_stalled_at(&up).is_some_and(|at| now.at >= at) {
            let ms = up.send_timeout.as_millis();
            self.lose(format!("send timed out: nothing written for {ms} ms"));
            return;
        }
        if now.at >= up.heartbeat_at {
            if let Phase::Up(up) = &mut self.phase {
                up.heartbeat_at += up.period;
                if up.heartbeat_at <= now.at {
                    up.heartbeat_at = now.at + up.period;
                }
            }
            let note = Message::notification(
                method::HEARTBEAT,
                HeartbeatParams {
                    time_ms: now.unix_ms,
                },
            );
            self.send(now, Sent::Heartbeat, note);
        }
        if now.at >= up.drain_at && (self.backlog || self.paused_until.is_some()) {
            self.drain(now);
        }
    }

    // ---- frames -------------------------------------------------------------------------------

    fn frame(&mut self, now: Now, frame: Incoming) {
        match &mut self.phase {
            Phase::Hello { .. } => {
                if let Incoming::Text(text) = frame {
                    self.hello_answer(now, &text);
                }
            }
            Phase::Up(up) => {
                up.last_heard = now.at;
                match frame {
                    Incoming::Text(text) => self.text(now, &text),
                    Incoming::Close(frame) => {
                        self.lose(format!("server closed the link: {frame}"));
                    }
                    Incoming::Other => {}
                }
            }
            Phase::Closing { .. } => {
                if matches!(frame, Incoming::Close(_)) {
                    self.closed_after_goodbye();
                }
            }
            _ => {}
        }
    }

    fn hello_answer(&mut self, now: Now, text: &str) {
        match Message::parse(text) {
            Ok(Message::Response(r)) if r.id == Some(Id::Number(HELLO_ID)) => {
                if let Some(err) = r.error {
                    self.lose(format!("hello refused: {}", err.message));
                    return;
                }
                match serde_json::from_value::<HelloResult>(r.result.unwrap_or_default()) {
                    Ok(welcome) => self.welcome(now, &welcome),
                    Err(e) => self.lose(format!("malformed hello result: {e}")),
                }
            }
            Ok(_) => {}
            Err(e) => debug!(error = %e, "ignoring malformed message before hello"),
        }
    }

    fn closed(&mut self, closure: Closure) {
        match self.phase {
            Phase::Hello { .. } => self.lose(match closure {
                Closure::Error(e) => format!("link error before hello: {e}"),
                Closure::Ended => "connection closed before hello".into(),
            }),
            Phase::Up(_) => self.lose(match closure {
                Closure::Error(e) => format!("link error: {e}"),
                Closure::Ended => "link closed".into(),
            }),
            Phase::Closing { .. } => self.closed_after_goodbye(),
            _ => {}
        }
    }

    /// One text frame from the cloud on an established connection.
    fn text(&mut self, now: Now, text: &str) {
        match Message::parse(text) {
            Ok(Message::Request(r)) => self.request(now, r),
            Ok(Message::Notification(n)) if n.method == method::ACK => {
                match serde_json::from_value::<AckParams>(n.params) {
                    Ok(ack) if ack.epoch == self.settings.epoch => {
                        self.actions.push(Action::AckSpool { seq_hi: ack.seq_hi });
                    }
                    Ok(ack) => debug!(epoch = %ack.epoch, "acknowledgement for another epoch"),
                    Err(e) => debug!(error = %e, "malformed acknowledgement"),
                }
            }
            Ok(Message::Notification(n)) if n.method == method::THROTTLE => {
                match serde_json::from_value::<ThrottleParams>(n.params) {
                    Ok(t) => {
                        // Everything not acknowledged is sent again, from the first, after
                        // the pause: the cloud stored nothing past its last acknowledgement.
                        let pause = Duration::from_millis(t.retry_after_ms.clamp(10, 3_600_000));
                        info!(reason = %t.reason, pause_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
                              "the cloud throttled this lab's records; they wait in the spool");
                        self.sent_hi = 0;
                        self.paused_until = Some(now.at + pause);
                    }
                    Err(e) => debug!(error = %e, "malformed throttle"),
                }
            }
            Ok(Message::Notification(_)) | Ok(Message::Response(_)) => {}
            Err(e) => {
                debug!(error = %e, "malformed message from the cloud");
                let reply = Message::error(None, error_code::PARSE_ERROR, e.to_string());
                self.send(now, Sent::Reply, reply);
            }
        }
    }

    fn request(&mut self, now: Now, request: Request) {
        let id = request.id;
        if !self.settings.has_lab {
            let reply = Message::error(
                Some(id),
                error_code::METHOD_NOT_FOUND,
                format!(
                    "this agent runs no lab, so it does not offer {}",
                    request.method
                ),
            );
            self.send(now, Sent::Reply, reply);
            return;
        }
        let reply = match request.method.as_str() {
            method::PROGRAM_RUN => self.program_run(now, id, request.params),
            method::PROGRAM_CANCEL => {
                match serde_json::from_value::<ProgramCancelParams>(request.params) {
                    Ok(params) => {
                        let found = self.running.contains(&params.program_id);
                        if found {
                            self.actions.push(Action::CancelProgram {
                                program_id: params.program_id,
                            });
                        }
                        Some(Message::result(id, json!({ "canceled": found })))
                    }
                    Err(e) => Some(invalid(id, &e)),
                }
            }
            method::DEVICE_CALL => match serde_json::from_value::<DeviceCallParams>(request.params)
            {
                Ok(params) => {
                    self.actions.push(Action::DeviceCall {
                        request: id,
                        params,
                    });
                    None
                }
                Err(e) => Some(invalid(id, &e)),
            },
            method::ESTOP => {
                self.actions.push(Action::CancelAll);
                self.actions.push(Action::Estop { request: id });
                None
            }
            method::SAFETY_RESET => {
                match serde_json::from_value::<SafetyResetParams>(request.params) {
                    Ok(params) => {
                        self.actions.push(Action::SafetyReset {
                            request: id,
                            params,
                        });
                        None
                    }
                    Err(e) => Some(invalid(id, &e)),
                }
            }
            other => Some(Message::error(
                Some(id),
                error_code::METHOD_NOT_FOUND,
                format!("this agent does not offer {other}"),
            )),
        };
        if let Some(reply) = reply {
            self.send(now, Sent::Reply, reply);
        }
    }

    /// `program.run`: refused when running, late or accepted before; otherwise remembered
    /// durably ([`Action::AcceptCommand`]) and run once the spool confirms.
    fn program_run(&mut self, now: Now, id: Id, params: serde_json::Value) -> Option<Message> {
        let params: ProgramRunParams = match serde_json::from_value(params) {
            Ok(p) => p,
            Err(e) => return Some(invalid(id, &e)),
        };
        let program: Program = match serde_json::from_value(params.program) {
            Ok(p) => p,
            Err(e) => return Some(invalid(id, &e)),
        };
        let link_loss = match params.link_loss.as_deref() {
            None => None,
            Some("continue") => Some(LinkLossPolicy::Continue),
            Some("hold") => Some(LinkLossPolicy::Hold),
            Some("safe_stop") => Some(LinkLossPolicy::SafeStop),
            Some(other) => {
                return Some(Message::error(
                    Some(id),
                    error_code::INVALID_PARAMS,
                    format!("unknown link_loss {other:?}: continue, hold or safe_stop"),
                ))
            }
        };
        let program_id = params.program_id;
        if self.running.contains(&program_id) || self.pending.contains_key(&program_id) {
            return Some(Message::error(
                Some(id),
                error_code::ALREADY_ACCEPTED,
                format!("program {program_id} is already running"),
            ));
        }
        // A run past its deadline never starts (and is not remembered as accepted) — unless it
        // was accepted before the deadline, which the re-send must learn.
        if let Some(deadline_ms) = params.deadline_ms.filter(|d| now.unix_ms > *d) {
            self.pending.insert(
                program_id.clone(),
                Pending::Late {
                    request: id,
                    deadline_ms,
                },
            );
            self.actions.push(Action::LookUpCommand { program_id });
            return None;
        }
        // Remembered durably before anything moves: a re-sent run is refused.
        self.pending.insert(
            program_id.clone(),
            Pending::Run {
                request: id,
                program: Box::new(program),
                link_loss,
                traceparent: params.traceparent,
            },
        );
        self.actions.push(Action::AcceptCommand {
            program_id,
            at_ms: now.unix_ms,
        });
        None
    }

    fn command_looked_up(
        &mut self,
        now: Now,
        program_id: &str,
        known: Result<Option<KnownCommand>, String>,
    ) {
        let Some(Pending::Late {
            request,
            deadline_ms,
        }) = self.pending.remove(program_id)
        else {
            return;
        };
        match known {
            Ok(Some(known)) => self.answer_known(now, request, program_id, known),
            Ok(None) | Err(_) => self.reply_now(
                now,
                Message::error(
                    Some(request),
                    error_code::DEADLINE_PASSED,
                    format!("program {program_id} arrived after its deadline ({deadline_ms} ms since the epoch)"),
                ),
            ),
        }
    }

    fn command_accepted(
        &mut self,
        now: Now,
        program_id: String,
        acceptance: Result<Acceptance, String>,
    ) {
        let Some(Pending::Run {
            request,
            program,
            link_loss,
            traceparent,
        }) = self.pending.remove(&program_id)
        else {
            return;
        };
        match acceptance {
            Ok(Acceptance::New) => {
                self.running.insert(program_id.clone());
                self.actions.push(Action::RunProgram {
                    request,
                    program_id,
                    program: *program,
                    link_loss,
                    traceparent,
                });
            }
            Ok(Acceptance::Known(known)) => self.answer_known(now, request, &program_id, known),
            Err(e) => {
                warn!(error = %e, "command not recorded; refusing to run it");
                self.reply_now(
                    now,
                    Message::error(
                        Some(request),
                        error_code::INTERNAL_ERROR,
                        "the agent could not record the command durably",
                    ),
                );
            }
        }
    }

    /// A re-sent `program.run` of a run accepted before: its stored result, as the first
    /// answer said it (and, like it, after every spooled record); refused as already accepted
    /// when the run never ended here (the agent stopped during it).
    fn answer_known(&mut self, now: Now, request: Id, program_id: &str, known: KnownCommand) {
        match known.result {
            Some(result) => {
                info!(program.id = %program_id, "re-sent program run answered with its stored result");
                if self.is_up() {
                    self.reply(now, Message::result(request, result), None);
                }
            }
            None => self.reply_now(now, already_accepted(request, program_id)),
        }
    }

    /// An immediate answer, on the connection the request came on (if it is still up).
    fn reply_now(&mut self, now: Now, reply: Message) {
        if self.is_up() {
            self.send(now, Sent::Reply, reply);
        }
    }

    // ---- records and answers ------------------------------------------------------------------

    fn records_spooled(&mut self) {
        self.backlog = true;
    }

    fn reply(&mut self, now: Now, message: Message, finished: Option<String>) {
        if let Some(program_id) = finished {
            self.running.remove(&program_id);
        }
        if !self.is_up() {
            // Waits for the next connection.
            self.unsent.push_back(message);
            return;
        }
        // Records go before the answer that ends their program.
        self.held.push_back(message);
        if !self.reading {
            self.drain_for_answers(now);
        }
        self.backlog = true;
    }

    /// Sends the next batch of unsent spooled records (at the drain rate).
    fn drain(&mut self, now: Now) {
        if self.reading {
            return;
        }
        if let Phase::Up(up) = &mut self.phase {
            up.drain_at = now.at + DRAIN_INTERVAL;
        }
        if let Some(until) = self.paused_until {
            if now.at < until {
                self.backlog = false;
                return;
            }
            self.paused_until = None;
        }
        self.read_spool();
    }

    /// Sends every spooled record, then the held answers (not bounded by the drain rate: the
    /// answer must not wait).
    fn drain_for_answers(&mut self, now: Now) {
        if let Some(until) = self.paused_until {
            if now.at < until {
                self.flush_held(now);
                return;
            }
            self.paused_until = None;
        }
        self.read_spool();
    }

    fn read_spool(&mut self) {
        self.reading = true;
        self.actions.push(Action::ReadSpool {
            after: self.sent_hi,
            limit: DRAIN_BATCH,
        });
    }

    fn spool_read(&mut self, now: Now, batch: Result<Vec<Spooled>, String>) {
        if !self.reading || !self.is_up() {
            return;
        }
        self.reading = false;
        let batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                self.lose(format!("spool unreadable: {e}"));
                return;
            }
        };
        let full = batch.len() >= DRAIN_BATCH as usize;
        for spooled in batch {
            let seq = spooled.seq;
            let message = Message::notification(
                method::RECORD,
                RecordParams {
                    epoch: self.settings.epoch.clone(),
                    seq,
                    program_id: spooled.program_id,
                    record: spooled.record,
                },
            );
            self.send(now, Sent::Record, message);
            self.sent_hi = seq;
        }
        if self.held.is_empty() {
            self.backlog = full;
        } else if full {
            self.read_spool();
        } else {
            self.flush_held(now);
        }
    }

    fn flush_held(&mut self, now: Now) {
        while let Some(message) = self.held.pop_front() {
            self.send(now, Sent::Answer(message.clone()), message);
        }
        self.backlog = true;
    }

    // ---- sends --------------------------------------------------------------------------------

    fn send(&mut self, now: Now, kind: Sent, message: Message) {
        if self.in_flight.is_empty() {
            self.send_progress_at = Some(now.at);
        }
        let id = SendId(self.next_send);
        self.next_send += 1;
        self.in_flight.push_back((id, kind));
        self.actions.push(Action::Send { id, message });
    }

    fn take_in_flight(&mut self, id: SendId) -> Option<Sent> {
        let at = self.in_flight.iter().position(|(i, _)| *i == id)?;
        self.in_flight.remove(at).map(|(_, sent)| sent)
    }

    fn send_completed(&mut self, now: Now, id: SendId) {
        if self.take_in_flight(id).is_some() {
            self.send_progress_at = Some(now.at);
        }
    }

    /// The event loop gave up on a send at [`LinkState::send_deadline`].
    fn send_timed_out(&mut self, now: Now, id: SendId) {
        let Some(sent) = self.take_in_flight(id) else {
            return;
        };
        if let Sent::Answer(message) = sent {
            self.in_flight.push_front((id, Sent::Answer(message)));
        }
        match &self.phase {
            Phase::Hello { .. } => self.lose("no answer to hello".into()),
            Phase::Up(up) => {
                let reason = if now.at >= up.last_heard + up.dead_after {
                    format!(
                        "no traffic from the server for {} ms",
                        up.dead_after.as_millis()
                    )
                } else {
                    format!(
                        "send timed out: nothing written for {} ms",
                        up.send_timeout.as_millis()
                    )
                };
                self.lose(reason);
            }
            Phase::Closing { .. } => self.closed_after_goodbye(),
            _ => {}
        }
    }

    fn send_failed(&mut self, id: SendId, error: String) {
        let Some(sent) = self.take_in_flight(id) else {
            return;
        };
        match (&self.phase, sent) {
            (Phase::Hello { .. }, Sent::Hello) => self.lose(format!("hello not sent: {error}")),
            (Phase::Up(_), Sent::Heartbeat) => self.lose(format!("heartbeat not sent: {error}")),
            (Phase::Up(_), Sent::Answer(message)) => {
                self.in_flight.push_front((id, Sent::Answer(message)));
                self.lose(format!("send failed: {error}"));
            }
            (Phase::Up(_), _) => self.lose(format!("send failed: {error}")),
            // `goodbye` is best effort; anything else belongs to a connection already lost.
            _ => {}
        }
    }
}

fn invalid(id: Id, e: &serde_json::Error) -> Message {
    Message::error(Some(id), error_code::INVALID_PARAMS, e.to_string())
}

fn already_accepted(request: Id, program_id: &str) -> Message {
    Message::error(
        Some(request),
        error_code::ALREADY_ACCEPTED,
        format!("program {program_id} was already accepted"),
    )
}

/// The `hello` parameters: the agent's version, the lab's devices and descriptor, and the
/// program runs executing now.
pub fn hello_params(descriptor: Option<&LabDescriptor>, running: Vec<String>) -> HelloParams {
    let devices = descriptor
        .map(|d| {
            d.devices
                .iter()
                .map(|dev| DeviceSummary {
                    name: dev.symbol.clone(),
                    kind: dev.kind.as_str().to_owned(),
                })
                .collect()
        })
        .unwrap_or_default();
    HelloParams {
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        devices,
        descriptor: descriptor
            .and_then(|d| serde_json::to_value(d).ok())
            .unwrap_or(serde_json::Value::Null),
        running,
    }
}
