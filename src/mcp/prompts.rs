//! The body prompt, compiled into the binary: `prompts/agent_system.md` with its `@include` lines
//! replaced by the anatomy files, and the short channel instructions (Claude Code caps them at 2 KB).

/// The MCP `instructions`: what arrives, what it means, how to answer.
pub const INSTRUCTIONS: &str = include_str!("../../prompts/channel_instructions.md");

const AGENT_SYSTEM: &str = include_str!("../../prompts/agent_system.md");

const ANATOMY: &[(&str, &str)] = &[
    ("anatomy/identity.md", include_str!("../../prompts/anatomy/identity.md")),
    ("anatomy/security.md", include_str!("../../prompts/anatomy/security.md")),
    ("anatomy/channel-discipline.md", include_str!("../../prompts/anatomy/channel-discipline.md")),
];

/// The name of the MCP prompt that carries the body prompt.
pub const PROMPT_NAME: &str = "agentgate_rules";

/// The whole body prompt, includes resolved.
pub fn agent_system() -> String {
    let mut out = String::with_capacity(AGENT_SYSTEM.len() + ANATOMY.iter().map(|(_, t)| t.len()).sum::<usize>());
    for line in AGENT_SYSTEM.lines() {
        match line.trim().strip_prefix("@include ") {
            Some(name) => match ANATOMY.iter().find(|(n, _)| *n == name.trim()) {
                Some((_, text)) => out.push_str(text.trim_end()),
                None => out.push_str(&format!("<!-- missing include: {} -->", name.trim())),
            },
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_fit_claude_codes_cap() {
        assert!(INSTRUCTIONS.len() <= 2048, "instructions are {} bytes", INSTRUCTIONS.len());
        assert!(INSTRUCTIONS.contains("reply"));
    }

    #[test]
    fn every_include_resolves() {
        let body = agent_system();
        assert!(!body.contains("@include"), "an include was left in");
        assert!(!body.contains("missing include"));
        for (_, text) in ANATOMY {
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or_default();
            assert!(body.contains(first), "{first:?} not inlined");
        }
    }
}
