//! Classifier example bodies (`POST /analytics/classification`): TOML `[[example]]` tables
//! of `service` and `type`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use weft_topology::analytics::learned::Examples;
use weft_topology::topology::ServiceType;

#[derive(Serialize)]
struct Example<'a> {
    service: &'a str,
    #[serde(rename = "type")]
    service_type: ServiceType,
}

#[derive(Serialize)]
struct File<'a> {
    example: Vec<Example<'a>>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(examples) = Examples::parse(text, "body") else {
        return;
    };
    assert!(
        examples
            .examples
            .iter()
            .all(|e| !e.service.trim().is_empty())
    );
    // Written back as TOML, the examples read the same.
    let file = File {
        example: examples
            .examples
            .iter()
            .map(|e| Example {
                service: &e.service,
                service_type: e.service_type,
            })
            .collect(),
    };
    let toml = toml::to_string(&file).expect("examples serialise");
    let back = Examples::parse(&toml, "again").unwrap_or_else(|e| panic!("{toml}: {e}"));
    assert_eq!(back, examples);
});
