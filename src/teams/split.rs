//! Message sizes and lossless splitting of long text.
//!
//! Teams measures a message in UTF-16 code units ("text, image links, etc., @-mentions and reactions encoded
//! as UTF-16"): about 100 KB is the documented maximum, 80 KB the recommended ceiling, and an oversize post
//! fails with `413 MessageSizeTooBig` (reference §4 "Message size"). Sizes here are UTF-16 code units.

use std::io;

use serde_json::Value;

#[cfg(test)]
/// Teams' documented (approximate) maximum message size, in UTF-16 code units (100 KB).
pub(crate) const TEAMS_MAX_ACTIVITY_UTF16: usize = 100 * 1024;

/// Our local ceiling for a whole serialized activity (80 KB, Teams' recommendation): anything larger is
/// refused before it is posted.
pub(crate) const LOCAL_MAX_ACTIVITY_UTF16: usize = 80 * 1024;

/// Default budget for the `text` of one message (38 KB): even when JSON escaping doubles every character (a
/// newline or quote becomes two), the text plus 4 KB for the rest of the activity stays under
/// [`LOCAL_MAX_ACTIVITY_UTF16`].
pub(crate) const MAX_TEXT_UTF16: usize = 38 * 1024;

/// An activity that is too large to post.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the activity is {size} UTF-16 units, over the limit of {limit}")]
pub(crate) struct SizeError {
    pub size: usize,
    pub limit: usize,
}

/// The length of `s` in UTF-16 code units.
pub(crate) fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// The size of the activity as serialized JSON (what is posted), in UTF-16 code units.
pub(crate) fn activity_size_utf16(activity: &Value) -> usize {
    let mut counter = Utf16Counter(0);
    match serde_json::to_writer(&mut counter, activity) {
        Ok(()) => counter.0,
        // Serializing a `Value` into a counter cannot fail; should it, the activity is not sendable.
        Err(_) => usize::MAX,
    }
}

/// Checks the serialized activity against [`LOCAL_MAX_ACTIVITY_UTF16`] and returns its size.
pub(crate) fn check_activity_size(activity: &Value) -> Result<usize, SizeError> {
    let size = activity_size_utf16(activity);
    if size > LOCAL_MAX_ACTIVITY_UTF16 { Err(SizeError { size, limit: LOCAL_MAX_ACTIVITY_UTF16 }) } else { Ok(size) }
}

/// Counts the UTF-16 code units of the UTF-8 written to it: one per character, two for a character of four
/// UTF-8 bytes (outside the BMP). Works however the writes split the bytes.
struct Utf16Counter(usize);

impl io::Write for Utf16Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            self.0 += match b {
                0x80..=0xBF => 0,
                0xF0..=0xFF => 2,
                _ => 1,
            };
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Splits `text` into chunks of at most `limit` UTF-16 code units each, losing and altering nothing: the
/// chunks concatenated are exactly `text`. Empty text gives no chunks; text within the limit gives one.
///
/// Each cut goes, in order of preference, after a paragraph break (a blank line), after a line break, or
/// after a run of whitespace, as long as that leaves the chunk at least half full; failing that, after the
/// last such boundary anywhere in the chunk; failing that (one long word), between two grapheme clusters;
/// and only when a single cluster is larger than the limit, between two characters. A surrogate pair (one
/// character) is never split, so the limit is raised to 2 if smaller. Grapheme clusters are approximated
/// without tables: combining marks, variation selectors, emoji modifiers, tags and zero-width joiners stay
/// with what precedes them, a ZWJ keeps its following character, regional indicators pair up into flags, and
/// `\r\n` stays together.
pub(crate) fn split_text(text: &str, limit: usize) -> Vec<String> {
    let limit = limit.max(2);
    let mut chunks = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        match cut_point(rest, limit) {
            Some(cut) => {
                chunks.push(rest[..cut].to_owned());
                rest = &rest[cut..];
            }
            None => {
                chunks.push(rest.to_owned());
                break;
            }
        }
    }
    chunks
}

