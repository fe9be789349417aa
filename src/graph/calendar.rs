//! The Agent User's Outlook calendar through Graph (v1.0), with its delegated token (`/me`):
//!
//! * [`GraphClient::calendar_view`]: the events in a window (`GET /me/calendarView`), pages followed
//!   up to a bound.
//! * [`GraphClient::find_meeting_times`] (`POST /me/findMeetingTimes`) and [`GraphClient::get_schedule`]
//!   (`POST /me/calendar/getSchedule`): meeting-time suggestions, and free/busy blocks.
//! * [`GraphClient::create_event`]: `POST /me/events` (optionally a Teams meeting) with a
//!   `transactionId`, so that re-sending after a lost answer returns the first event instead of making a
//!   second one: a create here is retried after a 5xx, unlike chats and messages.
//! * [`GraphClient::respond_to_event`]: `accept`, `tentativelyAccept` or `decline`, with a comment.
//! * [`EventMessage`]: a meeting request as it arrives in the mailbox (`eventMessageRequest`).
//!
//! Times are UTC both ways: every request carries `Prefer: outlook.timezone="UTC"` and sends
//! `dateTimeTimeZone` values with `timeZone: "UTC"`, and [`UtcTime::from_graph`] reads only UTC values.
//! Event bodies are asked for as text (`Prefer: outlook.body-content-type="text"`).

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::format_description::BorrowedFormatItem;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, PrimitiveDateTime};

use super::client::{GraphClient, GraphError, MAX_PAGES, non_empty, parse};
use super::model::{ItemBody, Page};
use crate::http_util::path_segment as segment;

/// `Prefer`: times in UTC.
pub const PREFER_UTC: &str = "outlook.timezone=\"UTC\"";
/// `Prefer`: event bodies as text.
pub const PREFER_TEXT: &str = "outlook.body-content-type=\"text\"";

/// The event properties read.
const EVENT_SELECT: &str = "id,subject,body,start,end,location,organizer,attendees,isAllDay,isCancelled,isOrganizer,\
                            isOnlineMeeting,onlineMeetingProvider,onlineMeeting,responseStatus,showAs,type,seriesMasterId";

/// The cast navigation that brings a meeting message's event along.
const EVENT_MESSAGE_EXPAND: &str = "microsoft.graph.eventMessage/event";

/// The longest subject and location Outlook keeps.
pub const MAX_SUBJECT_CHARS: usize = 255;
/// The longest event body sent.
pub const MAX_EVENT_BODY_CHARS: usize = 16_000;
/// The longest comment sent with an answer.
pub const MAX_COMMENT_CHARS: usize = 2_000;
/// The most attendees on one event.
pub const MAX_ATTENDEES: usize = 100;

const GRAPH_LOCAL_OUT: &[BorrowedFormatItem<'_>] = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
const GRAPH_LOCAL_IN: &[BorrowedFormatItem<'_>] =
    time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]");
const RFC3339_UTC: &[BorrowedFormatItem<'_>] = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

/// An instant in UTC, to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UtcTime(OffsetDateTime);

impl UtcTime {
    /// An RFC 3339 time with its offset (`2026-11-23T09:00:00Z`, `2026-11-23T10:00:00+01:00`); fractions
    /// of a second are dropped.
    pub fn parse(s: &str) -> Result<Self, GraphError> {
        let t = OffsetDateTime::parse(s.trim(), &Rfc3339).map_err(|_| {
            GraphError::Invalid(format!("`{}` is not an RFC 3339 time with an offset, such as 2026-11-23T09:00:00Z", s.trim()))
        })?;
        Ok(Self::from_offset(t))
    }

    fn from_offset(t: OffsetDateTime) -> Self {
        let t = t.to_offset(time::UtcOffset::UTC);
        Self(t.replace_nanosecond(0).unwrap_or(t))
    }

    /// Seconds since the Unix epoch.
    pub fn from_unix(secs: i64) -> Option<Self> {
        OffsetDateTime::from_unix_timestamp(secs).ok().map(Self)
    }

    /// Now, to the second.
    pub fn now() -> Self {
        Self::from_offset(OffsetDateTime::now_utc())
    }

    /// A Graph `dateTimeTimeZone` whose zone is UTC (`None` for any other zone: agentgate asks for UTC).
    pub fn from_graph(v: &DateTimeTimeZone) -> Option<Self> {
        let zone = v.time_zone.trim();
        let utc = ["UTC", "Etc/UTC", "Etc/GMT", "Coordinated Universal Time", "tzone://Microsoft/Utc"];
        if !utc.iter().any(|z| z.eq_ignore_ascii_case(zone)) {
            return None;
        }
        PrimitiveDateTime::parse(v.date_time.trim(), GRAPH_LOCAL_IN).ok().map(|t| Self::from_offset(t.assume_utc()))
    }

    /// `2026-11-23T09:00:00Z`.
    pub fn rfc3339(&self) -> String {
        self.0.format(RFC3339_UTC).unwrap_or_default()
    }

    /// The Graph `dateTimeTimeZone` of this instant (`timeZone: "UTC"`).
    pub fn to_graph(&self) -> Value {
        json!({"dateTime": self.0.format(GRAPH_LOCAL_OUT).unwrap_or_default(), "timeZone": "UTC"})
    }

    /// Seconds from `self` to `later` (negative when `later` is earlier).
    pub fn seconds_until(&self, later: &Self) -> i64 {
        later.0.unix_timestamp() - self.0.unix_timestamp()
    }
}

/// A Graph `dateTimeTimeZone`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DateTimeTimeZone {
    #[serde(default)]
    pub date_time: String,
    #[serde(default)]
    pub time_zone: String,
}

impl DateTimeTimeZone {
    /// RFC 3339 in UTC when the zone is UTC, else the value and its zone as Graph gave them.
    pub fn display(&self) -> String {
        UtcTime::from_graph(self).map_or_else(|| format!("{} ({})", self.date_time, self.time_zone), |t| t.rfc3339())
    }
}

/// An email address with its display name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmailAddress {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub address: Option<String>,
}

