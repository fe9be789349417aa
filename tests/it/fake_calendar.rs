//! The calendar part of the strict fake Graph ([`crate::fake_graph`]): the Agent User's events, other
//! people's busy blocks, and the endpoints agentgate uses, checked as Graph checks them. The bearer token
//! (the Agent User's T3), 429/5xx injection and the request log are the fake Graph's.
//!
//! * `GET /me/calendarView`: `startDateTime` and `endDateTime` required (ISO 8601, end after start), only
//!   known query options (`$top` 1–1000, `$orderby=start/dateTime`, `$select` of event properties), and
//!   `Prefer: outlook.timezone="UTC"` (agentgate reads times as UTC; this fake serves UTC only). With
//!   `Prefer: outlook.body-content-type="text"` bodies are converted to text. Pages carry an
//!   `@odata.nextLink` that keeps the window, as Graph's do.
//! * `POST /me/findMeetingTimes`: the body's shape (attendees with `type` and an address, `timeConstraint`
//!   with `activityDomain` and `timeSlots` of `dateTimeTimeZone`, an ISO 8601 `meetingDuration`). The
//!   suggestions are computed: 30-minute steps through each slot, within working hours (Mon–Fri 08–17 UTC)
//!   for `work`; the organizer must be free; attendees are free, busy, or unknown (outside the home
//!   domain); confidence is their average (100, 0, 49), at least `minimumAttendeePercentage` (50).
//! * `POST /me/calendar/getSchedule`: `schedules`, `startTime`, `endTime` (at most 62 days),
//!   `availabilityViewInterval` 5–1440. Busy blocks carry a subject (which agentgate must not show).
//! * `POST /me/events`: only known properties, a subject, `start`/`end` (end after start), attendees with
//!   valid addresses and types, `onlineMeetingProvider` a known value; `isOnlineMeeting` with
//!   `teamsForBusiness` gets a join URL; a repeated `transactionId` returns the first event.
//! * `POST /me/events/{id}/accept|tentativelyAccept|decline`: `comment` and `sendResponse` only (and
//!   `proposedNewTime` for the last two), an existing event the Agent User does not organize; 202.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, PrimitiveDateTime};

use crate::fake_graph::HOME_DOMAIN;

const GRAPH_LOCAL: &[time::format_description::BorrowedFormatItem<'_>] =
    time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]");
const GRAPH_OUT: &[time::format_description::BorrowedFormatItem<'_>] =
    time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].0000000");

const EVENT_PROPERTIES: &[&str] = &[
    "id",
    "subject",
    "body",
    "bodyPreview",
    "start",
    "end",
    "location",
    "locations",
    "organizer",
    "attendees",
    "isAllDay",
    "isCancelled",
    "isOrganizer",
    "isOnlineMeeting",
    "onlineMeetingProvider",
    "onlineMeeting",
    "onlineMeetingUrl",
    "responseStatus",
    "showAs",
    "type",
    "seriesMasterId",
    "webLink",
    "sensitivity",
    "importance",
    "categories",
    "createdDateTime",
    "lastModifiedDateTime",
    "iCalUId",
    "transactionId",
    "responseRequested",
    "allowNewTimeProposals",
];

/// A busy block of someone else's calendar.
#[derive(Clone, Debug)]
struct Block {
    start: OffsetDateTime,
    end: OffsetDateTime,
    subject: String,
}

/// The calendar state of the fake Graph.
#[derive(Default)]
pub struct Calendar {
    events: Mutex<Vec<Value>>,
    busy: Mutex<HashMap<String, Vec<Block>>>,
    responses: Mutex<Vec<(String, String, Value)>>,
    land_then_fail: AtomicUsize,
    seq: AtomicUsize,
    prefers: Mutex<Vec<(String, Vec<String>)>>,
    /// Most events per calendarView page whatever `$top` asks (0: as `$top` asks).
    page_size: AtomicUsize,
}

