//! What users and operators call over HTTP: the GraphQL API (queries, mutations,
//! subscriptions), streamed exports, the web portal's files, and the operator API. The client
//! address behind trusted proxies is resolved here too.

pub mod export;
pub mod forwarded;
pub mod graphql;
pub mod operator;
pub mod portal;
