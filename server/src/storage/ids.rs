//! Identifiers as newtypes: a lab id cannot be passed where an organisation id is expected.
//!
//! Each id is the UUID text the row was created with. They are transparent to SQL (a TEXT
//! column) and to serde (a string), and borrow as `&str` for formatting and comparisons. They are
//! made from strings only at the edges: GraphQL arguments, tokens, agent messages, where the text
//! arrives from outside and is checked against storage before anything is done with it.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use super::db::Arg;

macro_rules! ids {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        #[derive(
            Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default,
            serde::Serialize, serde::Deserialize, sqlx::Type,
        )]
        #[serde(transparent)]
        #[sqlx(transparent)]
        pub struct $name(String);

        impl $name {
            /// A fresh id (UUID v7 text: time-ordered).
            pub fn generate() -> Self {
                Self(super::new_id())
            }

            /// The id's text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id's text, owned.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl From<String> for $name {
            fn from(text: String) -> Self {
                Self(text)
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                Self(text.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl PartialEq<&$name> for $name {
            fn eq(&self, other: &&$name) -> bool {
                self.0 == other.0
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl From<&$name> for Arg {
            fn from(id: &$name) -> Arg {
                Arg::Text(Some(id.0.clone()))
            }
        }

        impl From<Option<&$name>> for Arg {
            fn from(id: Option<&$name>) -> Arg {
                Arg::Text(id.map(|id| id.0.clone()))
            }
        }

        impl From<&Option<$name>> for Arg {
            fn from(id: &Option<$name>) -> Arg {
                Arg::Text(id.as_ref().map(|id| id.0.clone()))
            }
        }
    )*};
}

ids! {
    /// A user.
    UserId;
    /// An organisation (the tenant).
    OrganizationId;
    /// A lab.
    LabId;
    /// A campaign.
    CampaignId;
    /// An experiment of a campaign's queue.
    ExperimentId;
    /// A lab command (an instruction or a stop).
    CommandId;
    /// A login session.
    SessionId;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_different_kinds_with_the_same_text_borrow_the_same_str() {
        let lab = LabId::from("0190-a");
        let org = OrganizationId::from("0190-a");
        assert_eq!(lab.as_str(), org.as_str());
        assert_eq!(lab, "0190-a");
    }

    #[test]
    fn ids_serialize_as_plain_strings() {
        let id = CampaignId::from("c-1");
        assert_eq!(serde_json::to_string(&id).ok().as_deref(), Some("\"c-1\""));
        let back: Result<CampaignId, _> = serde_json::from_str("\"c-1\"");
        assert_eq!(back.ok(), Some(id));
    }

    #[test]
    fn generated_ids_are_distinct() {
        let a = ExperimentId::generate();
        let b = ExperimentId::generate();
        assert_ne!(a, b);
    }
}
