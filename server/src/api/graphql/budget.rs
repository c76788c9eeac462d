//! The per-caller query budget: how many bytes of GraphQL documents one caller may make this
//! replica parse per second.
//!
//! Parsing is the one cost every operation pays before any limit on its content can be checked
//! (aliases, depth, complexity are properties of the parsed document), and it grows with the
//! document: a caller sending maximal documents as fast as it can keeps a core busy with
//! refusals (issue 15's attack suite measured one tenant's hostile queries costing the server
//! a full core, and the other tenant's campaign a quarter of its loop rate). So each operation
//! is charged its query text (at least [`MIN_CHARGE_BYTES`]) against a token bucket of the
//! caller (the user, or the client address for anonymous calls) *before* it is parsed, and a
//! caller out of budget is refused with `RATE_LIMITED` and the time after which the operation
//! would fit. The bucket refills at `query_bytes_per_second` up to `query_burst_bytes`.
//!
//! The buckets are per replica on purpose: what they protect is this process's CPU. A bucket
//! unused for longer than it takes to refill completely is dropped (it would be full again).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// The least one operation costs, so that floods of tiny operations are bounded too.
pub const MIN_CHARGE_BYTES: usize = 1024;

/// Bytes per cell of the buckets (the limiter counts in whole cells).
const CELL_BYTES: usize = 1024;

/// Who pays for an operation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    /// A verified user (sessions and API tokens of one user share the budget).
    User(String),
    /// An anonymous caller, by client address.
    Address(String),
}

/// Why an operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// The caller spent its budget; the operation would fit after this wait.
    #[error("too many query bytes from this caller; retry in {} ms", .0.as_millis())]
    RetryAfter(Duration),
    /// The operation is larger than the whole bucket and can never run.
    #[error("the operation is larger than the query budget of one caller")]
    TooLarge,
}

/// The per-caller budgets of one replica.
#[derive(Clone)]
pub struct QueryBudget {
    quota: Quota,
    burst_cells: u32,
    buckets: moka::sync::Cache<Caller, Arc<DefaultDirectRateLimiter>>,
}

impl std::fmt::Debug for QueryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryBudget")
            .field("quota", &self.quota)
            .field("callers", &self.buckets.entry_count())
            .finish()
    }
}

fn cells(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(CELL_BYTES)).unwrap_or(u32::MAX)
}

impl QueryBudget {
    /// A budget refilling `bytes_per_second` up to `burst_bytes` per caller (both rounded up to
    /// whole KiB, at least 1 KiB).
    pub fn new(bytes_per_second: usize, burst_bytes: usize) -> Self {
        let rate = NonZeroU32::new(cells(bytes_per_second)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(cells(burst_bytes)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(rate).allow_burst(burst);
        // A bucket left alone this long is full again: dropping it changes nothing.
        let refill = Duration::from_secs_f64(f64::from(burst.get()) / f64::from(rate.get()));
        QueryBudget {
            quota,
            burst_cells: burst.get(),
            buckets: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(refill + Duration::from_secs(1))
                .build(),
        }
    }

    /// Charges an operation of `query_bytes` to `caller`, or says why it may not run now.
    pub fn charge(&self, caller: &Caller, query_bytes: usize) -> Result<(), BudgetError> {
        self.charge_all(caller, std::iter::once(query_bytes))
    }

    /// Charges several operations (a batch) at once: all of them, or none.
    pub fn charge_all(
        &self,
        caller: &Caller,
        query_bytes: impl IntoIterator<Item = usize>,
    ) -> Result<(), BudgetError> {
        let total: u32 = query_bytes
            .into_iter()
            .map(|b| cells(b.max(MIN_CHARGE_BYTES)))
            .fold(0u32, u32::saturating_add);
        let Some(n) = NonZeroU32::new(total) else {
            return Ok(());
        };
        if n.get() > self.burst_cells {
            return Err(BudgetError::TooLarge);
        }
        let quota = self.quota;
        let bucket = self
            .buckets
            .get_with(caller.clone(), || Arc::new(RateLimiter::direct(quota)));
        match bucket.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                use governor::clock::Clock as _;
                let now = bucket.clock().now();
                Err(BudgetError::RetryAfter(not_until.wait_time_from(now)))
            }
            Err(_) => Err(BudgetError::TooLarge),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: &str) -> Caller {
        Caller::User(n.into())
    }

    #[test]
    fn a_caller_gets_its_burst_then_is_refused_with_a_wait() {
        let b = QueryBudget::new(16 * 1024, 64 * 1024);
        for _ in 0..4 {
            b.charge(&user("a"), 16 * 1024).unwrap();
        }
        match b.charge(&user("a"), 16 * 1024) {
            Err(BudgetError::RetryAfter(wait)) => {
                assert!(wait > Duration::from_millis(500), "{wait:?}");
                assert!(wait <= Duration::from_secs(1), "{wait:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn callers_do_not_share_a_bucket() {
        let b = QueryBudget::new(1024, 8 * 1024);
        b.charge(&user("a"), 8 * 1024).unwrap();
        assert!(b.charge(&user("a"), 1).is_err());
        b.charge(&user("b"), 8 * 1024).unwrap();
        b.charge(&Caller::Address("198.51.100.7".into()), 8 * 1024)
            .unwrap();
    }

    #[test]
    fn tiny_operations_cost_the_minimum_and_batches_all_or_nothing() {
        let b = QueryBudget::new(1024, 10 * 1024);
        // Ten 20-byte operations cost 10 KiB: the whole bucket.
        b.charge_all(&user("a"), [20; 10]).unwrap();
        assert!(b.charge(&user("a"), 20).is_err());
        let b = QueryBudget::new(1024, 10 * 1024);
        b.charge_all(&user("a"), [20; 5]).unwrap();
        // A batch that does not fit is refused whole and charges nothing.
        assert!(matches!(
            b.charge_all(&user("a"), [20; 6]),
            Err(BudgetError::RetryAfter(_))
        ));
        b.charge_all(&user("a"), [20; 5]).unwrap();
    }

    #[test]
    fn an_operation_larger_than_the_bucket_is_refused_for_good() {
        let b = QueryBudget::new(1024, 4 * 1024);
        assert_eq!(b.charge(&user("a"), 5 * 1024), Err(BudgetError::TooLarge));
        b.charge(&user("a"), 4 * 1024).unwrap();
    }

    #[test]
    fn the_bucket_refills_at_the_rate() {
        let b = QueryBudget::new(1024 * 1024, 1024 * 1024);
        b.charge(&user("a"), 1024 * 1024).unwrap();
        assert!(b.charge(&user("a"), 64 * 1024).is_err());
        std::thread::sleep(Duration::from_millis(150));
        b.charge(&user("a"), 64 * 1024).unwrap();
    }
}
