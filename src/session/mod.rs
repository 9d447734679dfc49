//! Authorization sessions. Today: the pure state machine ([`machine`]); the
//! AuthSessionActor and RouterActor that drive it come next (issue 4).

pub mod cards;
pub mod machine;
