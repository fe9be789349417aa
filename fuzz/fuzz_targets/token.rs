//! An `Authorization` header value: whatever it is, it does not verify (the verifier has no keys; all the
//! parsing before the key lookup runs), and verification finishes without waiting.

use agentgate::fuzzing::verify_token;

fn check(data: &[u8]) {
    assert_eq!(verify_token(data), Some(false), "{:?}", String::from_utf8_lossy(data));
    let mut bearer = b"Bearer ".to_vec();
    bearer.extend_from_slice(data);
    assert_eq!(verify_token(&bearer), Some(false), "{:?}", String::from_utf8_lossy(&bearer));
}

fn main() {
    afl::fuzz!(|data: &[u8]| check(data));
}
