//! Requests that may share one render: while a `/metrics` page is being
//! rendered, the requests for the same page (same format) that arrive
//! wait for it instead of queueing for a render slot of their own. A
//! flood of scrapes then costs one render per render time, not one per
//! request, and a scraper's wait no longer grows with the flood's queue.
//! Only requests already authorized share (the key is the page, not the
//! credentials), and each answer reflects a reading taken at most one
//! render time before the request came: as fresh as Prometheus needs.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::watch;

use super::Response;

type Slot = Option<Arc<Response>>;

/// The renders in flight, by key.
#[derive(Default)]
pub struct Flights {
    map: Mutex<HashMap<String, watch::Receiver<Slot>>>,
}

/// What a request does for its key.
pub enum Role<'a> {
    /// Render, then [`Leader::publish`].
    Lead(Leader<'a>),
    /// Wait for the leader's answer ([`follow`]).
    Follow(watch::Receiver<Slot>),
}

impl Flights {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Receiver<Slot>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the render in flight for `key`, or leads a new one.
    pub fn join(&self, key: String) -> Role<'_> {
        let mut map = self.map();
        if let Some(rx) = map.get(&key) {
            return Role::Follow(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        map.insert(key.clone(), rx.clone());
        Role::Lead(Leader { flights: self, key, tx, own: rx })
    }
}

/// The request that renders for the others.
pub struct Leader<'a> {
    flights: &'a Flights,
    key: String,
    tx: watch::Sender<Slot>,
    own: watch::Receiver<Slot>,
}

impl Leader<'_> {
    /// Hands the answer to those waiting (a 503 or 500 too: they would
    /// have met the same).
    pub fn publish(self, r: &Response) {
        self.retire();
        let _ = self.tx.send(Some(Arc::new(r.clone())));
    }

    /// Later requests start a render of their own.
    fn retire(&self) {
        let mut map = self.flights.map();
        if map.get(&self.key).is_some_and(|rx| rx.same_channel(&self.own)) {
            map.remove(&self.key);
        }
    }
}

impl Drop for Leader<'_> {
    /// A leader that goes away without publishing (its client left, the
    /// server stops) must not leave its key taken.
    fn drop(&mut self) {
        self.retire();
    }
}

/// The leader's answer; `None` when it went away without one.
pub async fn follow(mut rx: watch::Receiver<Slot>) -> Option<Response> {
    let got = rx.wait_for(Option::is_some).await.ok()?;
    got.as_ref().map(|r| (**r).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_leads_the_others_follow_then_it_starts_over() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let f = Flights::default();
            let Role::Lead(lead) = f.join("a".into()) else { panic!("the first leads") };
            let Role::Follow(rx) = f.join("a".into()) else { panic!("the second follows") };
            assert!(matches!(f.join("b".into()), Role::Lead(_)), "keys are apart");
            lead.publish(&Response::text(200, "shared\n"));
            assert_eq!(follow(rx).await.map(|r| r.body), Some(b"shared\n".to_vec()));
            let Role::Lead(again) = f.join("a".into()) else { panic!("a new render after the answer") };
            let Role::Follow(rx) = f.join("a".into()) else { panic!() };
            drop(again);
            assert_eq!(follow(rx).await, None, "a leader gone without an answer releases its followers");
            assert!(matches!(f.join("a".into()), Role::Lead(_)));
        });
    }
}
