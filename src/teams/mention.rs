//! Mentions: removing the bot's own `<at>…</at>` from inbound text, and building outbound mentions.
//!
//! A Teams mention is a run of text (`<at>Rusty Bot</at>`) plus an entity
//! `{type:"mention", text:"<at>Rusty Bot</at>", mentioned:{id, name}}`. Only mentions whose entity names the
//! bot are removed; other people's mentions and every entity stay as they are.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::activity::Activity;

/// Whether two bot ids name the same bot: case-insensitive, with or without the `28:` prefix Teams puts in
/// front of bot ids (`28:<appId>` and `<appId>` are the same bot). Empty ids never match.
pub(crate) fn same_bot_id(a: &str, b: &str) -> bool {
    fn bare(s: &str) -> &str {
        let s = s.trim();
        match s.get(..3) {
            Some(p) if p.eq_ignore_ascii_case("28:") => &s[3..],
            _ => s,
        }
    }
    let (a, b) = (bare(a), bare(b));
    !a.is_empty() && a.eq_ignore_ascii_case(b)
}

/// Whether the activity carries a mention entity for the bot (`mentioned.id` is the bot, see [`same_bot_id`]).
pub(crate) fn is_bot_mentioned(activity: &Activity, bot_id: &str) -> bool {
    super::entities(activity).iter().filter_map(as_mention).any(|m| same_bot_id(m.id, bot_id))
}

/// Removes every occurrence of the bot's own mention from `activity.text` and returns how many were removed.
///
/// The occurrences are found from the mention entities whose `mentioned.id` is the bot ([`same_bot_id`]):
/// the entity's exact `text` (compared case-insensitively), and any `<at …>name</at>` tag whose content is
/// the mentioned name (case-insensitive, HTML entities such as `&amp;` and `&nbsp;` decoded, attributes on
/// the tag allowed), which also covers entities without `text`. The whitespace left at each removal
/// (spaces, tabs, no-break spaces, `&nbsp;`) collapses to one space, or to nothing at the start or end of
/// the text or of a line, before punctuation, and next to a block tag such as `<p>`; line breaks are kept,
/// and the result is trimmed. Text is untouched when nothing was removed.
///
/// Other people's mentions stay, and so do all entities (the bot's mention entity included, so
/// [`is_bot_mentioned`] still answers afterwards). If someone else in the message has the same display
/// name as the bot, at most as many tags are removed as the bot has mention entities.
pub(crate) fn strip_bot_mention(activity: &mut Activity, bot_id: &str) -> usize {
    let Some(text) = activity.text.as_deref() else { return 0 };
    let mut bot_texts: Vec<String> = Vec::new();
    let mut bot_names: HashMap<String, usize> = HashMap::new();
    let mut other_names: Vec<String> = Vec::new();
    for m in super::entities(activity).iter().filter_map(as_mention) {
        let name = m.name.map(normalize_name).or_else(|| m.text.and_then(at_tag_inner).map(|i| normalize_name(&decode_html(i))));
        if same_bot_id(m.id, bot_id) {
            if let Some(t) = m.text.filter(|t| !t.trim().is_empty()) {
                bot_texts.push(t.to_owned());
            }
            if let Some(n) = name.filter(|n| !n.is_empty()) {
                *bot_names.entry(n).or_default() += 1;
            }
        } else if let Some(n) = name {
            other_names.push(n);
        }
    }
    if bot_texts.is_empty() && bot_names.is_empty() {
        return 0;
    }

    // Candidate ranges: exact entity texts, then `<at>` tags naming the bot.
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for t in &bot_texts {
        ranges.extend(find_all_ci(text, t));
    }
    for (start, end, inner) in at_tags(text) {
        if bot_names.contains_key(&normalize_name(&decode_html(inner))) {
            ranges.push((start, end));
        }
    }
    ranges.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
    for (s, e) in ranges {
        match merged.last_mut() {
            Some(last) if s < last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    // Someone else shares the bot's display name: keep the removals per name to the bot's entity count.
    if bot_names.keys().any(|n| other_names.contains(n)) {
        let mut budget = bot_names.clone();
        merged.retain(|&(s, e)| {
            let key = at_tag_inner(&text[s..e]).map(|i| normalize_name(&decode_html(i)));
            match key.and_then(|k| if other_names.contains(&k) { budget.get_mut(&k) } else { None }) {
                Some(0) => false,
                Some(n) => {
                    *n -= 1;
                    true
                }
                None => true,
            }
        });
    }
    if merged.is_empty() {
        return 0;
    }

    let mut out = String::with_capacity(text.len());
    let mut pending_ws = false;
    let mut cursor = 0;
    for (i, &(s, e)) in merged.iter().enumerate() {
        let seg = &text[cursor..s];
        if i == 0 {
            out.push_str(seg);
        } else {
            join(&mut out, seg, &mut pending_ws);
        }
        cursor = e;
    }
    join(&mut out, &text[cursor..], &mut pending_ws);
    let trimmed = trim_end_ws(trim_start_ws(&out).0).0.to_owned();
    activity.text = Some(trimmed);
    merged.len()
}

/// An outbound mention of `user_id`: the text to put in the message (`<at>name</at>`, with `<`, `>` and `&`
/// in the name escaped) and the matching `mention` entity for the activity's `entities`.
pub(crate) fn mention(user_id: &str, name: &str) -> (String, Value) {
    let text = format!("<at>{}</at>", escape_html(name));
    let entity = json!({"type": "mention", "text": text, "mentioned": {"id": user_id, "name": name}});
    (text, entity)
}

struct Mention<'a> {
    id: &'a str,
    name: Option<&'a str>,
    text: Option<&'a str>,
}

fn as_mention(entity: &Value) -> Option<Mention<'_>> {
    if entity.get("type")?.as_str()? != "mention" {
        return None;
    }
    let mentioned = entity.get("mentioned")?;
    Some(Mention {
        id: mentioned.get("id")?.as_str()?,
        name: mentioned.get("name").and_then(Value::as_str),
        text: entity.get("text").and_then(Value::as_str),
    })
}

