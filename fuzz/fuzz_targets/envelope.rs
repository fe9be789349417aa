//! The untrusted-content envelope: whatever the body, the result is one envelope whose only markers are
//! its own, with no angle bracket; meta values hold nothing that could break out of an attribute.

use agentgate::fuzzing::{meta_value, new_nonce, wrap};

fn check(data: &[u8]) {
    let body = String::from_utf8_lossy(data);
    let nonce = new_nonce();
    let w = wrap(&body, &nonce);
    let open = format!("⟦untrusted_content {nonce}⟧\n");
    let close = format!("\n⟦/untrusted_content {nonce}⟧");
    assert!(w.starts_with(&open) && w.ends_with(&close), "{w:?}");
    assert_eq!(w.matches('⟦').count(), 2, "{w:?}");
    assert_eq!(w.matches('⟧').count(), 2, "{w:?}");
    assert!(!w.contains(['<', '>']), "{w:?}");
    let m = meta_value(&body);
    assert!(m.chars().count() <= 200, "{m:?}");
    assert!(!m.contains(['<', '>', '"', '\'', '&', '`', '⟦', '⟧', '\n']), "{m:?}");
}

fn main() {
    afl::fuzz!(|data: &[u8]| check(data));
}
