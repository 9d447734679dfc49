//! [`BudgetShare`]: with several lark-auth instances on one PostgreSQL store, each
//! instance's token-endpoint pacer gets the budget divided by the instances alive, so the
//! sum of all instances' polls, exchanges and refreshes stays under
//! `refresh.budget_per_sec` (INTERFACE.md, "Several instances on one shared store").
//!
//! Every [`SHARE_PERIOD`] it asks the store how many instances are alive
//! ([`Store::live_instances`]: on PostgreSQL, the instances' notification connections
//! seen by the server, which end with their process) on a blocking thread, and tells the
//! pacer ([`SetInstances`]). A store that cannot tell (sled: one process) or a failed
//! count changes nothing. An instance joining or dying changes the others' shares within
//! one period; until then the sum may exceed the budget by one instance's share at most
//! for that period (the platform's limit, ~50/s, is above the default budget, 40/s).

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tracing::debug;

use super::{SetInstances, TokenEndpointPacer};
use crate::store::Store;

/// How often the instances are counted.
pub const SHARE_PERIOD: Duration = Duration::from_secs(5);

/// The actor; see the module docs.
pub struct BudgetShare {
    store: Arc<dyn Store>,
    pacer: Addr<TokenEndpointPacer>,
    counting: bool,
}

impl BudgetShare {
    /// Counts the instances on `store` every [`SHARE_PERIOD`] (and at once) for `pacer`.
    pub fn new(store: Arc<dyn Store>, pacer: Addr<TokenEndpointPacer>) -> BudgetShare {
        BudgetShare {
            store,
            pacer,
            counting: false,
        }
    }

    fn count(&mut self, ctx: &mut Context<Self>) {
        if self.counting {
            return;
        }
        self.counting = true;
        let store = self.store.clone();
        let counted = actix_rt::task::spawn_blocking(move || store.live_instances());
        ctx.spawn(counted.into_actor(self).map(|result, act, _| {
            act.counting = false;
            match result {
                Ok(Ok(Some(n))) => act.pacer.do_send(SetInstances(n)),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => debug!(error = %e, "instances not counted; budget share kept"),
                Err(_) => {}
            }
        }));
    }
}

impl Actor for BudgetShare {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.count(ctx);
        ctx.run_interval(SHARE_PERIOD, |act, ctx| act.count(ctx));
    }
}