/// A time as the fake's tests write it (RFC 3339).
pub fn at(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &Rfc3339).unwrap()
}

fn dtz(t: OffsetDateTime) -> Value {
    json!({"dateTime": t.format(GRAPH_OUT).unwrap(), "timeZone": "UTC"})
}

/// Graph's `emailAddress`.
pub fn email(address: &str, name: &str) -> Value {
    json!({"name": name, "address": address})
}

impl Calendar {
    /// An event in the Agent User's calendar organized by `organizer` (an address), with an HTML body;
    /// `extra` overrides any property. Its id.
    pub fn add_event(&self, subject: &str, start: &str, end: &str, organizer: &str, body_html: &str, extra: Value) -> String {
        let id = format!("AAMkAGseed{}AAA=", self.seq.fetch_add(1, Ordering::SeqCst));
        let mut e = json!({
            "id": id, "subject": subject, "bodyPreview": "",
            "body": {"contentType": "html", "content": body_html},
            "start": dtz(at(start)), "end": dtz(at(end)),
            "location": {"displayName": "Room 1"}, "organizer": {"emailAddress": email(organizer, "Organizer")},
            "attendees": [], "isAllDay": false, "isCancelled": false, "isOrganizer": false,
            "isOnlineMeeting": false, "onlineMeetingProvider": "unknown", "onlineMeeting": null,
            "responseStatus": {"response": "notResponded", "time": "0001-01-01T00:00:00Z"}, "showAs": "busy", "type": "singleInstance",
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            e[k] = v.clone();
        }
        self.events.lock().unwrap().push(e);
        id
    }

    /// `address` is busy from `start` to `end` (in an event named `subject`).
    pub fn set_busy(&self, address: &str, start: &str, end: &str, subject: &str) {
        self.busy.lock().unwrap().entry(address.to_ascii_lowercase()).or_default().push(Block {
            start: at(start),
            end: at(end),
            subject: subject.to_owned(),
        });
    }

    /// The Agent User's events.
    pub fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// One of the Agent User's events, as stored.
    pub fn event(&self, id: &str) -> Option<Value> {
        self.events.lock().unwrap().iter().find(|e| e["id"] == id).cloned()
    }

    /// Answers to invitations: (event id, action, body).
    pub fn responses(&self) -> Vec<(String, String, Value)> {
        self.responses.lock().unwrap().clone()
    }

    /// The next `n` event creates land, then answer 503 (an answer lost after the write).
    pub fn land_then_fail(&self, n: usize) {
        self.land_then_fail.store(n, Ordering::SeqCst);
    }

    /// At most `n` events per calendarView page (Graph may page below `$top`).
    pub fn set_page_size(&self, n: usize) {
        self.page_size.store(n, Ordering::SeqCst);
    }

    /// The `Prefer` values of each calendar request: (path, values).
    pub fn prefers(&self) -> Vec<(String, Vec<String>)> {
        self.prefers.lock().unwrap().clone()
    }

    /// Serve a calendar request, or `None` when `segs` is not a calendar path.
    #[allow(clippy::too_many_arguments, reason = "the parts of one request, as the fake Graph parsed them")]
    pub fn route(
        &self,
        base: &str,
        agent_upn: &str,
        method: &str,
        segs: &[&str],
        query: &HashMap<String, String>,
        headers: &HeaderMap,
        body: Option<Value>,
    ) -> Option<Response> {
        let is_calendar =
            matches!(segs, ["me", "calendarView"] | ["me", "findMeetingTimes"] | ["me", "calendar", "getSchedule"] | ["me", "events", ..]);
        if !is_calendar {
            return None;
        }
        let prefer = prefer_values(headers);
        self.prefers.lock().unwrap().push((segs.join("/"), prefer.clone()));
        if let Some(tz) = prefer.iter().find_map(|p| p.strip_prefix("outlook.timezone="))
            && tz.trim_matches('"') != "UTC"
        {
            return Some(bad(&format!("this fake serves UTC only, not {tz}")));
        }
        Some(match (method, segs) {
            ("GET", ["me", "calendarView"]) => self.calendar_view(base, query, &prefer),
            ("POST", ["me", "findMeetingTimes"]) => self.find_meeting_times(body),
            ("POST", ["me", "calendar", "getSchedule"]) => self.get_schedule(agent_upn, body),
            ("POST", ["me", "events"]) => self.create_event(agent_upn, body),
            ("POST", ["me", "events", id, action @ ("accept" | "tentativelyAccept" | "decline")]) => self.respond(id, action, body),
            _ => error(405, "ErrorInvalidRequest", &format!("{method} {} is not served by the fake", segs.join("/"))),
        })
    }

    fn calendar_view(&self, base: &str, query: &HashMap<String, String>, prefer: &[String]) -> Response {
        let allowed = ["startDateTime", "endDateTime", "$top", "$orderby", "$select", "$skiptoken"];
        if let Some(k) = query.keys().find(|k| !allowed.contains(&k.as_str())) {
            return bad(&format!("Query option '{k}' is not allowed here."));
        }
        let (Some(s), Some(e)) = (query.get("startDateTime"), query.get("endDateTime")) else {
            return error(
                400,
                "ErrorInvalidParameter",
                "This request requires a time window specified by the query string parameters StartDateTime and EndDateTime.",
            );
        };
        let (Some(start), Some(end)) = (iso(s), iso(e)) else {
            return error(400, "ErrorInvalidParameter", "The value of parameter 'StartDateTime' or 'EndDateTime' is invalid.");
        };
        if end <= start {
            return error(400, "ErrorInvalidParameter", "EndDateTime must be after StartDateTime.");
        }
        if !prefer.iter().any(|p| p.starts_with("outlook.timezone=")) {
            return bad("agentgate must ask for UTC: Prefer: outlook.timezone=\"UTC\" is missing");
        }
        let top = match query.get("$top").map(|t| t.parse::<usize>()) {
            None => 10,
            Some(Ok(t)) if (1..=1000).contains(&t) => t,
            _ => return bad("Invalid $top value."),
        };
        if query.get("$orderby").is_some_and(|o| o != "start/dateTime") {
            return bad("Only $orderby=start/dateTime is served here.");
        }
        let top = match self.page_size.load(Ordering::SeqCst) {
            0 => top,
            n => top.min(n),
        };
        let select: Option<Vec<String>> = query.get("$select").map(|s| s.split(',').map(str::to_owned).collect());
        if let Some(unknown) = select.iter().flatten().find(|p| !EVENT_PROPERTIES.contains(&p.as_str())) {
            return bad(&format!("Could not find a property named '{unknown}' on type 'microsoft.graph.event'."));
        }
        let text = prefer.iter().any(|p| p == "outlook.body-content-type=\"text\"");
        let mut items: Vec<Value> =
            self.events.lock().unwrap().iter().filter(|ev| event_span(ev).is_some_and(|(s, e)| s < end && e > start)).cloned().collect();
        items.sort_by_key(|ev| event_span(ev).map(|(s, _)| s));
        let offset = query.get("$skiptoken").and_then(|t| t.parse::<usize>().ok()).unwrap_or(0);
        let chunk: Vec<Value> = items
            .iter()
            .skip(offset)
            .take(top)
            .map(|ev| {
                let mut ev = ev.clone();
                if text && ev["body"]["contentType"] == "html" {
                    ev["body"] = json!({"contentType": "text", "content": strip_tags(ev["body"]["content"].as_str().unwrap_or(""))});
                }
                match &select {
                    Some(fields) => {
                        let mut out = json!({"@odata.etag": "W/\"x\"", "id": ev["id"]});
                        for f in fields {
                            out[f.as_str()] = ev.get(f.as_str()).cloned().unwrap_or(Value::Null);
                        }
                        out
                    }
                    None => ev,
                }
            })
            .collect();
        let mut out = json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users('x')/calendarView", "value": chunk});
        if offset + top < items.len() {
            let mut link = url::Url::parse(&format!("{base}/v1.0/me/calendarView")).unwrap();
            {
                let mut q = link.query_pairs_mut();
                for k in ["startDateTime", "endDateTime", "$orderby", "$select"] {
                    if let Some(v) = query.get(k) {
                        q.append_pair(k, v);
                    }
                }
                q.append_pair("$top", &top.to_string());
                q.append_pair("$skiptoken", &(offset + top).to_string());
            }
            out["@odata.nextLink"] = json!(link.to_string());
        }
        axum::Json(out).into_response()
    }

    /// Whether the Agent User is busy in `start`..`end` (an event not free, not cancelled, not declined).
    fn organizer_busy(&self, start: OffsetDateTime, end: OffsetDateTime) -> bool {
        self.events.lock().unwrap().iter().any(|ev| {
            ev["showAs"] != "free"
                && ev["isCancelled"] != true
                && ev["responseStatus"]["response"] != "declined"
                && event_span(ev).is_some_and(|(s, e)| s < end && e > start)
        })
    }

    fn availability(&self, address: &str, start: OffsetDateTime, end: OffsetDateTime) -> &'static str {
        let address = address.to_ascii_lowercase();
        if !address.ends_with(&format!("@{HOME_DOMAIN}")) {
            return "unknown";
        }
        let busy = self.busy.lock().unwrap();
        if busy.get(&address).is_some_and(|b| b.iter().any(|x| x.start < end && x.end > start)) { "busy" } else { "free" }
    }

