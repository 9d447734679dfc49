//! Refresh scheduling. [`index`] is the pure core (deadline index and pacer);
//! [`scheduler`] is the RefreshScheduler actor that drives it.

pub mod index;
pub mod scheduler;

pub use self::index::{DeadlineKind, Due, Pacer, RefreshIndex};
pub use self::scheduler::{
    GetDispatchLog, GetRefreshStats, GrantChanged, GrantUsed, ReauthNeeded, RefreshScheduler,
    RefreshStats, SchedulerSettings, SetEager, StatusCounts,
};
