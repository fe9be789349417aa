//! Teams HTML to text, the bridge's (inbound, for the agent) and Graph's: no panic, the bridge's output
//! wraps into a clean envelope, and text with no markup is a fixed point.

use agentgate::fuzzing::{html_to_text, wrap};

fn check(data: &[u8]) {
    let html = String::from_utf8_lossy(data);
    let text = html_to_text(&html);
    let w = wrap(&text, "f00d");
    assert!(!w.contains(['<', '>']) && w.matches('⟦').count() == 2, "{w:?}");
    let graph = agentgate::graph::html_to_text(&html);
    if !html.contains(['<', '&']) {
        assert_eq!(html_to_text(&text), text, "plain text is a fixed point");
        assert_eq!(agentgate::graph::html_to_text(&graph), graph, "plain text is a fixed point (Graph)");
    }
}

fn main() {
    afl::fuzz!(|data: &[u8]| check(data));
}
