//! Refresh scheduling. [`index`] is the pure core (deadline index and pacer) that the
//! RefreshScheduler actor will drive; the actor itself is not built yet.

pub mod index;

pub use self::index::{DeadlineKind, Due, Pacer, RefreshIndex};
