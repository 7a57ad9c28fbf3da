//! The TDL files under tests/good (they parse, format round-trips) and tests/bad (each
//! `X.tdl` fails with exactly the errors of its sibling `X.err`, one per line, in order).

use std::fs;
use std::path::{Path, PathBuf};

fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(dir);
    let mut v: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    v
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn bad_files_give_their_errors() {
    let bad = files("bad", "tdl");
    assert!(bad.len() >= 12, "{} bad files", bad.len());
    let bless = std::env::var_os("TDL_BLESS").is_some();
    let mut failures = Vec::new();
    for path in &bad {
        let text = fs::read_to_string(path).unwrap();
        let got = match weft_tdl::parse(&name(path), &text) {
            Ok(n) => format!("parsed: {n:?}"),
            Err(e) => e.to_string(),
        };
        let err_path = path.with_extension("err");
        if bless {
            fs::write(&err_path, format!("{got}\n")).unwrap();
            continue;
        }
        let want =
            fs::read_to_string(&err_path).unwrap_or_else(|e| panic!("{}: {e}", err_path.display()));
        if got.trim_end() != want.trim_end() {
            failures.push(format!(
                "{}:\n  want: {}\n  got:  {}",
                name(path),
                want.trim_end(),
                got
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn good_files_parse_and_format_round_trips() {
    let good = files("good", "tdl");
    assert!(good.len() >= 2);
    for path in &good {
        let text = fs::read_to_string(path).unwrap();
        let net = weft_tdl::parse(&name(path), &text).unwrap_or_else(|e| panic!("{e}"));
        let out = weft_tdl::format(&net);
        let again = weft_tdl::parse("formatted.tdl", &out).unwrap_or_else(|e| panic!("{e}\n{out}"));
        assert_eq!(again, net, "{}:\n{out}", name(path));
        assert_eq!(weft_tdl::format(&again), out, "format is stable");
        let json = serde_json::to_string(&net).unwrap();
        assert_eq!(
            serde_json::from_str::<weft_tdl::Network>(&json).unwrap(),
            net
        );
    }
}
