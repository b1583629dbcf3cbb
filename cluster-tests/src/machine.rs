//! What a scenario needs from the machine it runs on (network namespaces,
//! libfaketime, a high open-files limit) and what happens when the machine
//! lacks it: the scenario fails, loudly, naming what is missing. A suite
//! that silently skips its network faults proves nothing about them.
//!
//! The one way out is explicit: `HERALD_TEST_UNSUPPORTED` lists the
//! [`Capability`] names a kind of machine is known not to have
//! (comma-separated, e.g. `network,clock` in an unprivileged container).
//! A scenario needing one of those prints `UNSUPPORTED <scenario>: <why>`
//! and passes. CI never sets it; `scripts/test` installs everything.

use crate::verdict::announce;

/// The environment variable listing capabilities this kind of machine
/// lacks on purpose.
pub const UNSUPPORTED_VAR: &str = "HERALD_TEST_UNSUPPORTED";

/// Something a scenario needs from the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// Network namespaces, `ip` and `iptables` (root): cut and degrade links.
    Network,
    /// libfaketime: move one node's wall clock.
    Clock,
    /// Raising the open-files limit far enough for thousands of clients.
    OpenFiles,
}

impl Capability {
    /// The name used in [`UNSUPPORTED_VAR`].
    pub fn name(self) -> &'static str {
        match self {
            Capability::Network => "network",
            Capability::Clock => "clock",
            Capability::OpenFiles => "open-files",
        }
    }
}

/// What to do about a scenario given whether the machine has `capability`
/// (`available`) and what [`UNSUPPORTED_VAR`] says (`declared`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The capability is there: run.
    Run,
    /// Missing, and the machine kind is declared not to have it: print
    /// this line and pass without running.
    Unsupported(String),
    /// Missing without a declaration: fail with this message.
    Fail(String),
}

/// The pure rule behind [`require`].
pub fn decide(
    scenario: &str,
    capability: Capability,
    available: Result<(), String>,
    declared: Option<&str>,
) -> Decision {
    let Err(why) = available else {
        return Decision::Run;
    };
    let name = capability.name();
    let listed = declared.is_some_and(|list| list.split(',').any(|c| c.trim() == name));
    if listed {
        Decision::Unsupported(format!(
            "UNSUPPORTED {scenario}: {why} ({UNSUPPORTED_VAR} lists {name})"
        ))
    } else {
        Decision::Fail(format!(
            "{scenario} cannot run on this machine: {why}. Run scripts/test (it installs what \
             the suite needs, as root), or set {UNSUPPORTED_VAR}={name} to declare this kind \
             of machine unsupported for it"
        ))
    }
}

/// Whether `scenario` runs: true when the machine has `capability`; false
/// (after printing why) when it lacks it and [`UNSUPPORTED_VAR`] says so.
///
/// # Panics
/// When the capability is missing and not declared unsupported.
pub fn require(scenario: &str, capability: Capability, available: Result<(), String>) -> bool {
    let declared = std::env::var(UNSUPPORTED_VAR).ok();
    match decide(scenario, capability, available, declared.as_deref()) {
        Decision::Run => true,
        Decision::Unsupported(line) => {
            announce(line);
            false
        }
        Decision::Fail(message) => panic!("{message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_capability_fails_unless_declared_unsupported() {
        let missing = || Err("no iptables".to_string());
        assert_eq!(
            decide("s", Capability::Network, Ok(()), None),
            Decision::Run
        );
        assert!(matches!(
            decide("s", Capability::Network, missing(), None),
            Decision::Fail(m) if m.contains("no iptables") && m.contains("HERALD_TEST_UNSUPPORTED=network")
        ));
        // Declaring another capability does not excuse this one.
        assert!(matches!(
            decide("s", Capability::Network, missing(), Some("clock")),
            Decision::Fail(_)
        ));
        assert_eq!(
            decide("s", Capability::Network, missing(), Some("clock, network")),
            Decision::Unsupported(
                "UNSUPPORTED s: no iptables (HERALD_TEST_UNSUPPORTED lists network)".into()
            )
        );
    }
}