    fn find_meeting_times(&self, body: Option<Value>) -> Response {
        let Some(b) = body else { return bad("A body is required.") };
        let allowed = [
            "attendees",
            "locationConstraint",
            "timeConstraint",
            "meetingDuration",
            "maxCandidates",
            "isOrganizerOptional",
            "returnSuggestionReasons",
            "minimumAttendeePercentage",
        ];
        if let Some(k) = unknown_key(&b, &allowed) {
            return bad(&format!("The property '{k}' does not exist on type 'microsoft.graph.findMeetingTimes'."));
        }
        let mut attendees = Vec::new();
        for a in b.get("attendees").and_then(Value::as_array).cloned().unwrap_or_default() {
            if let Some(k) = unknown_key(&a, &["type", "emailAddress"]) {
                return bad(&format!("unexpected attendee property '{k}'"));
            }
            if !["required", "optional", "resource"].contains(&a["type"].as_str().unwrap_or("")) {
                return bad("attendee type must be required, optional or resource");
            }
            let Some(address) = a["emailAddress"]["address"].as_str().filter(|x| is_address(x)) else {
                return bad("attendee emailAddress.address is not an address");
            };
            attendees.push(address.to_owned());
        }
        let tc = &b["timeConstraint"];
        if let Some(k) = unknown_key(tc, &["activityDomain", "timeSlots"]) {
            return bad(&format!("unexpected timeConstraint property '{k}'"));
        }
        let domain = tc["activityDomain"].as_str().unwrap_or("work");
        if !["work", "personal", "unrestricted", "unknown"].contains(&domain) {
            return bad("activityDomain must be work, personal or unrestricted");
        }
        let mut slots = Vec::new();
        for s in tc["timeSlots"].as_array().cloned().unwrap_or_default() {
            let (Some(start), Some(end)) = (from_dtz(&s["start"]), from_dtz(&s["end"])) else {
                return bad("a timeSlot needs start and end as dateTimeTimeZone");
            };
            if end <= start {
                return bad("a timeSlot ends before it starts");
            }
            slots.push((start, end));
        }
        let minutes = match b.get("meetingDuration") {
            None => 30,
            Some(d) => match d.as_str().and_then(iso_duration_minutes) {
                Some(m) if m > 0 => m,
                _ => return bad("meetingDuration is not an ISO 8601 duration"),
            },
        };
        let max = b.get("maxCandidates").map_or(Some(10), Value::as_u64);
        let Some(max) = max else { return bad("maxCandidates must be a number") };
        let min_conf = b.get("minimumAttendeePercentage").and_then(Value::as_f64).unwrap_or(50.0);
        let organizer_optional = b.get("isOrganizerOptional").and_then(Value::as_bool).unwrap_or(false);
        let step = time::Duration::minutes(30);
        let len = time::Duration::minutes(minutes as i64);
        let mut found: Vec<(f64, OffsetDateTime, Value)> = Vec::new();
        let (mut organizer_ever_free, mut any_unknown) = (false, false);
        for (slot_start, slot_end) in slots {
            let mut t = slot_start;
            while t + len <= slot_end {
                let end = t + len;
                if in_hours(domain, t, end) {
                    let organizer_free = !self.organizer_busy(t, end);
                    organizer_ever_free |= organizer_free;
                    let avail: Vec<(&String, &str)> = attendees.iter().map(|a| (a, self.availability(a, t, end))).collect();
                    any_unknown |= avail.iter().any(|(_, x)| *x == "unknown");
                    let confidence = if avail.is_empty() {
                        100.0
                    } else {
                        avail
                            .iter()
                            .map(|(_, x)| match *x {
                                "free" => 100.0,
                                "unknown" => 49.0,
                                _ => 0.0,
                            })
                            .sum::<f64>()
                            / avail.len() as f64
                    };
                    if (organizer_free || organizer_optional) && confidence >= min_conf {
                        found.push((confidence, t, json!({
                            "confidence": confidence,
                            "organizerAvailability": if organizer_free { "free" } else { "busy" },
                            "suggestionReason": "Suggested because it is one of the nearest times when all attendees are available.",
                            "meetingTimeSlot": {"start": dtz(t), "end": dtz(end)},
                            "attendeeAvailability": avail.iter().map(|(a, x)| json!({"attendee": {"type": "required", "emailAddress": {"address": a}}, "availability": x})).collect::<Vec<_>>(),
                            "locations": [],
                        })));
                    }
                }
                t += step;
            }
        }
        found.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let suggestions: Vec<Value> = found.into_iter().take(max as usize).map(|(_, _, v)| v).collect();
        let reason = match (suggestions.is_empty(), organizer_ever_free, any_unknown) {
            (false, _, _) => "",
            (true, false, _) => "organizerUnavailable",
            (true, true, true) => "attendeesUnavailableOrUnknown",
            (true, true, false) => "attendeesUnavailable",
        };
        axum::Json(json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#microsoft.graph.meetingTimeSuggestionsResult",
            "emptySuggestionsReason": reason,
            "meetingTimeSuggestions": suggestions,
        }))
        .into_response()
    }

    fn get_schedule(&self, agent_upn: &str, body: Option<Value>) -> Response {
        let Some(b) = body else { return bad("A body is required.") };
        if let Some(k) = unknown_key(&b, &["schedules", "startTime", "endTime", "availabilityViewInterval"]) {
            return bad(&format!("The property '{k}' does not exist on type 'microsoft.graph.getSchedule'."));
        }
        let Some(schedules) = b["schedules"].as_array().filter(|s| !s.is_empty() && s.len() <= 100) else {
            return bad("schedules must list 1 to 100 addresses");
        };
        let (Some(start), Some(end)) = (from_dtz(&b["startTime"]), from_dtz(&b["endTime"])) else {
            return bad("startTime and endTime must be dateTimeTimeZone values");
        };
        if end <= start || end - start > time::Duration::days(62) {
            return bad("The time range must be positive and at most 62 days.");
        }
        let interval = b.get("availabilityViewInterval").map_or(Some(30), Value::as_i64);
        let Some(interval) = interval.filter(|i| (5..=1440).contains(i)) else {
            return bad("availabilityViewInterval must be 5 to 1440");
        };
        let mut value = Vec::new();
        for s in schedules {
            let Some(address) = s.as_str().filter(|a| is_address(a)) else { return bad("a schedule is not an address") };
            let lower = address.to_ascii_lowercase();
            if !lower.ends_with(&format!("@{HOME_DOMAIN}")) && !lower.eq_ignore_ascii_case(agent_upn) {
                value.push(json!({"scheduleId": address, "availabilityView": "", "scheduleItems": [], "error": {
                    "message": "The free/busy information of an external recipient is not available.", "responseCode": "ErrorFreeBusyGenerationFailed"}}));
                continue;
            }
            let blocks: Vec<Block> = self.busy.lock().unwrap().get(&lower).cloned().unwrap_or_default();
            let items: Vec<Value> = blocks
                .iter()
                .filter(|x| x.start < end && x.end > start)
                .map(|x| json!({"isPrivate": false, "status": "busy", "subject": x.subject, "location": "Room 9", "start": dtz(x.start), "end": dtz(x.end)}))
                .collect();
            let mut view = String::new();
            let mut t = start;
            while t < end {
                let next = t + time::Duration::minutes(interval);
                view.push(if blocks.iter().any(|x| x.start < next && x.end > t) { '2' } else { '0' });
                t = next;
            }
            value.push(json!({"scheduleId": address, "availabilityView": view, "scheduleItems": items, "workingHours": {
                "daysOfWeek": ["monday", "tuesday", "wednesday", "thursday", "friday"], "startTime": "08:00:00.0000000", "endTime": "17:00:00.0000000",
                "timeZone": {"name": "UTC"}}}));
        }
        axum::Json(json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(microsoft.graph.scheduleInformation)", "value": value}))
            .into_response()
    }

    fn create_event(&self, agent_upn: &str, body: Option<Value>) -> Response {
        let Some(b) = body else { return bad("A body is required.") };
        let allowed = [
            "subject",
            "body",
            "start",
            "end",
            "location",
            "attendees",
            "isOnlineMeeting",
            "onlineMeetingProvider",
            "transactionId",
            "allowNewTimeProposals",
            "responseRequested",
            "isReminderOn",
            "reminderMinutesBeforeStart",
            "showAs",
            "importance",
            "sensitivity",
            "categories",
            "isAllDay",
        ];
        if let Some(k) = unknown_key(&b, &allowed) {
            return bad(&format!("The property '{k}' does not exist on type 'microsoft.graph.event'."));
        }
        let subject = b["subject"].as_str().unwrap_or("");
        if subject.chars().count() > 255 {
            return bad("The subject is too long.");
        }
        if let Some(body) = b.get("body") {
            let ct = body["contentType"].as_str().unwrap_or("").to_ascii_lowercase();
            if !(ct == "text" || ct == "html") || !body["content"].is_string() || unknown_key(body, &["contentType", "content"]).is_some() {
                return bad("body must be {contentType: text|html, content}");
            }
        }
        let (Some(start), Some(end)) = (from_dtz(&b["start"]), from_dtz(&b["end"])) else {
            return bad("start and end must be dateTimeTimeZone values");
        };
        if end <= start {
            return error(400, "ErrorInvalidRequest", "The end of the event must be after its start.");
        }
        if let Some(l) = b.get("location")
            && (unknown_key(l, &["displayName"]).is_some() || !l["displayName"].is_string())
        {
            return bad("location must be {displayName}");
        }
        let mut attendees = Vec::new();
        for a in b.get("attendees").and_then(Value::as_array).cloned().unwrap_or_default() {
            if unknown_key(&a, &["emailAddress", "type"]).is_some() || unknown_key(&a["emailAddress"], &["address", "name"]).is_some() {
                return bad("an attendee is {emailAddress: {address, name}, type}");
            }
            if !["required", "optional", "resource"].contains(&a["type"].as_str().unwrap_or("")) {
                return bad("attendee type must be required, optional or resource");
            }
            if !a["emailAddress"]["address"].as_str().is_some_and(is_address) {
                return error(400, "ErrorInvalidRecipients", "At least one recipient isn't valid.");
            }
            let mut a = a.clone();
            a["status"] = json!({"response": "none", "time": "0001-01-01T00:00:00Z"});
            attendees.push(a);
        }
        let online = match b.get("isOnlineMeeting") {
            None => false,
            Some(Value::Bool(x)) => *x,
            Some(_) => return bad("isOnlineMeeting must be a boolean"),
        };
        let provider = b.get("onlineMeetingProvider").and_then(Value::as_str);
        if provider.is_some_and(|p| !["teamsForBusiness", "skypeForBusiness", "skypeForConsumer", "unknown"].contains(&p)) {
            return bad("onlineMeetingProvider is not a known provider");
        }
        if online && provider.is_some_and(|p| p != "teamsForBusiness") {
            return bad("The mailbox allows only teamsForBusiness online meetings.");
        }
        let mut events = self.events.lock().unwrap();
        if let Some(tx) = b.get("transactionId").and_then(Value::as_str)
            && let Some(existing) = events.iter().find(|e| e["transactionId"] == tx)
        {
            return (StatusCode::CREATED, axum::Json(existing.clone())).into_response();
        }
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        let id = format!("AAMkAGnew{n}AAA=");
        let mut e = b.clone();
        e["id"] = json!(id);
        e["start"] = dtz(start);
        e["end"] = dtz(end);
        e["attendees"] = json!(attendees);
        e["organizer"] = json!({"emailAddress": email(agent_upn, "Agent User")});
        e["isOrganizer"] = json!(true);
        e["isCancelled"] = json!(false);
        e["isAllDay"] = json!(false);
        e["showAs"] = json!("busy");
        e["type"] = json!("singleInstance");
        e["responseStatus"] = json!({"response": "organizer", "time": "0001-01-01T00:00:00Z"});
        e["isOnlineMeeting"] = json!(online);
        e["onlineMeetingProvider"] = json!(if online { "teamsForBusiness" } else { "unknown" });
        e["onlineMeeting"] = if online {
            json!({"joinUrl": format!("https://teams.microsoft.com/l/meetup-join/19%3ameeting_{n}%40thread.v2/0?context=%7b%7d")})
        } else {
            Value::Null
        };
        if b.get("body").is_none() {
            e["body"] = json!({"contentType": "html", "content": ""});
        }
        events.push(e.clone());
        if self.land_then_fail.load(Ordering::SeqCst) > 0 {
            self.land_then_fail.fetch_sub(1, Ordering::SeqCst);
            return error(503, "ServiceUnavailable", "injected after the event was stored");
        }
        (StatusCode::CREATED, axum::Json(e)).into_response()
    }

    fn respond(&self, id: &str, action: &str, body: Option<Value>) -> Response {
        let Some(b) = body else { return bad("A body is required.") };
        let allowed: &[&str] =
            if action == "accept" { &["comment", "sendResponse"] } else { &["comment", "sendResponse", "proposedNewTime"] };
        if let Some(k) = unknown_key(&b, allowed) {
            return bad(&format!("The parameter '{k}' in the request payload is not a valid parameter for the operation '{action}'."));
        }
        if b.get("comment").is_some_and(|c| !c.is_string()) || b.get("sendResponse").is_some_and(|c| !c.is_boolean()) {
            return bad("comment must be a string and sendResponse a boolean");
        }
        let mut events = self.events.lock().unwrap();
        let Some(e) = events.iter_mut().find(|e| e["id"] == id) else {
            return error(404, "ErrorItemNotFound", "The specified object was not found in the store.");
        };
        if e["isOrganizer"] == true {
            return error(
                400,
                "ErrorInvalidRequest",
                "Your request can't be completed. You can't respond to this meeting because you're the meeting organizer.",
            );
        }
        let response = match action {
            "accept" => "accepted",
            "tentativelyAccept" => "tentativelyAccepted",
            _ => "declined",
        };
        e["responseStatus"] = json!({"response": response, "time": "2030-01-01T00:00:00Z"});
        self.responses.lock().unwrap().push((id.to_owned(), action.to_owned(), b));
        StatusCode::ACCEPTED.into_response()
    }
}

