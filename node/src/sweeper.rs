//! The leader's sweep: reclaims replicated channel state by committing a
//! [`Command::Sweep`] that carries the leader's time and every namespace's
//! TTL, so every replica drops the same publications and forgets the same
//! channels ([`ChannelTable::sweep`]). It only decides *when*: nothing here
//! touches the state except through Raft, and a sweep is proposed only when
//! one would reclaim something, so an idle cluster writes nothing.
//!
//! Every node (leader or not) also publishes how many publications it
//! retains (`herald_history_publications`; `herald_channels` comes with the
//! Raft gauges).
//!
//! [`ChannelTable::sweep`]: crate::channels::ChannelTable::sweep

use std::sync::Arc;
use std::time::Duration;

use crate::channels::Sweep;
use crate::namespace::Namespaces;
use crate::raft::Command;
use crate::raft::state_machine::StateMachine;
use crate::replica::Replica;

/// How often the retained-publications gauge is refreshed when sweeping is off.
const GAUGES_WITHOUT_SWEEP: Duration = Duration::from_secs(10);

/// Run until the runtime stops: every `every` (zero: never sweep), refresh
/// the gauges and, on the leader, sweep if there is anything to reclaim.
pub async fn run(replica: Arc<Replica>, sm: StateMachine, namespaces: Namespaces, every: Duration) {
    let mut tick = tokio::time::interval(if every.is_zero() {
        GAUGES_WITHOUT_SWEEP
    } else {
        every
    });
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ttls = namespaces.ttls_ms();
    let log_clock = sm.log_clock();
    loop {
        tick.tick().await;
        gauges(&sm);
        if every.is_zero() || ttls.is_empty() || !replica.is_leader() {
            continue;
        }
        let now_ms = crate::proposer::stamp(None, *log_clock.borrow());
        let due = sm
            .state()
            .read()
            .expect("state lock poisoned")
            .channels
            .sweepable(&ttls, now_ms);
        if !due {
            continue;
        }
        let sweep = Sweep {
            now_ms,
            ttls: ttls.clone(),
        };
        match replica.submit(Command::Sweep(sweep)).await {
            Ok(()) => {
                metrics::counter!("herald_sweeps_total").increment(1);
                gauges(&sm);
            }
            Err(e) => tracing::warn!(error = %e, "sweep not committed; retried next interval"),
        }
    }
}

fn gauges(sm: &StateMachine) {
    let retained = {
        let state = sm.state();
        let s = state.read().expect("state lock poisoned");
        s.channels.retained()
    };
    metrics::gauge!("herald_history_publications").set(retained as f64);
}
