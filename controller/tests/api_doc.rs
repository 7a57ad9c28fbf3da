//! docs/api.md is the OpenAPI document written as Markdown: regenerated here and compared,
//! so the reference in the repository is the API the controller serves.
//! `WEFT_UPDATE_DOCS=1 cargo test -p weft-controller --test api_doc` rewrites it.

use std::path::PathBuf;

use weft_controller::api::openapi::{document, markdown};

#[test]
fn docs_api_md_is_the_openapi_document() {
    let doc = serde_json::to_value(document()).expect("document as JSON");
    let rendered = markdown::render(&doc);
    assert!(rendered.contains("### `GET /topology`"), "{rendered}");
    assert!(rendered.contains("### `POST /observations`"));
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/api.md");
    if std::env::var_os("WEFT_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &rendered).expect("write docs/api.md");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == rendered,
        "docs/api.md differs from the OpenAPI document: run \
         `WEFT_UPDATE_DOCS=1 cargo test -p weft-controller --test api_doc` and commit it"
    );
}
