//! Basic authentication: bcrypt hashes, checked in constant time, with a
//! cache of verified credentials (see the module above for why).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use base64::Engine as _;

/// Splits an `Authorization: Basic <base64(user:password)>` header into
/// the user (UTF-8) and the password bytes; `None` for anything else.
pub fn parse_basic_authorization(header: &str) -> Option<(String, Vec<u8>)> {
    let header = header.trim();
    let (scheme, token) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(token.trim()).ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

/// Longest password bcrypt can check (it reads at most 72 bytes; longer
/// ones are refused, as Go's bcrypt does, rather than truncated).
const MAX_PASSWORD: usize = 72;

/// Users, their bcrypt hashes, and the cache of verified credentials.
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    /// Key of the cache's HMAC tags (random, per process).
    key: ring::hmac::Key,
    /// user → tag of the last credentials verified for that user.
    cache: Mutex<HashMap<String, ring::hmac::Tag>>,
}

impl BasicAuth {
    /// Users and their bcrypt hashes (checked by [`WebConfig::parse`]).
    pub fn new(users: BTreeMap<String, String>) -> BasicAuth {
        let rng = ring::rand::SystemRandom::new();
        let key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng).expect("the system random generator works");
        BasicAuth { users, key, cache: Mutex::new(HashMap::new()) }
    }

    fn tag(&self, user: &str, password: &[u8]) -> ring::hmac::Tag {
        let mut ctx = ring::hmac::Context::with_key(&self.key);
        ctx.update(user.as_bytes());
        ctx.update(&[0]);
        ctx.update(password);
        ctx.sign()
    }

    /// [`BasicAuth::check`] without bcrypt: `Some(false)` without usable
    /// credentials, `Some(true)` for credentials verified before, `None`
    /// when bcrypt must tell.
    pub fn check_cached(&self, authorization: Option<&str>) -> Option<bool> {
        let Some((user, password)) = authorization.and_then(parse_basic_authorization) else { return Some(false) };
        if self.users.is_empty() {
            return Some(false);
        }
        if self.users.contains_key(&user) {
            let tag = self.tag(&user, &password);
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.get(&user).is_some_and(|t| ct_eq(t.as_ref(), tag.as_ref())) {
                return Some(true);
            }
        }
        None
    }

    /// Whether this `Authorization` header carries valid credentials.
    pub fn check(&self, authorization: Option<&str>) -> bool {
        let Some((user, password)) = authorization.and_then(parse_basic_authorization) else { return false };
        let tag = self.tag(&user, &password);
        let hash = self.users.get(&user);
        if hash.is_some() {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.get(&user).is_some_and(|t| ct_eq(t.as_ref(), tag.as_ref())) {
                return true;
            }
        }
        // Unknown users are checked against a real hash too, so the time
        // taken does not tell whether the user exists.
        let Some(target) = hash.or_else(|| self.users.values().next()) else { return false };
        let ok = password.len() <= MAX_PASSWORD && bcrypt::verify(&password, target).unwrap_or(false);
        let ok = ok && hash.is_some();
        if ok {
            self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(user, tag);
        }
        ok
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub(super) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
}
