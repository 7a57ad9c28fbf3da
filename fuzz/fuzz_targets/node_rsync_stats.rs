//! rsync `--stats` output as the agent reads it after copying a mirror's volume:
//! `rsync_transferred_bytes`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_noderun::replies;

fuzz_target!(|data: &[u8]| {
    let Ok(n) = replies::rsync_transferred_bytes(data) else {
        return;
    };
    // The number is on the line that says it.
    let text = String::from_utf8_lossy(data);
    assert!(
        text.lines()
            .any(|l| l.contains("Total transferred file size: ")),
        "{n} from {text:?}"
    );
    // Written back as rsync would (with or without separators), it reads the same.
    for printed in [format!("{n}"), with_commas(n)] {
        let out = format!("Total transferred file size: {printed} bytes\n");
        assert_eq!(
            replies::rsync_transferred_bytes(out.as_bytes()),
            Ok(n),
            "{out}"
        );
    }
});

fn with_commas(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