/// A recipient (organizer, sender).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recipient {
    #[serde(default)]
    pub email_address: Option<EmailAddress>,
}

/// An answer and when it was given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseStatus {
    /// `none`, `organizer`, `tentativelyAccepted`, `accepted`, `declined`, `notResponded`.
    #[serde(default)]
    pub response: Option<String>,
    #[serde(default)]
    pub time: Option<String>,
}

/// An attendee of an event (or of a meeting-time suggestion).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attendee {
    /// `required`, `optional` or `resource`.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub email_address: Option<EmailAddress>,
    #[serde(default)]
    pub status: Option<ResponseStatus>,
}

/// An event's location.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Location {
    #[serde(default)]
    pub display_name: Option<String>,
}

/// An online meeting's details.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OnlineMeetingInfo {
    #[serde(default)]
    pub join_url: Option<String>,
}

/// An event (`GET /me/calendarView`, `POST /me/events`). Subject, body, location and names are
/// untrusted text (anyone who can send the Agent User an invitation writes them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub body: Option<ItemBody>,
    #[serde(default)]
    pub start: Option<DateTimeTimeZone>,
    #[serde(default)]
    pub end: Option<DateTimeTimeZone>,
    #[serde(default)]
    pub location: Option<Location>,
    #[serde(default)]
    pub organizer: Option<Recipient>,
    #[serde(default)]
    pub attendees: Vec<Attendee>,
    #[serde(default)]
    pub is_all_day: Option<bool>,
    #[serde(default)]
    pub is_cancelled: Option<bool>,
    #[serde(default)]
    pub is_organizer: Option<bool>,
    #[serde(default)]
    pub is_online_meeting: Option<bool>,
    #[serde(default)]
    pub online_meeting_provider: Option<String>,
    #[serde(default)]
    pub online_meeting: Option<OnlineMeetingInfo>,
    #[serde(default)]
    pub online_meeting_url: Option<String>,
    /// The Agent User's own answer.
    #[serde(default)]
    pub response_status: Option<ResponseStatus>,
    /// `free`, `tentative`, `busy`, `oof`, `workingElsewhere`, `unknown`.
    #[serde(default)]
    pub show_as: Option<String>,
    /// `singleInstance`, `occurrence`, `exception`, `seriesMaster`.
    #[serde(rename = "type", default)]
    pub event_type: Option<String>,
    #[serde(default)]
    pub transaction_id: Option<String>,
}

impl Event {
    /// The Teams (or other online) meeting's join URL, when it is an https URL ([`https_url`]).
    pub fn join_url(&self) -> Option<String> {
        self.online_meeting.as_ref().and_then(|m| m.join_url.as_deref()).or(self.online_meeting_url.as_deref()).and_then(https_url)
    }
}