/// Every `Prefer` preference sent (several headers, or comma-separated in one).
pub fn prefer_values(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_owned()).collect::<Vec<_>>())
        .filter(|p| !p.is_empty())
        .collect()
}

fn unknown_key(v: &Value, allowed: &[&str]) -> Option<String> {
    match v.as_object() {
        Some(o) => o.keys().find(|k| !allowed.contains(&k.as_str())).cloned(),
        None => Some("(not an object)".into()),
    }
}

fn is_address(s: &str) -> bool {
    s.split_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.contains('@')) && !s.contains(char::is_whitespace)
}

/// An ISO 8601 time as Graph takes it in a query: with an offset, or without (then UTC).
fn iso(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok().or_else(|| PrimitiveDateTime::parse(s, GRAPH_LOCAL).ok().map(PrimitiveDateTime::assume_utc))
}

/// A `dateTimeTimeZone` (this fake's mailboxes are in UTC and it reads UTC values only).
fn from_dtz(v: &Value) -> Option<OffsetDateTime> {
    if unknown_key(v, &["dateTime", "timeZone"]).is_some() || v["timeZone"] != "UTC" {
        return None;
    }
    PrimitiveDateTime::parse(v["dateTime"].as_str()?, GRAPH_LOCAL).ok().map(PrimitiveDateTime::assume_utc)
}

