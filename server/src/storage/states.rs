//! The lifecycles of campaigns, experiments and lab commands: their states as enums and the
//! forward-only transition tables, in one place. Storage guards every state change with the
//! sources this table allows (`UPDATE … WHERE state IN (sources)`), so a change the table does
//! not allow never reaches the database, and a final state never changes.
//!
//! Stored as lower-case text (`timed_out` for [`CommandState::TimedOut`]); the public API
//! shows the same enums as GraphQL enums (`TIMED_OUT`), so there is one definition of each
//! lifecycle, and a state the API returns or a filter it takes is always one of these.

use std::fmt;
use std::str::FromStr;

/// A stored state text that names no state (a corrupt row or a bad argument).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} state {text:?}")]
pub struct UnknownState {
    /// Which lifecycle.
    pub kind: &'static str,
    /// The text.
    pub text: String,
}

/// Declares a state enum with its text, `FromStr`/`TryFrom<String>`/`Display`, and its
/// transition table (`from => [to, …]`).
macro_rules! lifecycle {
    (
        $(#[$meta:meta])*
        $name:ident ($kind:literal) {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal, stage $stage:literal => [$($to:ident),*],)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, async_graphql::Enum)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every state, in lifecycle order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The stored text.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }

            /// The stage of the lifecycle this state belongs to: no move goes to an earlier
            /// stage (forward only), and moves within a stage (pause and resume, a released
            /// claim) never leave it backwards.
            pub fn stage(self) -> u8 {
                match self {
                    $($name::$variant => $stage,)*
                }
            }

            /// The states this one may move to (a state listed as its own successor may be
            /// rewritten in place, e.g. to update its detail).
            pub fn successors(self) -> &'static [$name] {
                match self {
                    $($name::$variant => &[$($name::$to),*],)*
                }
            }
        }

        impl FromStr for $name {
            type Err = UnknownState;

            fn from_str(s: &str) -> Result<Self, UnknownState> {
                match s {
                    $($text => Ok($name::$variant),)*
                    _ => Err(UnknownState { kind: $kind, text: s.to_owned() }),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = UnknownState;

            fn try_from(s: String) -> Result<Self, UnknownState> {
                s.parse()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        impl From<$name> for super::db::Arg {
            fn from(s: $name) -> Self {
                super::db::Arg::from(s.as_str())
            }
        }

        impl $name {
            /// Whether the table allows `self → to`.
            pub fn can_move_to(self, to: $name) -> bool {
                self.successors().contains(&to)
            }

            /// Whether nothing follows this state.
            pub fn is_final(self) -> bool {
                self.successors().is_empty()
            }

            /// The states that may move to `to`, as a SQL list (`'a', 'b'`); empty when none.
            pub fn sources_sql(to: $name) -> String {
                Self::ALL
                    .iter()
                    .filter(|from| from.can_move_to(to))
                    .map(|from| format!("'{}'", from.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ")
            }

            /// Of `from`, the states the table allows to move to `to`, as a SQL list.
            pub fn allowed_sql(from: &[$name], to: $name) -> String {
                from.iter()
                    .filter(|f| f.can_move_to(to))
                    .map(|f| format!("'{}'", f.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        }
    };
}

lifecycle! {
    /// Where a campaign is in its life.
    CampaignState ("campaign") {
        /// Created, not started.
        Draft = "draft", stage 0 => [Running, Canceled],
        /// The engine asks, queues and tells.
        Running = "running", stage 1 => [Running, Paused, Completed, Canceled, Failed],
        /// Nothing is dispatched; what runs finishes.
        Paused = "paused", stage 1 => [Paused, Running, Completed, Canceled, Failed],
        /// Budget spent or target reached.
        Completed = "completed", stage 2 => [],
        /// Stopped by a user.
        Canceled = "canceled", stage 2 => [],
        /// Stopped by an error.
        Failed = "failed", stage 2 => [],
    }
}

lifecycle! {
    /// Where an experiment is in the queue.
    ExperimentState ("experiment") {
        /// Waiting for its lab.
        Queued = "queued", stage 0 => [Leased, Canceled],
        /// Claimed by a dispatcher until its lease runs out (then claimable again), released
        /// back to the queue, or ended before it ran.
        Leased = "leased", stage 0 => [Leased, Queued, Running, Completed, Failed, Interrupted],
        /// The agent accepted it.
        Running = "running", stage 1 => [Completed, Failed, Interrupted],
        /// Ran to its end.
        Completed = "completed", stage 2 => [],
        /// Ran and failed, or was refused.
        Failed = "failed", stage 2 => [],
        /// Cut off (link lost, stopped, the agent restarted).
        Interrupted = "interrupted", stage 2 => [],
        /// Dropped before it ran (its campaign ended).
        Canceled = "canceled", stage 2 => [],
    }
}

lifecycle! {
    /// Where a lab command (an instruction or a stop) is.
    CommandState ("command") {
        /// Waiting to be sent before its deadline.
        Queued = "queued", stage 0 => [Sent, TimedOut, Canceled],
        /// Sent to the agent (may be sent again with the same id after a restart).
        Sent = "sent", stage 1 => [Sent, Succeeded, Failed, TimedOut],
        /// The agent ran it.
        Succeeded = "succeeded", stage 2 => [],
        /// The agent refused it or it failed.
        Failed = "failed", stage 2 => [],
        /// Not accepted or not answered in time (one still queued at its deadline never ran).
        TimedOut = "timed_out", stage 2 => [],
        /// Canceled before it was sent.
        Canceled = "canceled", stage 2 => [],
    }
}

impl ExperimentState {
    /// States in which an experiment holds its lab (dispatched, not finished).
    pub const LIVE: &'static [ExperimentState] =
        &[ExperimentState::Leased, ExperimentState::Running];
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks a table: texts round-trip and are unique, no move goes to an earlier stage,
    /// final states have no way out and are the last stage, and every state but the first is
    /// reachable from the first.
    fn check<S>(
        all: &[S],
        as_str: fn(S) -> &'static str,
        stage: fn(S) -> u8,
        next: fn(S) -> &'static [S],
    ) where
        S: Copy + PartialEq + fmt::Debug + FromStr<Err = UnknownState>,
    {
        let last = all.iter().map(|s| stage(*s)).max().unwrap_or(0);
        for (i, a) in all.iter().enumerate() {
            assert_eq!(as_str(*a).parse::<S>(), Ok(*a));
            for b in &all[i + 1..] {
                assert_ne!(as_str(*a), as_str(*b));
            }
            for b in next(*a) {
                assert!(stage(*b) >= stage(*a), "{a:?} -> {b:?} goes backwards");
            }
            assert_eq!(next(*a).is_empty(), stage(*a) == last, "{a:?}");
        }
        let mut reached = vec![all[0]];
        let mut stack = vec![all[0]];
        while let Some(s) = stack.pop() {
            for n in next(s) {
                if !reached.contains(n) {
                    reached.push(*n);
                    stack.push(*n);
                }
            }
        }
        assert_eq!(reached.len(), all.len(), "unreachable states");
    }

    #[test]
    fn campaign_states_move_forward_only_and_all_are_reachable() {
        check(
            CampaignState::ALL,
            CampaignState::as_str,
            CampaignState::stage,
            CampaignState::successors,
        );
    }

    #[test]
    fn experiment_states_move_forward_only() {
        check(
            ExperimentState::ALL,
            ExperimentState::as_str,
            ExperimentState::stage,
            ExperimentState::successors,
        );
    }

    #[test]
    fn command_states_move_forward_only() {
        check(
            CommandState::ALL,
            CommandState::as_str,
            CommandState::stage,
            CommandState::successors,
        );
    }

    #[test]
    fn final_states_have_no_successor() {
        use CampaignState as C;
        for s in [C::Completed, C::Canceled, C::Failed] {
            assert!(s.is_final());
            for to in C::ALL {
                assert!(!s.can_move_to(*to));
            }
        }
        assert!(!C::Draft.is_final() && !C::Running.is_final() && !C::Paused.is_final());
        assert!(ExperimentState::Interrupted.is_final());
        assert!(CommandState::TimedOut.is_final());
    }

    #[test]
    fn the_tables_allow_exactly_the_documented_moves() {
        use CampaignState as C;
        use CommandState as K;
        use ExperimentState as E;
        assert!(C::Draft.can_move_to(C::Running));
        assert!(!C::Draft.can_move_to(C::Paused));
        assert!(C::Paused.can_move_to(C::Running));
        assert!(!C::Completed.can_move_to(C::Running));
        assert!(E::Leased.can_move_to(E::Queued));
        assert!(!E::Running.can_move_to(E::Queued));
        assert!(!E::Queued.can_move_to(E::Running));
        assert!(K::Queued.can_move_to(K::Canceled));
        assert!(!K::Sent.can_move_to(K::Canceled));
        assert!(!K::Queued.can_move_to(K::Succeeded));
    }

    /// The GraphQL value of a state and back.
    fn graphql_round_trip<S>(all: &[S], as_str: fn(S) -> &'static str)
    where
        S: Copy + PartialEq + fmt::Debug + async_graphql::InputType,
    {
        for s in all {
            let value = async_graphql::InputType::to_value(s);
            assert_eq!(
                value,
                async_graphql::Value::Enum(async_graphql::Name::new(as_str(*s).to_uppercase())),
                "{s:?}"
            );
            assert_eq!(S::parse(Some(value)).ok(), Some(*s));
        }
    }

    #[test]
    fn the_api_shows_each_stored_state_as_its_upper_case_graphql_enum_value() {
        graphql_round_trip(CampaignState::ALL, CampaignState::as_str);
        graphql_round_trip(ExperimentState::ALL, ExperimentState::as_str);
        graphql_round_trip(CommandState::ALL, CommandState::as_str);
    }

    #[test]
    fn sql_lists_come_from_the_table() {
        assert_eq!(
            ExperimentState::sources_sql(ExperimentState::Running),
            "'leased'"
        );
        assert_eq!(
            CommandState::sources_sql(CommandState::TimedOut),
            "'queued', 'sent'"
        );
        assert_eq!(
            CampaignState::allowed_sql(
                &[CampaignState::Completed, CampaignState::Running],
                CampaignState::Paused
            ),
            "'running'"
        );
        assert_eq!(
            "nonsense".parse::<CampaignState>(),
            Err(UnknownState {
                kind: "campaign",
                text: "nonsense".into()
            })
        );
    }
}