/// `u` as an absolute https URL with a host, serialized by the `url` crate (so spaces, quotes and angle
/// brackets are percent-encoded and controls are gone); `None` for anything else.
pub fn https_url(u: &str) -> Option<String> {
    url::Url::parse(u.trim()).ok().filter(|u| u.scheme() == "https" && u.host_str().is_some()).map(String::from)
}

/// A start and an end.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimeSlot {
    #[serde(default)]
    pub start: DateTimeTimeZone,
    #[serde(default)]
    pub end: DateTimeTimeZone,
}

/// One attendee's availability in a suggestion.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttendeeAvailability {
    #[serde(default)]
    pub attendee: Option<Attendee>,
    /// `free`, `tentative`, `busy`, `oof`, `workingElsewhere`, `unknown`.
    #[serde(default)]
    pub availability: Option<String>,
}

/// One meeting-time suggestion.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeetingTimeSuggestion {
    /// 0 to 100: the average chance that the attendees come (free 100, unknown 49, busy 0).
    #[serde(default)]
    pub confidence: Option<f64>,
    #[serde(default)]
    pub organizer_availability: Option<String>,
    #[serde(default)]
    pub meeting_time_slot: Option<TimeSlot>,
    #[serde(default)]
    pub attendee_availability: Vec<AttendeeAvailability>,
}

/// `findMeetingTimes`'s answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeetingTimeSuggestions {
    /// Why there is none (`attendeesUnavailable`, `attendeesUnavailableOrUnknown`, `locationsUnavailable`,
    /// `organizerUnavailable`, `unknown`), or empty.
    #[serde(default)]
    pub empty_suggestions_reason: Option<String>,
    #[serde(default)]
    pub meeting_time_suggestions: Vec<MeetingTimeSuggestion>,
}

/// A busy block of someone's schedule. Its subject and location are not read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleItem {
    /// `free`, `tentative`, `busy`, `oof`, `workingElsewhere`, `unknown`.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub start: DateTimeTimeZone,
    #[serde(default)]
    pub end: DateTimeTimeZone,
}

/// Why someone's schedule could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FreeBusyError {
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub response_code: Option<String>,
}

/// One person's schedule (`getSchedule`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleInformation {
    #[serde(default)]
    pub schedule_id: String,
    #[serde(default)]
    pub schedule_items: Vec<ScheduleItem>,
    #[serde(default)]
    pub error: Option<FreeBusyError>,
}

/// A meeting message in the mailbox (`#microsoft.graph.eventMessage` and its subtypes), read with
/// `Prefer: outlook.timezone="UTC"` and, for the event's id, organizer and join URL,
/// `$expand=microsoft.graph.eventMessage/event`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventMessage {
    #[serde(default)]
    pub id: String,
    #[serde(rename = "@odata.type", default)]
    pub odata_type: Option<String>,
    /// `meetingRequest`, `meetingCancelled`, `meetingAccepted`, `meetingTentativelyAccepted`,
    /// `meetingDeclined`, `none`.
    #[serde(default)]
    pub meeting_message_type: Option<String>,
    /// `newMeetingRequest`, `fullUpdate`, `informationalUpdate`, `silentUpdate`, `outdated`,
    /// `principalWantsCopy`.
    #[serde(default)]
    pub meeting_request_type: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub body: Option<ItemBody>,
    #[serde(default)]
    pub from: Option<Recipient>,
    #[serde(default)]
    pub sender: Option<Recipient>,
    #[serde(default)]
    pub received_date_time: Option<String>,
    #[serde(default)]
    pub start_date_time: Option<DateTimeTimeZone>,
    #[serde(default)]
    pub end_date_time: Option<DateTimeTimeZone>,
    #[serde(default)]
    pub location: Option<Location>,
    #[serde(default)]
    pub is_all_day: Option<bool>,
    #[serde(default)]
    pub is_out_of_date: Option<bool>,
    #[serde(default)]
    pub response_requested: Option<bool>,
    /// The event in the Agent User's calendar (only with `$expand`).
    #[serde(default)]
    pub event: Option<Event>,
}

impl EventMessage {
    /// Whether it asks the Agent User to a meeting (not a cancellation, an answer or another mail).
    pub fn is_request(&self) -> bool {
        self.odata_type.as_deref().is_some_and(|t| t.eq_ignore_ascii_case("#microsoft.graph.eventMessageRequest"))
            || self.meeting_message_type.as_deref().is_some_and(|t| t.eq_ignore_ascii_case("meetingRequest"))
    }
}

/// An attendee to invite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAttendee {
    pub address: String,
    pub name: Option<String>,
    /// `optional` instead of `required`.
    pub optional: bool,
}