/// Appends `seg` (the text after a removed mention) to `out`, collapsing the whitespace at the seam.
fn join(out: &mut String, seg: &str, pending_ws: &mut bool) {
    let (left, trimmed_left) = trim_end_hws(out);
    let keep = left.len();
    *pending_ws |= trimmed_left;
    out.truncate(keep);
    let (right, trimmed_right) = trim_start_hws(seg);
    *pending_ws |= trimmed_right;
    if right.is_empty() {
        return;
    }
    if needs_space(out, right, *pending_ws) {
        out.push(' ');
    }
    out.push_str(right);
    *pending_ws = false;
}

fn needs_space(left: &str, right: &str, had_ws: bool) -> bool {
    let (Some(l), Some(r)) = (left.chars().next_back(), right.chars().next()) else { return false };
    if l == '\n' || r == '\n' || r == '\r' {
        return false;
    }
    // Next to a block-ish tag (`<p>`, `<br>`, `<div>`) or before a closing tag no space is wanted; after a
    // closing tag (`</at>`, `</b>`) the text flows on.
    if l == '>' && !last_tag_is_closing(left) {
        return false;
    }
    if right.starts_with("</") || matches!(r, ',' | '.' | ';' | ':' | '!' | '?' | ')') {
        return false;
    }
    had_ws || (l.is_alphanumeric() && r.is_alphanumeric())
}

fn last_tag_is_closing(s: &str) -> bool {
    s.rfind('<').is_some_and(|i| s[i..].starts_with("</"))
}

const NBSP_ENTITY: &str = "&nbsp;";

fn is_hws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\u{a0}' | '\u{202f}' | '\u{2007}')
}

fn trim_end_hws(s: &str) -> (&str, bool) {
    let mut cur = s;
    loop {
        if let Some(c) = cur.chars().next_back().filter(|&c| is_hws(c)) {
            cur = &cur[..cur.len() - c.len_utf8()];
        } else if cur.len().checked_sub(NBSP_ENTITY.len()).and_then(|at| cur.get(at..)).is_some_and(|t| t.eq_ignore_ascii_case(NBSP_ENTITY))
        {
            cur = &cur[..cur.len() - NBSP_ENTITY.len()];
        } else {
            return (cur, cur.len() != s.len());
        }
    }
}

fn trim_start_hws(s: &str) -> (&str, bool) {
    let mut cur = s;
    loop {
        if let Some(c) = cur.chars().next().filter(|&c| is_hws(c)) {
            cur = &cur[c.len_utf8()..];
        } else if cur.get(..NBSP_ENTITY.len()).is_some_and(|p| p.eq_ignore_ascii_case(NBSP_ENTITY)) {
            cur = &cur[NBSP_ENTITY.len()..];
        } else {
            return (cur, cur.len() != s.len());
        }
    }
}

