//! Refresh scheduling. [`index`] is the pure core (the deadline index);
//! [`scheduler`] is the RefreshScheduler actor that drives it.

pub mod index;
pub mod scheduler;

pub use self::index::{DeadlineKind, Due, RefreshIndex};
pub use self::scheduler::{
    GetDispatchLog, GetRefreshStats, GrantChanged, GrantUsed, ReauthNeeded, RefreshScheduler,
    RefreshStats, SchedulerSettings, SetEager, StatusCounts,
};
