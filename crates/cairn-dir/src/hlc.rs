//! Hybrid logical clocks: wall-clock milliseconds plus a counter, so a writer's timestamps never
//! go backwards and stay close to real time. They order only what causality leaves unordered
//! (which of two concurrent values shows under the plain name).

use serde::{Deserialize, Serialize};

/// How far ahead of the local clock a remote timestamp may pull ours (five minutes).
pub const MAX_FUTURE_MS: u64 = 5 * 60 * 1000;

/// A hybrid logical timestamp.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch (wall clock, or ahead of it after seeing a later peer).
    pub millis: u64,
    /// Orders timestamps within one millisecond.
    pub counter: u32,
}

impl Hlc {
    /// The timestamp for a new write: after both `self` (the latest seen) and `now_ms`. A
    /// `self` more than [`MAX_FUTURE_MS`] ahead of `now_ms` is clamped first, so a peer with a
    /// clock far in the future cannot drag everyone's clocks along.
    pub fn next(self, now_ms: u64) -> Hlc {
        let seen = self.clamped(now_ms);
        if now_ms > seen.millis {
            Hlc {
                millis: now_ms,
                counter: 0,
            }
        } else {
            Hlc {
                millis: seen.millis,
                counter: seen.counter.saturating_add(1),
            }
        }
    }

    /// `self`, but no later than `now_ms + MAX_FUTURE_MS`.
    pub fn clamped(self, now_ms: u64) -> Hlc {
        let limit = now_ms.saturating_add(MAX_FUTURE_MS);
        if self.millis > limit {
            Hlc {
                millis: limit,
                counter: 0,
            }
        } else {
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_follows_the_wall_clock_and_never_goes_back() {
        let a = Hlc::default().next(1000);
        assert_eq!(
            a,
            Hlc {
                millis: 1000,
                counter: 0
            }
        );
        let b = a.next(1000);
        assert_eq!(
            b,
            Hlc {
                millis: 1000,
                counter: 1
            }
        );
        let c = b.next(900);
        assert!(c > b);
        assert_eq!(
            c.next(2000),
            Hlc {
                millis: 2000,
                counter: 0
            }
        );
    }

    #[test]
    fn far_future_timestamps_are_clamped() {
        let future = Hlc {
            millis: 10_000_000,
            counter: 7,
        };
        let next = future.next(1000);
        assert_eq!(next.millis, 1000 + MAX_FUTURE_MS);
        let near = Hlc {
            millis: 1500,
            counter: 3,
        };
        assert_eq!(
            near.next(1000),
            Hlc {
                millis: 1500,
                counter: 4
            }
        );
    }
}