/// Trims all whitespace (line breaks included) and `&nbsp;` at the end.
fn trim_end_ws(s: &str) -> (&str, bool) {
    let mut cur = s;
    loop {
        let (t, a) = trim_end_hws(cur);
        let u = t.trim_end();
        if !a && u.len() == t.len() {
            return (u, u.len() != s.len());
        }
        cur = u;
    }
}

fn trim_start_ws(s: &str) -> (&str, bool) {
    let mut cur = s;
    loop {
        let (t, a) = trim_start_hws(cur);
        let u = t.trim_start();
        if !a && u.len() == t.len() {
            return (u, u.len() != s.len());
        }
        cur = u;
    }
}

/// Every non-overlapping occurrence of `needle` in `hay`, compared case-insensitively (Unicode lowercase,
/// char by char), as byte ranges of `hay`.
fn find_all_ci(hay: &str, needle: &str) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    if needle.is_empty() {
        return found;
    }
    let mut i = 0;
    while i < hay.len() {
        if let Some(end) = match_ci_at(hay, i, needle) {
            found.push((i, end));
            i = end;
        } else {
            i += hay[i..].chars().next().map_or(1, char::len_utf8);
        }
    }
    found
}

/// If `needle` matches `hay` at byte `at` case-insensitively, the end of the match.
fn match_ci_at(hay: &str, at: usize, needle: &str) -> Option<usize> {
    let mut h = hay[at..].char_indices();
    for n in needle.chars() {
        let (_, c) = h.next()?;
        if c != n && !c.to_lowercase().eq(n.to_lowercase()) {
            return None;
        }
    }
    Some(h.next().map_or(hay.len(), |(j, _)| at + j))
}

/// The `<at …>inner</at>` tags of `text`: (start, end, inner), tags matched case-insensitively.
fn at_tags(text: &str) -> Vec<(usize, usize, &str)> {
    let mut tags = Vec::new();
    let mut from = 0;
    while let Some((start, open_end)) = next_at_open(text, from) {
        let Some((close_start, close_end)) = find_all_ci(&text[open_end..], "</at>").first().map(|&(s, e)| (open_end + s, open_end + e))
        else {
            break;
        };
        tags.push((start, close_end, &text[open_end..close_start]));
        from = close_end;
    }
    tags
}

/// The next `<at>` or `<at attr…>` opening tag at or after `from`: (start, end of the tag).
fn next_at_open(text: &str, from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while let Some(off) = text[i..].find('<') {
        let start = i + off;
        let rest = &text[start + 1..];
        if rest.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("at")) {
            let after = &rest[2..];
            if after.starts_with('>') || after.starts_with(char::is_whitespace) {
                let close = after.find('>')?;
                return Some((start, start + 3 + close + 1));
            }
        }
        i = start + 1;
    }
    None
}

/// The content of a text that is exactly one `<at>` tag.
fn at_tag_inner(s: &str) -> Option<&str> {
    match at_tags(s).as_slice() {
        [(0, end, inner)] if *end == s.len() => Some(inner),
        _ => None,
    }
}

/// Lowercased, whitespace-normalised display name for comparisons.
fn normalize_name(s: &str) -> String {
    s.split(|c: char| c.is_whitespace() || is_hws(c)).filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ").to_lowercase()
}

/// HTML entities decoded (the HTML5 table, numeric `&#…;` / `&#x…;`); unknown ones are kept as they are.
fn decode_html(s: &str) -> String {
    html_escape::decode_html_entities(s).into_owned()
}