fn event_span(ev: &Value) -> Option<(OffsetDateTime, OffsetDateTime)> {
    Some((from_dtz(&ev["start"])?, from_dtz(&ev["end"])?))
}

/// `PT1H30M` → 90.
fn iso_duration_minutes(s: &str) -> Option<u32> {
    let rest = s.strip_prefix("PT")?;
    let (mut minutes, mut num) = (0u32, String::new());
    for c in rest.chars() {
        match c {
            '0'..='9' => num.push(c),
            'H' => minutes += std::mem::take(&mut num).parse::<u32>().ok()? * 60,
            'M' => minutes += std::mem::take(&mut num).parse::<u32>().ok()?,
            _ => return None,
        }
    }
    num.is_empty().then_some(minutes)
}

/// Working hours of this fake's mailboxes: Mon–Fri 08:00–17:00 UTC for `work` (and `unknown`), every day
/// for `personal`, always for `unrestricted`.
fn in_hours(domain: &str, start: OffsetDateTime, end: OffsetDateTime) -> bool {
    if domain == "unrestricted" {
        return true;
    }
    let weekday = !matches!(start.weekday(), time::Weekday::Saturday | time::Weekday::Sunday);
    let same_day = start.date() == end.date() || (end.time() == time::Time::MIDNIGHT && end.date() == start.date().next_day().unwrap());
    let in_day = start.hour() >= 8 && (end.hour() < 17 || (end.hour() == 17 && end.minute() == 0)) && same_day;
    in_day && (domain == "personal" || weekday)
}

fn strip_tags(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&").split_whitespace().collect::<Vec<_>>().join(" ")
}

fn error(status: u16, code: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(
            json!({"error": {"code": code, "message": message, "innerError": {"request-id": "00000000-0000-0000-0000-000000000000"}}}),
        ),
    )
        .into_response()
}

fn bad(message: &str) -> Response {
    error(400, "BadRequest", message)
}
