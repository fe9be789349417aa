//! What an MCP session may do: the gateway's tool names, what each one touches, and a session's
//! [`ToolPolicy`] (read-only, a named set of tools, tools that need the owner's approval per call), built
//! from a `/mcp` token's `read_only` / `tools` / `approve` or from `agentgate mcp --read-only / --tool /
//! --approve`.
//!
//! The names live here, below the MCP adapter, so that the configuration can be checked at start; a unit
//! test in `mcp::session` keeps this list and the tools the sessions offer the same.

use std::collections::BTreeSet;

/// What a tool touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolKind {
    /// Reads only: the gateway's state, Teams or Graph; changes nothing anyone else sees.
    Read,
    /// Changes what other sessions get (acknowledges inbox entries, claims conversations), nothing in Teams.
    Inbox,
    /// Acts in Teams or Graph (sends, edits, deletes, reacts, adds people).
    Act,
}

/// Every tool the MCP sessions can offer (the `graph_*` ones only where a bot has an Agent User, its file
/// tools only where that Agent User has its files area on).
pub const TOOLS: &[(&str, ToolKind)] = &[
    ("status", ToolKind::Read),
    ("list_conversations", ToolKind::Read),
    ("read_messages", ToolKind::Read),
    ("wait_for_messages", ToolKind::Read),
    ("ack_messages", ToolKind::Inbox),
    ("claim_conversations", ToolKind::Inbox),
    ("release_conversations", ToolKind::Inbox),
    ("reply", ToolKind::Act),
    ("send_message", ToolKind::Act),
    ("send_to_user", ToolKind::Act),
    ("send_card", ToolKind::Act),
    ("update_card", ToolKind::Act),
    ("update_message", ToolKind::Act),
    ("delete_message", ToolKind::Act),
    ("react", ToolKind::Act),
    ("send_typing", ToolKind::Act),
    ("stream_start", ToolKind::Act),
    ("stream_append", ToolKind::Act),
    ("stream_finish", ToolKind::Act),
    ("list_members", ToolKind::Read),
    ("recent_audit", ToolKind::Read),
    ("graph_find_user", ToolKind::Read),
    ("graph_list_chats", ToolKind::Read),
    ("graph_read_chat", ToolKind::Read),
    ("graph_create_chat", ToolKind::Act),
    ("graph_send_message", ToolKind::Act),
    ("graph_add_member", ToolKind::Act),
    ("get_file", ToolKind::Read),
    ("send_file", ToolKind::Act),
    ("graph_list_files", ToolKind::Read),
    ("graph_search_files", ToolKind::Read),
    ("graph_find_sites", ToolKind::Read),
    ("graph_read_file", ToolKind::Read),
    ("graph_upload_file", ToolKind::Act),
    ("graph_share_file", ToolKind::Act),
    ("mail_reply", ToolKind::Act),
    ("mail_forward", ToolKind::Act),
    ("mail_send", ToolKind::Act),
    ("mail_draft", ToolKind::Act),
    ("calendar_events", ToolKind::Read),
    ("calendar_find_times", ToolKind::Read),
    ("calendar_create_event", ToolKind::Act),
    ("calendar_respond", ToolKind::Act),
];

/// Tools that continue what another tool started: their approval is that tool's (`stream_start`).
const CONTINUATIONS: &[&str] = &["stream_append", "stream_finish"];

/// What a tool touches, or `None` for a name that is not a tool.
pub fn kind_of(name: &str) -> Option<ToolKind> {
    TOOLS.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
}

/// The tool names, comma-separated (for errors that list the valid ones).
pub fn names() -> String {
    TOOLS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

/// Which list a policy error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyField {
    /// `tools` (`--tool`)
    Tools,
    /// `approve` (`--approve`)
    Approve,
}

/// Why a policy cannot be built: the list it is about, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub field: PolicyField,
    pub problem: String,
}

/// The tools a session may call and those that need the owner's approval for each call. The default
/// (every tool, no approvals) is what a session without restrictions gets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ToolPolicy {
    /// Only these (a `tools` list), or every tool.
    only: Option<BTreeSet<String>>,
    /// No tool that acknowledges, claims or acts.
    read_only: bool,
    /// Each call asks the owner first.
    approve: BTreeSet<String>,
}