/// An event to create in the Agent User's calendar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub subject: String,
    /// Plain text (sent as `contentType: text`).
    pub body: Option<String>,
    pub start: UtcTime,
    pub end: UtcTime,
    pub location: Option<String>,
    pub attendees: Vec<NewAttendee>,
    /// A Teams meeting: `isOnlineMeeting` with `onlineMeetingProvider: teamsForBusiness`.
    pub teams_meeting: bool,
    /// Graph's idempotency key for the create (a fresh random id per event).
    pub transaction_id: String,
}

/// A free-time search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindTimes {
    /// The other people's addresses (the Agent User is the organizer).
    pub attendees: Vec<String>,
    pub start: UtcTime,
    pub end: UtcTime,
    pub duration_minutes: u32,
    pub max_candidates: u32,
    /// Within working hours (`activityDomain: work`), else any time (`unrestricted`).
    pub working_hours: bool,
}

/// An answer to an invitation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventAnswer {
    Accept,
    Tentative,
    Decline,
}

impl EventAnswer {
    /// The Graph action (a path segment).
    pub fn action(self) -> &'static str {
        match self {
            Self::Accept => "accept",
            Self::Tentative => "tentativelyAccept",
            Self::Decline => "decline",
        }
    }
}

/// Whether `s` looks like an email address (`local@domain.tld`, no spaces, quotes, angle brackets or
/// separators), at most 254 characters.
pub fn is_address(s: &str) -> bool {
    let s = s.trim();
    s.len() <= 254
        && !s.contains(|c: char| c.is_whitespace() || c.is_control() || "<>,;\"()[]\\".contains(c))
        && s.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains("..")
        })
}

/// An ISO 8601 duration of whole minutes (`PT1H30M`).
pub fn iso_minutes(minutes: u32) -> String {
    match (minutes / 60, minutes % 60) {
        (0, m) => format!("PT{m}M"),
        (h, 0) => format!("PT{h}H"),
        (h, m) => format!("PT{h}H{m}M"),
    }
}

fn bounded(what: &str, s: &str, max: usize) -> Result<(), GraphError> {
    let n = s.chars().count();
    if n > max { Err(GraphError::Invalid(format!("the {what} is {n} characters; at most {max} are sent"))) } else { Ok(()) }
}

fn window(start: UtcTime, end: UtcTime) -> Result<(), GraphError> {
    if end <= start { Err(GraphError::Invalid("the window's end is not after its start".into())) } else { Ok(()) }
}

impl GraphClient {
    /// The Agent User's events overlapping `start`..`end` (occurrences of series expanded), by start
    /// time, at most `max`; and whether Graph has more.
    pub async fn calendar_view(&self, start: UtcTime, end: UtcTime, max: usize) -> Result<(Vec<Event>, bool), GraphError> {
        window(start, end)?;
        let top = max.clamp(1, 50).to_string();
        let (from, to) = (start.rfc3339(), end.rfc3339());
        let mut url = self.url(
            "/me/calendarView",
            &[("startDateTime", &from), ("endDateTime", &to), ("$top", &top), ("$orderby", "start/dateTime"), ("$select", EVENT_SELECT)],
        )?;
        let mut out = Vec::new();
        for _ in 0..MAX_PAGES {
            let page: Page<Event> = parse(&self.call_prefer(Method::GET, url, None, true, &[PREFER_UTC, PREFER_TEXT]).await?)?;
            out.extend(page.value);
            if out.len() > max {
                out.truncate(max);
                return Ok((out, true));
            }
            match page.next_link {
                Some(_) if out.len() == max => return Ok((out, true)),
                Some(link) => url = self.endpoint().next_link(&link)?,
                None => return Ok((out, false)),
            }
        }
        Ok((out, true))
    }

    /// Meeting times when the Agent User (the organizer) and `attendees` are free (`POST /me/findMeetingTimes`).
    /// A read: retried like one.
    pub async fn find_meeting_times(&self, q: &FindTimes) -> Result<MeetingTimeSuggestions, GraphError> {
        window(q.start, q.end)?;
        if let Some(a) = q.attendees.iter().find(|a| !is_address(a)) {
            return Err(GraphError::Invalid(format!("`{a}` is not an email address")));
        }
        let attendees: Vec<Value> =
            q.attendees.iter().map(|a| json!({"type": "required", "emailAddress": {"address": a.trim()}})).collect();
        let body = json!({
            "attendees": attendees,
            "timeConstraint": {
                "activityDomain": if q.working_hours { "work" } else { "unrestricted" },
                "timeSlots": [{"start": q.start.to_graph(), "end": q.end.to_graph()}],
            },
            "meetingDuration": iso_minutes(q.duration_minutes),
            "maxCandidates": q.max_candidates,
            "isOrganizerOptional": false,
            "returnSuggestionReasons": true,
        });
        let url = self.url("/me/findMeetingTimes", &[])?;
        parse(&self.call_prefer(Method::POST, url, Some(&body), true, &[PREFER_UTC]).await?)
    }