/// Where to cut `s` so that the head is at most `limit` UTF-16 units (see [`split_text`]); `None` when all of
/// `s` fits. The cut is a byte offset, `0 < cut < s.len()`, on a character boundary.
pub(crate) fn cut_point(s: &str, limit: usize) -> Option<usize> {
    let limit = limit.max(2);
    let half = limit / 2;
    let mut units = 0usize;
    let mut prev: Option<char> = None;
    let mut regional_run = 0usize;
    // Whether the current line has only whitespace so far, whether a line break came before it, and whether
    // the last `\n` ended a blank line (so a cut after it is a paragraph break: `a\n\nb` after the second).
    let mut line_blank = true;
    let mut seen_newline = false;
    let mut ended_blank_line = false;
    // (byte offset, units before it) of the last boundary of each kind.
    let mut para: Option<(usize, usize)> = None;
    let mut line: Option<(usize, usize)> = None;
    let mut space: Option<(usize, usize)> = None;
    let mut grapheme: Option<usize> = None;
    let mut any: Option<usize> = None;
    let mut window_end = None;
    for (i, c) in s.char_indices() {
        if let Some(p) = prev {
            let cluster_break = is_grapheme_break(p, c, regional_run);
            any = Some(i);
            if cluster_break {
                grapheme = Some(i);
                if p == '\n' {
                    line = Some((i, units));
                    if ended_blank_line {
                        para = Some((i, units));
                    }
                } else if p.is_whitespace() && !c.is_whitespace() {
                    space = Some((i, units));
                }
            }
        }
        let cu = c.len_utf16();
        if units + cu > limit {
            window_end = Some(i);
            break;
        }
        units += cu;
        regional_run = if is_regional_indicator(c) { regional_run + 1 } else { 0 };
        if c == '\n' {
            ended_blank_line = line_blank && seen_newline;
            seen_newline = true;
            line_blank = true;
        } else if !c.is_whitespace() {
            line_blank = false;
        }
        prev = Some(c);
    }
    window_end?;
    let natural = [para, line, space];
    if let Some((at, _)) = natural.iter().flatten().find(|&&(_, u)| u >= half) {
        return Some(*at);
    }
    if let Some((at, _)) = natural.iter().flatten().max_by_key(|&&(at, _)| at) {
        return Some(*at);
    }
    grapheme.or(any).or_else(|| s.chars().next().map(char::len_utf8))
}

fn is_regional_indicator(c: char) -> bool {
    ('\u{1F1E6}'..='\u{1F1FF}').contains(&c)
}

/// Whether a grapheme cluster may end between `prev` and `next` (an approximation of UAX #29, see
/// [`split_text`]). `regional_run` is the number of regional indicators ending at `prev`.
fn is_grapheme_break(prev: char, next: char, regional_run: usize) -> bool {
    if prev == '\r' && next == '\n' {
        return false;
    }
    if prev == '\u{200D}' || is_extend(next) {
        return false;
    }
    if is_regional_indicator(prev) && is_regional_indicator(next) && regional_run % 2 == 1 {
        return false;
    }
    // Hangul conjoining jamo: vowels and trailing consonants join what precedes them.
    if matches!(next, '\u{1160}'..='\u{11FF}' | '\u{D7B0}'..='\u{D7FF}')
        && matches!(prev, '\u{1100}'..='\u{11FF}' | '\u{AC00}'..='\u{D7A3}')
    {
        return false;
    }
    true
}

