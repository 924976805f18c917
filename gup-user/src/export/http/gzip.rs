//! `Content-Encoding: gzip` for the pages that ask for it (`/metrics`):
//! a scrape of a busy host is tens of kilobytes of repetitive text that
//! gzip shrinks about tenfold, and Prometheus always offers gzip.

use std::io::Write;

use flate2::{write::GzEncoder, Compression};

use super::Response;

/// Whether an `Accept-Encoding` value allows gzip (RFC 9110 §12.5.3):
/// `gzip` or `x-gzip` with a non-zero weight, or `*` with a non-zero
/// weight when gzip is not named. Absent: identity only.
pub fn accepts_gzip(accept_encoding: Option<&str>) -> bool {
    let Some(value) = accept_encoding else { return false };
    let mut star = false;
    for item in value.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")))
            .find_map(|v| v.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match coding.as_str() {
            "gzip" | "x-gzip" => return q > 0.0,
            "*" => star = q > 0.0,
            _ => {}
        }
    }
    star
}

/// The response as the client asked for it: gzip-encoded when `gzip` and
/// the body is a success's, unchanged otherwise; `Vary: Accept-Encoding`
/// either way, so a cache never hands one client's encoding to another.
pub fn negotiate(mut resp: Response, gzip: bool) -> Response {
    resp.headers.push(("Vary", "Accept-Encoding".into()));
    if !gzip || resp.status != 200 {
        return resp;
    }
    // The fastest level: the page is rendered per scrape, on the
    // server's threads, and level 1 already gets most of the gain.
    let mut enc = GzEncoder::new(Vec::with_capacity(resp.body.len() / 4), Compression::fast());
    // Writing into a Vec cannot fail; if it did, the plain body is sent.
    if let Ok(body) = enc.write_all(&resp.body).and_then(|()| enc.finish()) {
        resp.body = body;
        resp.headers.push(("Content-Encoding", "gzip".into()));
    }
    resp
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn accept_encoding_values() {
        for (v, want) in [
            (None, false),
            (Some(""), false),
            (Some("identity"), false),
            (Some("gzip"), true),
            (Some("GZip"), true),
            (Some("x-gzip"), true),
            (Some("deflate, gzip;q=0.5"), true),
            (Some("gzip;q=0"), false),
            (Some("gzip; q=0.0, *"), false),
            (Some("*"), true),
            (Some("br, *;q=0"), false),
            (Some("snappy, deflate"), false),
            // Prometheus's own header.
            (Some("gzip"), true),
        ] {
            assert_eq!(accepts_gzip(v), want, "{v:?}");
        }
    }

    #[test]
    fn gzip_body_decodes_to_the_plain_one() {
        let plain = Response::text(200, "gupwatch_x 1\n".repeat(1000));
        let z = negotiate(plain.clone(), true);
        assert!(z.headers.contains(&("Content-Encoding", "gzip".into())));
        assert!(z.headers.contains(&("Vary", "Accept-Encoding".into())));
        assert!(z.body.len() < plain.body.len() / 10, "{} bytes", z.body.len());
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&z.body[..]).read_to_end(&mut back).unwrap();
        assert_eq!(back, plain.body);
        assert_eq!(z.content_type, plain.content_type);
        // Not asked, or not a success: the body as it was, Vary still set.
        let p = negotiate(plain.clone(), false);
        assert_eq!((p.body, p.headers), (plain.body, vec![("Vary", "Accept-Encoding".to_string())]));
        let e = negotiate(Response::text(503, "busy\n"), true);
        assert_eq!(e.body, b"busy\n");
    }
}
