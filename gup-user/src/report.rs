//! The JSON documents gupwatch serves and prints.

#[cfg(test)]
mod fixture;

#[cfg(test)]
mod make_golden {
    use super::fixture;
    use crate::{collect::fixture::sample, export::api};

    #[test]
    #[ignore]
    fn write_golden() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/report/golden");
        let mut doc = api::snapshot_with_callers(&sample(), 10, api::MAX_JSON_CALLERS);
        doc["leaks"] = serde_json::to_value(Some(fixture::leak_report())).unwrap_or_default();
        let body = serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n";
        std::fs::write(format!("{dir}/snapshot_full.json"), body).unwrap();
        let mut doc = api::snapshot_json(&fixture::reduced(), 10);
        doc["leaks"] = serde_json::to_value(None::<crate::leaks::LeakReport>).unwrap_or_default();
        let body = serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n";
        std::fs::write(format!("{dir}/snapshot_reduced.json"), body).unwrap();
        let body = serde_json::to_string_pretty(&fixture::leak_report()).unwrap() + "\n";
        std::fs::write(format!("{dir}/leaks.json"), body).unwrap();
    }
}