/// Characters that never start a grapheme cluster: combining marks of the common scripts, ZWJ, variation
/// selectors, emoji skin-tone modifiers, tag characters and the combining enclosing keycap.
fn is_extend(c: char) -> bool {
    matches!(c,
        '\u{0300}'..='\u{036F}'
        | '\u{0483}'..='\u{0489}'
        | '\u{0591}'..='\u{05BD}'
        | '\u{05BF}' | '\u{05C1}'..='\u{05C2}' | '\u{05C4}'..='\u{05C5}' | '\u{05C7}'
        | '\u{0610}'..='\u{061A}'
        | '\u{064B}'..='\u{065F}'
        | '\u{0670}'
        | '\u{06D6}'..='\u{06DC}' | '\u{06DF}'..='\u{06E4}' | '\u{06E7}'..='\u{06E8}' | '\u{06EA}'..='\u{06ED}'
        | '\u{0900}'..='\u{0903}' | '\u{093A}'..='\u{093C}' | '\u{093E}'..='\u{094F}' | '\u{0951}'..='\u{0957}' | '\u{0962}'..='\u{0963}'
        | '\u{0981}'..='\u{0983}' | '\u{09BC}' | '\u{09BE}'..='\u{09CD}' | '\u{09D7}'
        | '\u{0E31}' | '\u{0E34}'..='\u{0E3A}' | '\u{0E47}'..='\u{0E4E}'
        | '\u{1AB0}'..='\u{1AFF}'
        | '\u{1DC0}'..='\u{1DFF}'
        | '\u{200C}'..='\u{200D}'
        | '\u{20D0}'..='\u{20FF}'
        | '\u{302A}'..='\u{302F}'
        | '\u{3099}'..='\u{309A}'
        | '\u{FE00}'..='\u{FE0F}'
        | '\u{FE20}'..='\u{FE2F}'
        | '\u{1F3FB}'..='\u{1F3FF}'
        | '\u{E0020}'..='\u{E007F}'
        | '\u{E0100}'..='\u{E01EF}'
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(text: &str, limit: usize) -> Vec<String> {
        let chunks = split_text(text, limit);
        assert_eq!(chunks.concat(), text, "lossless");
        for c in &chunks {
            assert!(!c.is_empty());
            assert!(utf16_len(c) <= limit.max(2), "chunk {c:?} over {limit}");
        }
        chunks
    }

    #[test]
    fn short_and_empty_text() {
        assert!(split_text("", 10).is_empty());
        assert_eq!(check("hello", 10), ["hello"]);
        assert_eq!(check("hello", 5), ["hello"], "exactly at the limit is one chunk");
        assert_eq!(check("hello!", 5), ["hello", "!"], "one over the limit");
    }

    #[test]
    fn prefers_paragraphs_then_lines_then_spaces() {
        let text = "First paragraph here.\n\nSecond one, a bit longer.\nIts second line.";
        assert_eq!(check(text, 40), ["First paragraph here.\n\n", "Second one, a bit longer.\n", "Its second line."]);
        let lines = "line one is here\nline two is here\nline three";
        assert_eq!(check(lines, 20), ["line one is here\n", "line two is here\n", "line three"]);
        let words = "alpha beta gamma delta epsilon";
        assert_eq!(check(words, 12), ["alpha beta ", "gamma delta ", "epsilon"]);
        // A paragraph break too early (under half the chunk) loses to a later line break.
        let early = "a\n\nbbbbbbbbbb cccccccccc\ndddd";
        assert_eq!(check(early, 26)[0], "a\n\nbbbbbbbbbb cccccccccc\n");
        // CRLF is kept together and counts as a line break.
        assert_eq!(check("abc def\r\nghi jkl", 10), ["abc def\r\n", "ghi jkl"]);
    }

    #[test]
    fn hard_splits_a_long_word() {
        assert_eq!(check("abcdefghij", 4), ["abcd", "efgh", "ij"]);
    }

    #[test]
    fn never_splits_a_surrogate_pair_and_counts_utf16() {
        let text = "😀😀😀"; // 3 × 2 units
        assert_eq!(utf16_len(text), 6);
        assert_eq!(check(text, 3), ["😀", "😀", "😀"]);
        assert_eq!(check(text, 4), ["😀😀", "😀"]);
        assert_eq!(check("a😀", 2), ["a", "😀"]);
        // A limit of 1 cannot hold a surrogate pair: it is raised to 2.
        assert_eq!(split_text("😀😀", 1), ["😀", "😀"]);
    }

    #[test]
    fn keeps_emoji_clusters_together() {
        let family = "👨\u{200D}👩\u{200D}👧\u{200D}👦"; // 11 units, one cluster
        let text = format!("ab{family}{family}");
        let chunks = check(&text, 12);
        assert_eq!(chunks, ["ab", family, family]);
        let thumbs = "👍🏽"; // skin tone modifier
        assert_eq!(check(&format!("{thumbs}{thumbs}"), 5), [thumbs, thumbs]);
        let flags = "🇫🇷🇩🇪🇯🇵"; // three flags of two regional indicators each
        assert_eq!(check(flags, 6), ["🇫🇷", "🇩🇪", "🇯🇵"]);
        let accents = "e\u{301}e\u{301}e\u{301}"; // e + combining acute
        assert_eq!(check(accents, 3), ["e\u{301}", "e\u{301}", "e\u{301}"]);
        let keycap = "1\u{FE0F}\u{20E3}2\u{FE0F}\u{20E3}";
        assert_eq!(check(keycap, 4), ["1\u{FE0F}\u{20E3}", "2\u{FE0F}\u{20E3}"]);
        // A cluster larger than the limit has to be cut, but only between characters.
        let cut = check(family, 4);
        assert_eq!(cut.concat(), family);
        assert!(cut.len() > 1);
    }

    #[test]
    fn splits_cjk_without_spaces() {
        let text = "日本語のテキストは空白がありません。次の文です。";
        let chunks = check(text, 10);
        assert_eq!(chunks[0], "日本語のテキストは空");
        assert!(chunks.iter().all(|c| utf16_len(c) <= 10));
        let with_lines = "第一段落です。\n第二段落です。";
        assert_eq!(check(with_lines, 10), ["第一段落です。\n", "第二段落です。"]);
    }

    #[test]
    fn random_text_round_trips() {
        let alphabet: Vec<&str> =
            vec!["a", "b", " ", "\n", "\n\n", "é", "e\u{301}", "日", "😀", "👨\u{200D}👩\u{200D}👧", "🇫🇷", "\r\n", "\t", "👍🏽"];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..300 {
            let len = rng.usize(0..200);
            let text: String = (0..len).map(|_| alphabet[rng.usize(0..alphabet.len())]).collect();
            let limit = rng.usize(1..40);
            let chunks = check(&text, limit);
            for c in &chunks {
                // No chunk starts inside a cluster (when the limit can hold the largest cluster, 8 units).
                if limit >= 8 {
                    let first = c.chars().next().unwrap();
                    assert!(!is_extend(first) && first != '\u{200D}', "{c:?}");
                }
            }
        }
    }

    #[test]
    fn activity_size_counts_the_serialized_json_in_utf16() {
        let a = json!({"type": "message", "text": "😀日"});
        let serialized = serde_json::to_string(&a).unwrap();
        assert_eq!(activity_size_utf16(&a), serialized.encode_utf16().count());
        assert_eq!(activity_size_utf16(&a), serialized.len() - 4 - 3 + 2 + 1);
        assert_eq!(check_activity_size(&a), Ok(activity_size_utf16(&a)));
        let big = json!({"type": "message", "text": "x".repeat(LOCAL_MAX_ACTIVITY_UTF16)});
        let err = check_activity_size(&big).unwrap_err();
        assert_eq!(err.limit, LOCAL_MAX_ACTIVITY_UTF16);
        assert!(err.size > LOCAL_MAX_ACTIVITY_UTF16);
        const { assert!(LOCAL_MAX_ACTIVITY_UTF16 < TEAMS_MAX_ACTIVITY_UTF16) };
    }

    #[test]
    fn default_text_budget_fits_even_when_escaping_doubles_it() {
        const { assert!(2 * MAX_TEXT_UTF16 + 4096 <= LOCAL_MAX_ACTIVITY_UTF16) };
        let text: String = "\"\n".repeat(MAX_TEXT_UTF16 / 2);
        assert_eq!(utf16_len(&text), MAX_TEXT_UTF16);
        let a = json!({
            "type": "message", "text": text, "replyToId": "1795320403656",
            "from": {"id": "28:test-bot-app-id", "name": "Rusty Bot"},
            "recipient": {"id": "29:alice", "name": "Alice Tester", "aadObjectId": "aaaaaaaa-0000-0000-0000-000000000001"},
            "conversation": {"id": "19:team-general@thread.tacv2;messageid=1795320446875", "conversationType": "channel",
                             "tenantId": "11111111-2222-3333-4444-555555555555"},
        });
        assert!(check_activity_size(&a).is_ok());
    }
}

#[cfg(test)]
mod proptests {
    //! Properties of [`split_text`]: lossless, within the limit in UTF-16 units, cut only on character
    //! boundaries (so never inside a surrogate pair), and one part when the text fits.

    use proptest::prelude::*;

    use super::*;

    /// Text from pieces that exercise every kind of boundary: words, spaces, line and paragraph breaks,
    /// CRLF, combining marks, ZWJ sequences, skin tones, flags, keycaps, CJK and astral characters.
    fn text() -> impl Strategy<Value = String> {
        let pieces = vec![
            "a",
            "bc",
            " ",
            "  ",
            "\t",
            "\n",
            "\n\n",
            "\r\n",
            "é",
            "e\u{301}",
            "日本",
            "😀",
            "👨\u{200D}👩\u{200D}👧",
            "🇫🇷",
            "🇩",
            "👍🏽",
            "1\u{FE0F}\u{20E3}",
            "\u{200D}",
            "\u{1100}\u{1161}",
            "𝄞",
        ];
        prop_oneof![proptest::collection::vec(proptest::sample::select(pieces), 0..120).prop_map(|p| p.concat()), ".{0,200}",]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn parts_concatenate_to_the_text_and_stay_within_the_limit(text in text(), limit in 0usize..48) {
            let parts = split_text(&text, limit);
            prop_assert_eq!(parts.concat(), text.as_str());
            for p in &parts {
                prop_assert!(!p.is_empty());
                prop_assert!(utf16_len(p) <= limit.max(2), "{:?} over {}", p, limit);
                // Each part is whole characters: its UTF-16 form neither starts with a low surrogate nor
                // ends with a high one.
                let units: Vec<u16> = p.encode_utf16().collect();
                prop_assert!(!units.first().is_some_and(|u| (0xDC00..0xE000).contains(u)));
                prop_assert!(!units.last().is_some_and(|u| (0xD800..0xDC00).contains(u)));
            }
            let units: Vec<u16> = parts.iter().flat_map(|p| p.encode_utf16()).collect();
            prop_assert_eq!(units, text.encode_utf16().collect::<Vec<_>>());
            if utf16_len(&text) <= limit.max(2) {
                prop_assert_eq!(parts.len(), usize::from(!text.is_empty()), "text that fits is one part");
            }
        }

        #[test]
        fn cut_points_are_character_boundaries_inside_the_text(text in text(), limit in 0usize..48) {
            match cut_point(&text, limit) {
                Some(cut) => {
                    prop_assert!(0 < cut && cut < text.len() && text.is_char_boundary(cut), "{cut} in {text:?}");
                    prop_assert!(utf16_len(&text[..cut]) <= limit.max(2));
                }
                None => prop_assert!(utf16_len(&text) <= limit.max(2)),
            }
        }

        #[test]
        fn the_activity_size_is_the_serialized_length_in_utf16(text in text()) {
            let a = serde_json::json!({"type": "message", "text": text});
            prop_assert_eq!(activity_size_utf16(&a), serde_json::to_string(&a).unwrap().encode_utf16().count());
        }
    }
}
