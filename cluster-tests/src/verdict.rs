//! How a scenario ends: one line with what was published and whether the
//! history checker passed, printed where CI shows it, then a panic listing
//! the first violations if it did not.

use std::io::Write;

use crate::ledger::{Ledger, assert_no_violations};
use crate::subscriber::Tally;

/// Print `line` on the process's real stderr, past the test harness's
/// output capture, so CI shows it for passing tests too (verdicts, skips,
/// seeds).
pub fn announce(line: impl std::fmt::Display) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
    let _ = err.flush();
}

/// The end of a scenario: what was published, what the checker found.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The scenario's name.
    pub scenario: String,
    /// Publications acknowledged.
    pub acked: usize,
    /// Attempts retried (same idempotency key, next node).
    pub retries: u64,
    /// Acknowledgements that answered `duplicate` (a retry found the original).
    pub duplicates: u64,
    /// Everything the checker found wrong; empty means the scenario passed.
    pub violations: Vec<String>,
    /// Scenario-specific facts for the line (`key=value`).
    pub facts: Vec<(String, String)>,
}

impl Verdict {
    /// The verdict on `ledger` given the checker's `violations`; publishes
    /// never acknowledged count as violations (liveness once faults healed).
    pub fn new(scenario: &str, ledger: &Ledger, retries: u64, mut violations: Vec<String>) -> Self {
        let (failed, examples) = ledger.failures();
        if failed > 0 {
            violations.push(format!(
                "{failed} publish(es) never acknowledged after the faults healed, e.g. {examples:?}"
            ));
        }
        Self {
            scenario: scenario.to_string(),
            acked: ledger.acked_count(),
            retries,
            duplicates: ledger.duplicates,
            violations,
            facts: Vec::new(),
        }
    }

    /// Add `key=value` to the printed line.
    pub fn fact(mut self, key: &str, value: impl std::fmt::Display) -> Self {
        self.facts.push((key.to_string(), value.to_string()));
        self
    }

    /// Add what the subscribers saw (`subscribers`, `received`,
    /// `sessions`, `recovered`, `not_recovered`) to the printed line.
    pub fn subscribers(self, tally: &Tally) -> Self {
        self.fact("subscribers", tally.subscribers)
            .fact("received", tally.received)
            .fact("sessions", tally.sessions)
            .fact("recovered", tally.recovered)
            .fact("not_recovered", tally.not_recovered)
    }

    /// Add a violation found outside the history check.
    pub fn violation(mut self, what: impl Into<String>) -> Self {
        self.violations.push(what.into());
        self
    }

    /// Add a violation when `failed`.
    pub fn violation_if(self, failed: bool, what: impl Into<String>) -> Self {
        if failed { self.violation(what) } else { self }
    }

    /// Whether the checker found nothing wrong.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// Scan the running cluster's node and edge logs for panics (each a
    /// violation, counted as `panics=N` on the line), print the one-line
    /// verdict, then fail the test with the first violations if there are
    /// any.
    pub fn conclude(self) {
        let panics = crate::cluster::logged_panics();
        let mut verdict = self.fact("panics", panics.len());
        verdict.violations.extend(panics);
        announce(&verdict);
        let Self {
            scenario,
            violations,
            ..
        } = verdict;
        assert_no_violations(&scenario, &violations);
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "verdict: scenario={} acked={} retries={} duplicates={}",
            self.scenario, self.acked, self.retries, self.duplicates
        )?;
        for (k, v) in &self.facts {
            write!(f, " {k}={v}")?;
        }
        if self.passed() {
            write!(f, " checker=PASS")
        } else {
            write!(f, " checker=FAIL ({} violations)", self.violations.len())
        }
    }
}