impl ToolPolicy {
    /// A policy from a token's (or the command line's) settings. Every name must be a tool; a read-only
    /// policy may list only reading tools; `approve` may name only tools the policy allows that act in
    /// Teams (not a continuation of a stream).
    pub fn new(read_only: bool, tools: &[String], approve: &[String]) -> Result<Self, PolicyError> {
        let check = |field: PolicyField, list: &[String]| -> Result<BTreeSet<String>, PolicyError> {
            let mut out = BTreeSet::new();
            for raw in list {
                let name = raw.trim();
                if kind_of(name).is_none() {
                    return Err(PolicyError { field, problem: format!("`{name}` is not a tool; the tools are: {}", names()) });
                }
                out.insert(name.to_owned());
            }
            Ok(out)
        };
        let only = check(PolicyField::Tools, tools)?;
        let approve = check(PolicyField::Approve, approve)?;
        if read_only && let Some(t) = only.iter().find(|t| kind_of(t) != Some(ToolKind::Read)) {
            return Err(PolicyError {
                field: PolicyField::Tools,
                problem: format!("`{t}` is not a reading tool, and the token is read_only: drop one or the other"),
            });
        }
        let policy = Self { only: (!tools.is_empty()).then_some(only), read_only, approve: BTreeSet::new() };
        for t in &approve {
            if kind_of(t) != Some(ToolKind::Act) || CONTINUATIONS.contains(&t.as_str()) {
                let acting: Vec<&str> =
                    TOOLS.iter().filter(|(n, k)| *k == ToolKind::Act && !CONTINUATIONS.contains(n)).map(|(n, _)| *n).collect();
                return Err(PolicyError {
                    field: PolicyField::Approve,
                    problem: format!("`{t}` does not act in Teams; approval applies to: {}", acting.join(", ")),
                });
            }
            if !policy.allows(t) {
                return Err(PolicyError {
                    field: PolicyField::Approve,
                    problem: format!("`{t}` is not among the tools this token may use"),
                });
            }
        }
        Ok(Self { approve, ..policy })
    }

    /// Whether a session may see and call `tool`.
    pub fn allows(&self, tool: &str) -> bool {
        let Some(kind) = kind_of(tool) else { return false };
        (!self.read_only || kind == ToolKind::Read) && self.only.as_ref().is_none_or(|only| only.contains(tool))
    }

    /// Whether each call of `tool` waits for the owner's approval.
    pub fn needs_approval(&self, tool: &str) -> bool {
        self.approve.contains(tool)
    }

    /// No restriction at all.
    pub fn is_unrestricted(&self) -> bool {
        self.only.is_none() && !self.read_only && self.approve.is_empty()
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The named tools, when the policy names them.
    pub fn only(&self) -> Option<&BTreeSet<String>> {
        self.only.as_ref()
    }

    /// The tools that need approval.
    pub fn approved_tools(&self) -> &BTreeSet<String> {
        &self.approve
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_default_allows_every_tool_without_approval() {
        let p = ToolPolicy::default();
        assert!(p.is_unrestricted());
        assert!(TOOLS.iter().all(|(n, _)| p.allows(n) && !p.needs_approval(n)));
        assert!(!p.allows("no_such_tool"));
        assert_eq!(ToolPolicy::new(false, &[], &[]).unwrap(), p);
    }

    #[test]
    fn read_only_allows_reading_tools_only() {
        let p = ToolPolicy::new(true, &[], &[]).unwrap();
        for (name, kind) in TOOLS {
            assert_eq!(p.allows(name), *kind == ToolKind::Read, "{name}");
        }
        assert!(!p.allows("ack_messages") && !p.allows("claim_conversations") && !p.allows("reply"));
        let e = ToolPolicy::new(true, &v(&["status", "reply"]), &[]).unwrap_err();
        assert_eq!(e.field, PolicyField::Tools);
        assert!(e.problem.contains("`reply`") && e.problem.contains("read_only"), "{e:?}");
        let narrow = ToolPolicy::new(true, &v(&["status"]), &[]).unwrap();
        assert!(narrow.allows("status") && !narrow.allows("read_messages"));
    }

    #[test]
    fn a_named_set_allows_exactly_those() {
        let p = ToolPolicy::new(false, &v(&["status", " reply ", "read_messages"]), &v(&["reply"])).unwrap();
        let allowed: Vec<&str> = TOOLS.iter().map(|(n, _)| *n).filter(|n| p.allows(n)).collect();
        assert_eq!(allowed, vec!["status", "read_messages", "reply"]);
        assert!(p.needs_approval("reply") && !p.needs_approval("status"));
    }

    #[test]
    fn bad_names_and_approvals_are_refused_naming_the_valid_ones() {
        let e = ToolPolicy::new(false, &v(&["status", "sned_message"]), &[]).unwrap_err();
        assert_eq!(e.field, PolicyField::Tools);
        assert!(e.problem.contains("`sned_message`") && e.problem.contains("send_message, send_to_user"), "{e:?}");
        let e = ToolPolicy::new(false, &[], &v(&["rm_rf"])).unwrap_err();
        assert_eq!(e.field, PolicyField::Approve);
        assert!(e.problem.contains("the tools are:"), "{e:?}");
        for not_acting in ["status", "ack_messages", "stream_append"] {
            let e = ToolPolicy::new(false, &[], &v(&[not_acting])).unwrap_err();
            assert!(e.problem.contains("does not act") && e.problem.contains("delete_message"), "{not_acting}: {e:?}");
        }
        let e = ToolPolicy::new(false, &v(&["status"]), &v(&["delete_message"])).unwrap_err();
        assert!(e.problem.contains("not among the tools"), "{e:?}");
        let e = ToolPolicy::new(true, &[], &v(&["delete_message"])).unwrap_err();
        assert!(e.problem.contains("not among the tools"), "{e:?}");
    }
}
