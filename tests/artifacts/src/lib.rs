//! Paths of the guest components that host tests run, built by `build.rs`.
//!
//! Depending on this crate compiles every tool under `tools/`, every agent under `agents/`
//! and every hostile guest program under `tests/guests/src/bin/` for `wasm32-wasip2`, so
//! tests never rely on committed `.wasm` files. Constants: `TOOL_<NAME>` for each tool
//! (e.g. [`TOOL_CALC`]), `AGENT_<NAME>` for each agent (e.g. [`AGENT_PLANNER`]),
//! `HOSTILE_<AREA>_<CASE>` for each hostile guest, and the lists [`TOOLS`], [`AGENTS`] and
//! [`HOSTILE_GUESTS`] as `(name, path)` pairs.

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_component_exists_and_is_a_component() {
        assert!(TOOLS.iter().any(|(name, _)| *name == "calc"), "{TOOLS:?}");
        let agents: Vec<&str> = AGENTS.iter().map(|(name, _)| *name).collect();
        assert_eq!(agents, ["executor", "planner", "reviewer"]);
        for (name, path) in TOOLS.iter().chain(AGENTS).chain(HOSTILE_GUESTS) {
            let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{name}: {path}: {e}"));
            // Component binaries: magic, then version 0x0d and layer 0x01.
            assert_eq!(
                &bytes[..8],
                b"\0asm\x0d\0\x01\0",
                "{name}: {path} is not a component"
            );
        }
        assert_eq!(
            TOOL_CALC,
            TOOLS.iter().find(|(n, _)| *n == "calc").unwrap().1
        );
        assert_eq!(
            AGENT_PLANNER,
            AGENTS.iter().find(|(n, _)| *n == "planner").unwrap().1
        );
    }
}