    /// The busy blocks of `addresses` in `start`..`end` (`POST /me/calendar/getSchedule`). A read.
    pub async fn get_schedule(
        &self,
        addresses: &[String],
        start: UtcTime,
        end: UtcTime,
        interval_minutes: u32,
    ) -> Result<Vec<ScheduleInformation>, GraphError> {
        window(start, end)?;
        if addresses.is_empty() {
            return Err(GraphError::Invalid("no address to read a schedule for".into()));
        }
        let body = json!({
            "schedules": addresses.iter().map(|a| a.trim()).collect::<Vec<_>>(),
            "startTime": start.to_graph(),
            "endTime": end.to_graph(),
            "availabilityViewInterval": interval_minutes.clamp(5, 1440),
        });
        let url = self.url("/me/calendar/getSchedule", &[])?;
        let page: Page<ScheduleInformation> = parse(&self.call_prefer(Method::POST, url, Some(&body), true, &[PREFER_UTC]).await?)?;
        Ok(page.value)
    }

    /// Create an event in the Agent User's calendar (`POST /me/events`); Outlook sends the invitations.
    /// Sizes and addresses are checked first. The `transactionId` makes a re-send return the first event,
    /// so a 5xx is retried.
    pub async fn create_event(&self, e: &NewEvent) -> Result<Event, GraphError> {
        window(e.start, e.end)?;
        if e.subject.trim().is_empty() {
            return Err(GraphError::Invalid("the subject is empty".into()));
        }
        bounded("subject", &e.subject, MAX_SUBJECT_CHARS)?;
        if let Some(l) = &e.location {
            bounded("location", l, MAX_SUBJECT_CHARS)?;
        }
        if let Some(b) = &e.body {
            bounded("body", b, MAX_EVENT_BODY_CHARS)?;
        }
        if e.attendees.len() > MAX_ATTENDEES {
            return Err(GraphError::Invalid(format!("{} attendees; at most {MAX_ATTENDEES}", e.attendees.len())));
        }
        if let Some(a) = e.attendees.iter().find(|a| !is_address(&a.address)) {
            return Err(GraphError::Invalid(format!("`{}` is not an email address", a.address)));
        }
        non_empty("transaction id", &e.transaction_id)?;
        let attendees: Vec<Value> = e
            .attendees
            .iter()
            .map(|a| {
                let mut address = json!({"address": a.address.trim()});
                if let Some(n) = a.name.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
                    address["name"] = json!(n);
                }
                json!({"emailAddress": address, "type": if a.optional { "optional" } else { "required" }})
            })
            .collect();
        let mut body = json!({
            "subject": e.subject.trim(),
            "start": e.start.to_graph(),
            "end": e.end.to_graph(),
            "attendees": attendees,
            "transactionId": e.transaction_id,
        });
        if let Some(text) = e.body.as_deref().filter(|t| !t.trim().is_empty()) {
            body["body"] = json!({"contentType": "text", "content": text});
        }
        if let Some(l) = e.location.as_deref().map(str::trim).filter(|l| !l.is_empty()) {
            body["location"] = json!({"displayName": l});
        }
        if e.teams_meeting {
            body["isOnlineMeeting"] = json!(true);
            body["onlineMeetingProvider"] = json!("teamsForBusiness");
        }
        let url = self.url("/me/events", &[])?;
        parse(&self.call_prefer(Method::POST, url, Some(&body), true, &[PREFER_UTC]).await?)
    }

    /// Answer an invitation in the Agent User's calendar (`POST /me/events/{id}/accept` and the like),
    /// with an optional comment, telling the organizer when `send_response`. Not re-sent after a 5xx (the
    /// organizer could get the answer twice).
    pub async fn respond_to_event(
        &self,
        event_id: &str,
        answer: EventAnswer,
        comment: Option<&str>,
        send_response: bool,
    ) -> Result<(), GraphError> {
        let path = format!("/me/events/{}/{}", segment(non_empty("event id", event_id)?.trim()), answer.action());
        let mut body = json!({"sendResponse": send_response});
        if let Some(c) = comment.filter(|c| !c.trim().is_empty()) {
            bounded("comment", c, MAX_COMMENT_CHARS)?;
            body["comment"] = json!(c);
        }
        self.call_prefer(Method::POST, self.url(&path, &[])?, Some(&body), false, &[]).await.map(drop)
    }

    /// A meeting message of the Agent User's mailbox with the event it put in the calendar
    /// (`GET /users/{me}/messages/{id}?$expand=microsoft.graph.eventMessage/event`), times in UTC.
    pub async fn event_message(&self, id: &str) -> Result<EventMessage, GraphError> {
        let path = format!("{}/messages/{}", self.mailbox(), segment(super::mail::message_id(id)?));
        let url = self.url(&path, &[("$expand", EVENT_MESSAGE_EXPAND)])?;
        parse(&self.call_prefer(Method::GET, url, None, true, &[PREFER_UTC]).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_both_ways() {
        let t = UtcTime::parse("2026-11-23T10:30:15.250+01:00").unwrap();
        assert_eq!(t.rfc3339(), "2026-11-23T09:30:15Z");
        assert_eq!(t.to_graph(), json!({"dateTime": "2026-11-23T09:30:15", "timeZone": "UTC"}));
        let back = UtcTime::from_graph(&DateTimeTimeZone { date_time: "2026-11-23T09:30:15.0000000".into(), time_zone: "UTC".into() });
        assert_eq!(back, Some(t));
        let pacific = DateTimeTimeZone { date_time: "2026-11-23T09:30:15".into(), time_zone: "Pacific Standard Time".into() };
        assert_eq!(UtcTime::from_graph(&pacific), None, "another zone is not read as UTC");
        assert_eq!(pacific.display(), "2026-11-23T09:30:15 (Pacific Standard Time)");
        for bad in ["2026-11-23T09:30:15", "2026-11-23", "tomorrow", "2026-13-01T00:00:00Z"] {
            assert!(UtcTime::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(UtcTime::parse("2026-11-23T09:00:00Z").unwrap().seconds_until(&t), 1815);
    }

    #[test]
    fn durations_and_addresses() {
        assert_eq!(iso_minutes(30), "PT30M");
        assert_eq!(iso_minutes(60), "PT1H");
        assert_eq!(iso_minutes(90), "PT1H30M");
        for ok in ["ann@contoso.com", "o'brien@fabrikam.co.uk", "a+b@x.io"] {
            assert!(is_address(ok), "{ok}");
        }
        for bad in [
            "ann",
            "ann@",
            "@contoso.com",
            "ann@contoso",
            "a b@c.com",
            "a@b@c.com",
            "Ann <ann@contoso.com>",
            "a@.com",
            "a@c..com",
            "a,b@c.com",
        ] {
            assert!(!is_address(bad), "{bad}");
        }
    }

    #[test]
    fn meeting_requests_are_told_apart() {
        let m = |v: Value| serde_json::from_value::<EventMessage>(v).unwrap().is_request();
        assert!(m(json!({"id": "1", "@odata.type": "#microsoft.graph.eventMessageRequest"})));
        assert!(m(json!({"id": "1", "meetingMessageType": "meetingRequest"})));
        assert!(!m(json!({"id": "1", "@odata.type": "#microsoft.graph.eventMessage", "meetingMessageType": "meetingCancelled"})));
        assert!(!m(json!({"id": "1", "@odata.type": "#microsoft.graph.eventMessageResponse", "meetingMessageType": "meetingAccepted"})));
        assert!(!m(json!({"id": "1", "@odata.type": "#microsoft.graph.message"})));
    }

    #[test]
    fn join_urls_are_https_only() {
        let e = |u: &str| Event { online_meeting: Some(OnlineMeetingInfo { join_url: Some(u.into()) }), ..Event::default() }.join_url();
        assert_eq!(e("https://teams.microsoft.com/l/meetup-join/x").as_deref(), Some("https://teams.microsoft.com/l/meetup-join/x"));
        assert_eq!(e("http://teams.microsoft.com/l/meetup-join/x"), None);
        assert_eq!(e("javascript:alert(1)"), None);
        assert_eq!(e("https://x.test/a b?q=\"<p>\"&r=1").as_deref(), Some("https://x.test/a%20b?q=%22%3Cp%3E%22&r=1"));
    }
}