/// `&`, `<` and `>` escaped for element content.
fn escape_html(s: &str) -> String {
    html_escape::encode_text(s).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::teams::testdata;

    fn message(text: &str, entities: Value) -> Activity {
        serde_json::from_value(json!({
            "type": "message", "text": text,
            "recipient": {"id": "28:test-bot-app-id", "name": "Rusty Bot"},
            "conversation": {"id": "19:team-general@thread.tacv2;messageid=1", "conversationType": "channel"},
            "entities": entities,
        }))
        .unwrap()
    }

    fn bot_mention(text: Option<&str>, id: &str, name: &str) -> Value {
        let mut e = json!({"type": "mention", "mentioned": {"id": id, "name": name}});
        if let Some(t) = text {
            e["text"] = json!(t);
        }
        e
    }

    #[test]
    fn bot_ids_match_with_or_without_the_28_prefix_in_any_case() {
        assert!(same_bot_id("28:test-bot-app-id", "test-bot-app-id"));
        assert!(same_bot_id("test-bot-app-id", "28:TEST-BOT-APP-ID"));
        assert!(same_bot_id("28:ABC", "28:abc"));
        assert!(!same_bot_id("29:abc", "abc"));
        assert!(!same_bot_id("", "28:"));
        assert!(!same_bot_id("abc", "abcd"));
    }

    #[test]
    fn strips_the_playground_channel_mention() {
        let mut a = testdata::activity(testdata::CHANNEL_MENTION);
        let entities_before = a.extra["entities"].clone();
        assert!(is_bot_mentioned(&a, "00000000-0000-0000-0000-00000000000011"));
        assert_eq!(strip_bot_mention(&mut a, "00000000-0000-0000-0000-00000000000011"), 1);
        assert_eq!(a.text.as_deref(), Some("hi channel"));
        assert_eq!(a.extra["entities"], entities_before, "entities are not touched");
    }

    #[test]
    fn strips_a_prefixed_bot_id_given_bare_or_prefixed() {
        for bot in ["test-bot-app-id", "28:test-bot-app-id", "28:Test-Bot-App-Id"] {
            let mut a = testdata::activity(testdata::CHANNEL_MENTION_PREFIXED);
            assert_eq!(strip_bot_mention(&mut a, bot), 1, "{bot}");
            assert_eq!(a.text.as_deref(), Some("hi channel"));
        }
    }

    #[test]
    fn strips_every_differently_cased_occurrence_and_keeps_other_mentions() {
        let entities = json!([
            bot_mention(Some("<at>Rusty Bot</at>"), "28:test-bot-app-id", "Rusty Bot"),
            bot_mention(Some("<at>Alice Tester</at>"), "29:alice", "Alice Tester"),
            bot_mention(Some("<at>rusty bot</at>"), "test-bot-app-id", "Rusty Bot"),
            {"type": "clientInfo", "locale": "en-US"},
        ]);
        let mut a = message(
            "<at>Rusty Bot</at> please ask <at>Alice Tester</at> and <AT>rusty BOT</AT>, then <at>RUSTY BOT</at>  summarise.",
            entities.clone(),
        );
        assert_eq!(strip_bot_mention(&mut a, "test-bot-app-id"), 3);
        assert_eq!(a.text.as_deref(), Some("please ask <at>Alice Tester</at> and, then summarise."));
        assert_eq!(a.extra["entities"], entities);
    }

    #[test]
    fn falls_back_to_the_name_when_the_entity_has_no_text() {
        let mut a = message("Hey <at>rusty bot</at> what's up", json!([bot_mention(None, "28:test-bot-app-id", "Rusty Bot")]));
        assert_eq!(strip_bot_mention(&mut a, "28:test-bot-app-id"), 1);
        assert_eq!(a.text.as_deref(), Some("Hey what's up"));
    }

    #[test]
    fn handles_html_ish_teams_text() {
        let entities = json!([bot_mention(Some("<at>Rusty &amp; Co</at>"), "28:test-bot-app-id", "Rusty & Co")]);
        let mut a = message("<p><at id=\"0\">Rusty&nbsp;&amp; Co</at>&nbsp;hi&nbsp;there</p>", entities.clone());
        assert_eq!(strip_bot_mention(&mut a, "test-bot-app-id"), 1);
        assert_eq!(a.text.as_deref(), Some("<p>hi&nbsp;there</p>"));

        let mut b = message("<div>ask <at>Rusty &amp; Co</at></div>\n<div><at>Rusty &amp; Co</at> twice</div>", entities);
        assert_eq!(strip_bot_mention(&mut b, "test-bot-app-id"), 2);
        assert_eq!(b.text.as_deref(), Some("<div>ask</div>\n<div>twice</div>"));
    }

    #[test]
    fn keeps_line_breaks_and_spaces_between_words() {
        let e = json!([bot_mention(Some("<at>Bot</at>"), "28:b", "Bot")]);
        let mut a = message("first line\n<at>Bot</at> second line\n\nthird", e.clone());
        strip_bot_mention(&mut a, "b");
        assert_eq!(a.text.as_deref(), Some("first line\nsecond line\n\nthird"));

        let mut b = message("ask<at>Bot</at>now", e.clone());
        strip_bot_mention(&mut b, "b");
        assert_eq!(b.text.as_deref(), Some("ask now"));

        let mut c = message("<at>Bot</at>", e.clone());
        assert_eq!(strip_bot_mention(&mut c, "b"), 1);
        assert_eq!(c.text.as_deref(), Some(""));

        let mut d = message("<at>Bot</at> <at>Bot</at>\thello <at>Bot</at>", e);
        assert_eq!(strip_bot_mention(&mut d, "b"), 3);
        assert_eq!(d.text.as_deref(), Some("hello"));
    }

    #[test]
    fn non_ascii_names_compare_case_insensitively() {
        let mut a = message("<at>ÄRGER Bot</at> hallo", json!([bot_mention(Some("<at>Ärger Bot</at>"), "28:b", "Ärger Bot")]));
        assert_eq!(strip_bot_mention(&mut a, "b"), 1);
        assert_eq!(a.text.as_deref(), Some("hallo"));
    }

    #[test]
    fn leaves_text_alone_without_a_bot_mention() {
        let mut personal = testdata::activity(testdata::MESSAGE_PERSONAL);
        assert_eq!(strip_bot_mention(&mut personal, "00000000-0000-0000-0000-00000000000011"), 0);
        assert_eq!(personal.text.as_deref(), Some("hi api"));

        let mut other = message("  <at>Alice</at>  hi  ", json!([bot_mention(Some("<at>Alice</at>"), "29:alice", "Alice")]));
        assert_eq!(strip_bot_mention(&mut other, "test-bot-app-id"), 0);
        assert_eq!(other.text.as_deref(), Some("  <at>Alice</at>  hi  "));
        assert!(!is_bot_mentioned(&other, "test-bot-app-id"));
    }

    #[test]
    fn a_person_named_like_the_bot_keeps_their_mention() {
        let entities = json!([
            bot_mention(Some("<at>Rusty Bot</at>"), "28:test-bot-app-id", "Rusty Bot"),
            bot_mention(Some("<at>Rusty Bot</at>"), "29:human-rusty", "Rusty Bot"),
        ]);
        let mut a = message("<at>Rusty Bot</at> please ping <at>Rusty Bot</at>", entities);
        assert_eq!(strip_bot_mention(&mut a, "test-bot-app-id"), 1);
        assert_eq!(a.text.as_deref(), Some("please ping <at>Rusty Bot</at>"));
    }

    #[test]
    fn outbound_mentions_escape_the_name_and_round_trip() {
        let (text, entity) = mention("29:alice", "Alice <Ops> & Co");
        assert_eq!(text, "<at>Alice &lt;Ops&gt; &amp; Co</at>");
        assert_eq!(
            entity,
            json!({"type": "mention", "text": "<at>Alice &lt;Ops&gt; &amp; Co</at>", "mentioned": {"id": "29:alice", "name": "Alice <Ops> & Co"}})
        );
        // The same shape inbound (the bot mentioned by its own helper) is stripped.
        let (bot_text, bot_entity) = mention("28:b", "B <&> ot");
        let mut a = message(&format!("{bot_text} ping {text}"), json!([bot_entity, entity]));
        assert_eq!(strip_bot_mention(&mut a, "b"), 1);
        assert_eq!(a.text.as_deref(), Some("ping <at>Alice &lt;Ops&gt; &amp; Co</at>"));
    }

    #[test]
    fn a_multibyte_character_before_the_seam_does_not_panic() {
        // Found by `stripping_removes_exactly_the_bots_tags`: looking for a trailing `&nbsp;` sliced the
        // text six bytes from its end, inside the emoji.
        let e = json!([bot_mention(Some("<at>Rusty Bot</at>"), "28:bot", "Rusty Bot")]);
        let mut a = message("😀<p><at>Rusty Bot</at>", e.clone());
        assert_eq!(strip_bot_mention(&mut a, "bot"), 1);
        assert_eq!(a.text.as_deref(), Some("😀<p>"));
        let mut b = message("日本<at>Rusty Bot</at> 😀😀", e);
        assert_eq!(strip_bot_mention(&mut b, "bot"), 1);
        assert_eq!(b.text.as_deref(), Some("日本 😀😀"));
    }

    #[test]
    fn decodes_html_entities() {
        assert_eq!(decode_html("a&amp;b&lt;&gt;&quot;&#39;&apos;&nbsp;&#x41;&#66;&bogus;&"), "a&b<>\"''\u{a0}AB&bogus;&");
    }
}

