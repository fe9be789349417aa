//! What waits for the agent: pending inbox entries within a scope, and acknowledging them.

use std::collections::HashSet;

use super::claims::ClaimMap;
use super::{Error, Hub, Result, Scope};
use crate::store::InboxItem;

/// At most this many ids are acknowledged in one request.
pub(crate) const MAX_ACK_IDS: usize = 1000;

impl Hub {
    /// Pending entries in scope (in `chat` only, when given), oldest first, at most `limit`, skipping `skip`
    /// and, with `claims`, the entries another session than the one named claimed.
    pub async fn pending(
        &self,
        scope: &Scope,
        chat: Option<&str>,
        limit: usize,
        skip: &HashSet<i64>,
        claims: Option<(&ClaimMap, &str)>,
    ) -> Result<Vec<InboxItem>> {
        let mut out = Vec::new();
        let mut cursor = 0;
        loop {
            let batch = self.store.inbox_after(cursor, 512).await?;
            let Some(last) = batch.last() else { return Ok(out) };
            cursor = last.id;
            for item in batch {
                if scope.allows(&item.bot_app_id, &item.tenant_id)
                    && chat.is_none_or(|c| item.conversation_id == c)
                    && !skip.contains(&item.id)
                    && claims.is_none_or(|(map, session)| map.held_from(&item, session).is_none())
                {
                    out.push(item);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
    }

    /// Acknowledge inbox ids, all within `scope` or none; returns the ids and how many changed state.
    pub async fn ack_in_scope(&self, scope: &Scope, ids: &[i64]) -> Result<(Vec<i64>, u64)> {
        if ids.is_empty() {
            return Ok((Vec::new(), 0));
        }
        if ids.len() > MAX_ACK_IDS {
            return Err(Error::invalid(format!("at most {MAX_ACK_IDS} ids at a time")));
        }
        let items = self.store.inbox_by_ids(ids).await?;
        let ours: Vec<i64> = items.iter().filter(|i| scope.allows(&i.bot_app_id, &i.tenant_id)).map(|i| i.id).collect();
        if ours.len() != ids.len() {
            let unknown: Vec<i64> = ids.iter().filter(|id| !ours.contains(id)).copied().collect();
            return Err(Error::not_found(format!(
                "unknown inbox ids (or outside this session's scope): {unknown:?}; nothing was acknowledged"
            )));
        }
        let n = self.store.ack_inbox(&ours).await?;
        Ok((ours, n))
    }
}
