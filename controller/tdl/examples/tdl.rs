//! `cargo run -p weft-tdl --example tdl -- validate|fmt|json|plan FILE [HOST...]`: the library
//! on a file, until the CLI has `weft tdl`.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(cmd), Some(file)) = (args.first(), args.get(1)) else {
        eprintln!("usage: tdl validate|fmt|json|plan FILE [HOST...]");
        std::process::exit(2);
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{file}: {e}");
            std::process::exit(1);
        }
    };
    let net = match weft_tdl::parse(file, &text) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    match cmd.as_str() {
        "validate" => println!("{file}: ok, {} node(s)", net.nodes.len()),
        "fmt" => print!("{}", weft_tdl::format(&net)),
        "json" => println!("{}", serde_json::to_string_pretty(&net).unwrap_or_default()),
        "plan" => match weft_tdl::plan(&net, &args[2..]) {
            Ok(p) => print!("{p}"),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        },
        other => {
            eprintln!("unknown command {other:?}");
            std::process::exit(2);
        }
    }
}