#[cfg(test)]
mod proptests {
    //! Properties of mention stripping: it never panics, removes exactly the bot's tags from text made of
    //! tokens, keeps everyone else's, and leaves entities and mention-free text alone.

    use proptest::prelude::*;

    use super::*;

    const BOT_TAG: &str = "<at>Rusty Bot</at>";
    const ALICE_TAG: &str = "<at>Alice</at>";

    fn message(text: &str, entities: &Value) -> Activity {
        serde_json::from_value(json!({"type": "message", "text": text, "entities": entities})).unwrap()
    }

    fn entities() -> Value {
        json!([
            {"type": "mention", "text": BOT_TAG, "mentioned": {"id": "28:bot", "name": "Rusty Bot"}},
            {"type": "mention", "text": ALICE_TAG, "mentioned": {"id": "29:alice", "name": "Alice"}},
        ])
    }

    /// Text made of tokens, mentions among them, with the whitespace and multi-byte characters at the seams
    /// that the joining logic trims.
    fn tokens() -> impl Strategy<Value = Vec<&'static str>> {
        let pieces = vec![
            BOT_TAG,
            "<AT>rusty BOT</AT>",
            "<at id=\"0\">Rusty&nbsp;Bot</at>",
            ALICE_TAG,
            "hi",
            "there",
            " ",
            "  ",
            "\t",
            "\n",
            "&nbsp;",
            "\u{a0}",
            ",",
            ".",
            "<p>",
            "</p>",
            "😀",
            "é",
            "日本",
            "<b>",
            "</b>",
        ];
        proptest::collection::vec(proptest::sample::select(pieces), 0..24)
    }

    fn is_bot_tag(t: &str) -> bool {
        t.eq_ignore_ascii_case(BOT_TAG) || t.starts_with("<at id")
    }

    /// Any text and any entity list, for the absence of panics.
    fn wild_entities() -> impl Strategy<Value = Value> {
        let mention = (
            "[a-zA-Z<>/ &;😀é]{0,12}",
            proptest::option::of("[a-zA-Z<>/ &;😀é]{0,12}"),
            prop_oneof![Just("28:bot"), Just("bot"), Just("29:x")],
        )
            .prop_map(|(name, text, id)| json!({"type": "mention", "text": text, "mentioned": {"id": id, "name": name}}));
        proptest::collection::vec(mention, 0..4).prop_map(Value::Array)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn stripping_removes_exactly_the_bots_tags(tokens in tokens()) {
            let text = tokens.concat();
            let mut a = message(&text, &entities());
            let removed = strip_bot_mention(&mut a, "bot");
            let bot_tags = tokens.iter().filter(|t| is_bot_tag(t)).count();
            prop_assert_eq!(removed, bot_tags, "{:?}", text);
            let out = a.text.clone().unwrap();
            if removed == 0 {
                prop_assert_eq!(&out, &text, "text without the bot's mention is untouched");
            } else {
                prop_assert_eq!(out.trim(), out.as_str());
            }
            prop_assert!(!out.to_lowercase().contains("rusty bot</at>") && !out.contains("Rusty&nbsp;Bot"), "{:?} -> {:?}", text, out);
            prop_assert_eq!(out.matches(ALICE_TAG).count(), text.matches(ALICE_TAG).count(), "others' mentions stay");
            prop_assert_eq!(&a.extra["entities"], &entities(), "entities stay");
        }

        #[test]
        fn stripping_any_text_never_panics(text in ".{0,40}|[a-z <>/&;😀é\u{a0}]{0,40}", entities in wild_entities(), bot in "28:bot|bot|") {
            let mut a = message(&text, &entities);
            let removed = strip_bot_mention(&mut a, &bot);
            if removed == 0 {
                prop_assert_eq!(a.text.as_deref(), Some(text.as_str()));
            }
        }

        #[test]
        fn bot_ids_compare_symmetrically_and_ignore_the_prefix(a in "(28:)?[a-zA-Z0-9-]{0,6}", b in "(28:)?[a-zA-Z0-9-]{0,6}") {
            prop_assert_eq!(same_bot_id(&a, &b), same_bot_id(&b, &a));
            let bare = a.strip_prefix("28:").unwrap_or(&a);
            let prefixed = format!("28:{bare}");
            prop_assert_eq!(same_bot_id(&a, &prefixed), !bare.is_empty());
        }
    }
}
